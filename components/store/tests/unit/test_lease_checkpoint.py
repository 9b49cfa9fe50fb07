"""Lease checkpoints (etcd's --experimental-enable-lease-checkpoint): a new leader gives
a long lease what was left at its last checkpoint, not its full TTL again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keel_store import daemon
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.lessor import Lessor
from keel_store.pb import rpcpb
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members, until


def test_a_long_lease_is_checkpointed_each_interval() -> None:
    lessor = Lessor(checkpoint_interval=10)
    lessor.grant(1, 100, now=0)
    lessor.grant(2, 5, now=0)  # ends before a checkpoint could matter: never scheduled
    assert lessor.due_checkpoints(9.9) == []
    assert lessor.due_checkpoints(10) == [(1, 90)]
    assert lessor.due_checkpoints(19.9) == []  # the next one is scheduled at apply
    lessor.checkpoint(1, 90, now=10.2, leader=True)
    assert lessor.due_checkpoints(20.2) == [(1, 80)]


def test_without_an_interval_nothing_is_scheduled() -> None:
    lessor = Lessor()
    lessor.grant(1, 10_000, now=0)
    assert lessor.due_checkpoints(1e9) == []


def test_a_new_leader_starts_from_the_checkpoint() -> None:
    follower = Lessor(checkpoint_interval=10)
    follower.grant(1, 100, now=0, leader=False)
    follower.grant(2, 100, now=0, leader=False)
    follower.checkpoint(1, 60, now=40, leader=False)
    follower.promote(now=50)
    assert follower.remaining(1, 50) == 60
    assert follower.remaining(2, 50) == 100  # never checkpointed: its full TTL
    assert follower.due_checkpoints(60) == [(1, 50), (2, 90)]


def test_a_renewal_clears_the_checkpoint() -> None:
    lessor = Lessor(checkpoint_interval=10)
    lessor.grant(1, 100, now=0)
    lessor.checkpoint(1, 90, now=10, leader=True)
    assert lessor.checkpointed(1)
    assert lessor.renew(1, now=15) == 100
    assert not lessor.checkpointed(1)
    lessor.promote(now=16)
    assert lessor.remaining(1, 16) == 100


def test_a_just_renewed_lease_is_checked_again_later() -> None:
    lessor = Lessor(checkpoint_interval=10)
    lessor.grant(1, 100, now=0)
    lessor.renew(1, now=9.5)
    assert lessor.due_checkpoints(10) == []  # 99.5 s left of 100: nothing to record
    assert lessor.due_checkpoints(20) == [(1, 90)]


def test_a_revoked_lease_is_not_checkpointed() -> None:
    lessor = Lessor(checkpoint_interval=10)
    lessor.grant(1, 100, now=0)
    lessor.forget(1)
    assert lessor.due_checkpoints(10) == []
    lessor.checkpoint(1, 50, now=11, leader=True)  # applied after the revoke: ignored
    assert not lessor.checkpointed(1)


async def _failover(tmp_path: Path, *flags: str) -> tuple[int, int, bool]:
    """Grant a 30 s lease, wait 3.5 s, stop the leader: (TTL by the new leader, TTL
    by the old one just before, whether followers held a checkpoint)."""
    nodes = [StoreNode(c) for c in node_configs(tmp_path, 3, *flags)]
    leader = await start_members(nodes)
    try:
        granted = await leader.propose(Kind.LEASE_GRANT, rpcpb.LeaseGrantRequest(ID=7, TTL=30))
        assert granted.ID == 7
        await asyncio.sleep(3.5)
        before = await leader.lease_remaining(7)
        others = [n for n in nodes if n is not leader]
        held = all(n.lessor.checkpointed(7) for n in others)
        await leader.stop()
        await until(lambda: any(n.is_leader for n in others))
        new = next(n for n in others if n.is_leader)
        return await new.lease_remaining(7), before, held
    finally:
        for n in nodes:
            if not n.stopped:
                await n.stop()


def test_leader_change_keeps_the_remaining_ttl(tmp_path: Path) -> None:
    after, before, held = asyncio.run(
        _failover(
            tmp_path,
            "--experimental-enable-lease-checkpoint",
            "--experimental-lease-checkpoint-interval=1s",
        )
    )
    assert held
    assert before <= 27
    # What was left at the last checkpoint (at most a second before the stop).
    assert before <= after <= before + 1


def test_without_checkpoints_a_new_leader_restarts_the_ttl(tmp_path: Path) -> None:
    after, before, held = asyncio.run(_failover(tmp_path))
    assert not held
    assert before <= 27
    assert after == 30  # etcd's default: the full TTL again


def test_keep_alive_clears_the_checkpoint_on_every_member(tmp_path: Path) -> None:
    async def run() -> None:
        flags = (
            "--experimental-enable-lease-checkpoint",
            "--experimental-lease-checkpoint-interval=0.5s",
        )
        nodes = [StoreNode(c) for c in node_configs(tmp_path, 3, *flags)]
        leader = await start_members(nodes)
        try:
            await leader.propose(Kind.LEASE_GRANT, rpcpb.LeaseGrantRequest(ID=9, TTL=30))
            await until(lambda: all(n.lessor.checkpointed(9) for n in nodes), timeout=10)
            follower = next(n for n in nodes if n is not leader)
            assert await follower.keep_alive(9) == 30  # forwarded to the leader
            await until(lambda: not any(n.lessor.checkpointed(9) for n in nodes), timeout=5)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(run())


@pytest.mark.parametrize("value", ["0s", "-1s", "soon"])
def test_a_bad_interval_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(daemon.FlagError, match="experimental-lease-checkpoint-interval"):
        daemon.node_config(
            daemon.parse_args([f"--experimental-lease-checkpoint-interval={value}"], {})
        )
