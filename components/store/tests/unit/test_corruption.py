"""The corruption checks: a member whose key space silently differs is found."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server import corruption
from keel_store.server.node import HASH_INLINE_KEYS, StoreNode

from .conftest import LoopTurns, node_configs, start_members, until


def damage(node: StoreNode, key: bytes) -> None:
    """Change a stored value in place, as a bad disk would: no revision, no log entry."""
    for name, history in node.sm.kv.histories():
        if name == key:
            history.kvs[-1].value = b"garbage"
            return
    raise AssertionError(f"no key {key!r}")


async def _cluster(tmp_path: Path) -> tuple[list[StoreNode], StoreNode]:
    nodes = [StoreNode(c) for c in node_configs(tmp_path, 3)]
    leader = await start_members(nodes)
    for i in range(20):
        await leader.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))
    await until(lambda: all(n.sm.kv.revision == leader.sm.kv.revision for n in nodes))
    return nodes, leader


def _run(tmp_path: Path, body: Any) -> None:
    async def run() -> None:
        nodes, leader = await _cluster(tmp_path)
        try:
            await body(nodes, leader)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(run())


def test_equal_members_pass_both_checks(tmp_path: Path) -> None:
    async def body(nodes: list[StoreNode], leader: StoreNode) -> None:
        assert await corruption.check(leader) is None
        for n in nodes:
            await corruption.initial_check(n)
        assert not leader.sm.alarms

    _run(tmp_path, body)


def test_the_leader_raises_corrupt_for_the_damaged_member(tmp_path: Path) -> None:
    async def body(nodes: list[StoreNode], leader: StoreNode) -> None:
        follower = next(n for n in nodes if n is not leader)
        damage(follower, b"k3")
        assert await corruption.check(leader) == follower.member_id
        await until(lambda: all(n.sm.corrupt for n in nodes))
        assert (follower.member_id, rpcpb.CORRUPT) in leader.sm.alarms
        with pytest.raises(type(errors.CORRUPT)) as refused:
            await leader.propose(Kind.PUT, rpcpb.PutRequest(key=b"new", value=b"v"))
        assert refused.value is errors.CORRUPT
        assert str(refused.value.message) == "etcdserver: corrupt cluster"
        # Disarmed (etcdctl alarm disarm): writes go through again.
        await leader.propose(
            Kind.ALARM,
            rpcpb.AlarmRequest(
                action=rpcpb.AlarmRequest.DEACTIVATE,
                memberID=follower.member_id,
                alarm=rpcpb.CORRUPT,
            ),
        )
        await leader.propose(Kind.PUT, rpcpb.PutRequest(key=b"new", value=b"v"))

    _run(tmp_path, body)


def test_a_damaged_leader_is_found_by_its_own_check(tmp_path: Path) -> None:
    async def body(nodes: list[StoreNode], leader: StoreNode) -> None:
        damage(leader, b"k5")
        # Every follower now differs from the leader: the first one is named.
        named = await corruption.check(leader)
        assert named in {n.member_id for n in nodes if n is not leader}
        await until(lambda: all(n.sm.corrupt for n in nodes))

    _run(tmp_path, body)


def test_the_initial_check_refuses_a_member_that_differs(tmp_path: Path, caplog: Any) -> None:
    async def body(nodes: list[StoreNode], leader: StoreNode) -> None:
        follower = next(n for n in nodes if n is not leader)
        damage(follower, b"k0")
        with (
            caplog.at_level(logging.WARNING, logger="keel_store"),
            pytest.raises(corruption.CorruptionError, match="found data inconsistency"),
        ):
            await corruption.initial_check(follower)
        assert "found different hash values from remote peer" in caplog.text

    _run(tmp_path, body)


def test_peers_behind_or_compacted_are_skipped(tmp_path: Path, caplog: Any) -> None:
    async def body(nodes: list[StoreNode], leader: StoreNode) -> None:
        follower = next(n for n in nodes if n is not leader)
        # Asked about a revision they do not have yet, peers answer FUTURE_REV.
        peer = next(n for n in nodes if n is not follower)
        with pytest.raises(type(errors.FUTURE_REV)) as ahead:
            await follower.peer_hash_kv(peer.member_id, 10_000)
        assert ahead.value is errors.FUTURE_REV
        await leader.propose(Kind.COMPACT, rpcpb.CompactionRequest(revision=15))
        await until(lambda: all(n.sm.kv.compact_revision == 15 for n in nodes))
        with pytest.raises(type(errors.COMPACTED)):
            await follower.peer_hash_kv(peer.member_id, 10)
        value, revision, compact = await follower.peer_hash_kv(peer.member_id, 18)
        assert (value, compact) == (follower.hash_kv(18)[0], 15)
        assert revision == leader.sm.kv.revision

    _run(tmp_path, body)


def test_a_large_key_space_is_hashed_in_a_child_while_the_loop_runs(tmp_path: Path) -> None:
    """Over HASH_INLINE_KEYS keys the daemon hashes in a forked child: the same value
    as on the loop, and the loop keeps turning meanwhile."""

    async def run() -> None:
        (config,) = node_configs(tmp_path, 1)
        assert config.background_snapshots  # as the daemon runs
        node = StoreNode(config)
        await start_members([node])
        try:
            for i in range(HASH_INLINE_KEYS + 5000):  # straight into the state machine
                node.sm.put(rpcpb.PutRequest(key=b"h/%08d" % i, value=b"v" * 40))
            async with LoopTurns() as turns:
                value, revision, compact = await node.hash_kv_async()
            assert (value, revision, compact) == node.hash_kv()
            assert turns.count > 10  # on the loop it would have been one turn
            with pytest.raises(type(errors.FUTURE_REV)):
                await node.hash_kv_async(revision + 1)
        finally:
            await node.stop()

    asyncio.run(run())
