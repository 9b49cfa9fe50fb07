"""When a member handles its inbox and Raft's Readys: at once in the caller's stack for
a lone request and for what one read from a peer brought, on the loop task's next turn
otherwise; and it stops taking Readys after one failed half-way
(keel_store.server.node)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from keel_store import daemon
from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.config import NodeConfig
from keel_store.server.node import StoreNode
from keel_store.wal import WALError

from .conftest import node_configs, solo_daemon_flags, start_members, until


def _put(node: StoreNode, key: bytes) -> Coroutine[Any, Any, Any]:
    return node.propose(Kind.PUT, rpcpb.PutRequest(key=key, value=b"v"))


async def _warm_member(tmp_path: Path) -> StoreNode:
    """One started member that has elected itself and applied a first entry."""
    node = StoreNode(node_configs(tmp_path, 1)[0])
    await node.start()
    try:
        await until(lambda: node.is_leader)
        await _put(node, b"warm")  # the new leader's first entry is applied
    except BaseException:
        await node.stop()
        raise
    return node


def test_a_lone_proposal_is_answered_without_a_turn_of_the_loop(tmp_path: Path) -> None:
    """One member, real fsyncs. The only request in progress is persisted, applied and
    answered inside its own first step (the coroutine finishes without suspending);
    with other requests in progress it waits for the loop task, like them."""

    async def scenario() -> None:
        node = await _warm_member(tmp_path)
        try:
            node.alone = lambda: True
            coro = _put(node, b"lone")
            with pytest.raises(StopIteration) as done:
                coro.send(None)
            assert done.value.value.header.revision == node.sm.kv.revision
            assert node.sm.kv.get(b"lone") is not None

            node.alone = lambda: False
            coro = _put(node, b"crowd")
            coro.send(None)  # suspends: the loop task takes it on its next turn
            assert node.sm.kv.get(b"crowd") is None
            coro.close()
            await until(lambda: node.sm.kv.get(b"crowd") is not None)
        finally:
            await node.stop()
        # A stopped member (its WAL closed) handles nothing at once: the request waits,
        # nothing fails.
        node.alone = lambda: True
        coro = _put(node, b"late")
        coro.send(None)
        coro.close()
        assert node.failure is None

    asyncio.run(scenario())


def test_requests_in_progress_together_share_one_sync(tmp_path: Path) -> None:
    """40 puts proposed in one turn of the loop, none of them alone: one Ready, one
    WAL sync for all (handling each at once would sync 40 times)."""

    async def scenario() -> None:
        node = await _warm_member(tmp_path)
        try:
            syncs: list[float] = []
            real_sync = node.disk.sync

            def sync() -> None:
                syncs.append(time.monotonic())
                real_sync()

            node.disk.sync = sync  # type: ignore[method-assign]
            await asyncio.gather(*(_put(node, b"k%d" % i) for i in range(40)))
            assert len(syncs) == 1, syncs
            assert all(node.sm.kv.get(b"k%d" % i) is not None for i in range(40))
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_an_answer_leaves_inside_the_apply_of_its_entry(tmp_path: Path) -> None:
    """Ten puts in one Ready, each with an ``answer``: each is answered while its own
    entry is the last one applied (before the rest of the Ready), with the response
    its proposal then returns, before any proposer resumed. An answer that raises is
    logged; the member and the other proposals go on."""

    async def scenario() -> None:
        node = await _warm_member(tmp_path)
        try:
            answered: list[tuple[int, int, int]] = []  # revision, applied index, resumed
            resumed = 0

            def answer(resp: Any) -> None:
                answered.append((resp.header.revision, node.sm.applied_index, resumed))
                if resp.header.revision % 3 == 0:
                    raise RuntimeError("a broken connection")

            async def put(i: int) -> Any:
                nonlocal resumed
                req = rpcpb.PutRequest(key=b"k%d" % i, value=b"v")
                resp = await node.propose(Kind.PUT, req, answer)
                resumed += 1
                return resp

            first = node.sm.applied_index + 1
            responses = await asyncio.gather(*(put(i) for i in range(10)))
            assert node.failure is None
            revisions = [r.header.revision for r in responses]
            assert [rev for rev, _, _ in answered] == sorted(revisions)
            # applied index == the entry's own: revision r is entry first + (r - rev0)
            rev0 = min(revisions)
            assert [a for _, a, _ in answered] == [first + r - rev0 for r in sorted(revisions)]
            assert {n for _, _, n in answered} == {0}
            assert not node._answers
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_member_busy_applying_keeps_its_peers_informed(tmp_path: Path) -> None:
    """Three members in one process. Inside a long apply (``kv.busy``), once per
    heartbeat interval: the leader sends each follower a HEARTBEAT, a follower sends
    its leader a HEARTBEAT_RESPONSE (``alive_notices``); called again within the
    interval, neither sends anything."""

    async def scenario() -> None:
        nodes = [StoreNode(c) for c in node_configs(tmp_path, 3, "--unsafe-no-fsync")]
        try:
            leader = await start_members(nodes)
            await _put(leader, b"warm")
            follower = next(n for n in nodes if n is not leader)
            for node in nodes:
                sent: list[Any] = []
                node.outbox.send = sent.append  # type: ignore[method-assign]
                node._next_keepalive = 0.0
                node.sm.kv.busy()  # type: ignore[misc]
                node.sm.kv.busy()  # type: ignore[misc]
                got = sorted((m.type.name, m.to, m.term) for m in sent)
                if node is leader:
                    others = sorted(n.member_id for n in nodes if n is not leader)
                    assert got == [("HEARTBEAT", i, leader.raft.term) for i in others]
                else:
                    assert got == [("HEARTBEAT_RESPONSE", leader.member_id, node.raft.term)]
            assert follower.raft.leader == leader.member_id
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(scenario())


def _record_reads(
    node: StoreNode, reading: dict[int, bool], appended: list[tuple[int, bool]]
) -> None:
    """Mark when ``node`` is inside the call that handles one read from a peer, and
    record each entry it appends to its WAL with whether that happened inside it."""
    frames_done, disk_append = node._on_frames_done, node.disk.append

    def on_frames_done() -> None:
        reading[id(node)] = True
        try:
            frames_done()
        finally:
            reading[id(node)] = False

    def append(entries: Any, hard_state: Any) -> None:
        appended.extend((e.index, reading[id(node)]) for e in entries)
        disk_append(entries, hard_state)

    node.transport.on_frames_done = on_frames_done
    node.disk.append = append  # type: ignore[method-assign, assignment]


def test_what_a_peer_sends_is_handled_within_the_read_that_brought_it(
    tmp_path: Path,
) -> None:
    """Three members in one process. A follower persists an APPEND (and answers it)
    inside the call that read it from the socket, and the leader applies the entry
    inside the call that read the first acknowledgement, not on a later turn."""

    async def scenario() -> None:
        nodes = [StoreNode(c) for c in node_configs(tmp_path, 3, "--unsafe-no-fsync")]
        try:
            leader = await start_members(nodes)
            await _put(leader, b"warm")
            reading = {id(n): False for n in nodes}
            appended: dict[int, list[tuple[int, bool]]] = {id(n): [] for n in nodes}
            applied: list[tuple[int, bool]] = []

            for node in nodes:
                _record_reads(node, reading, appended[id(node)])
            real_apply = leader._apply

            def apply(index: int, data: bytes) -> None:
                applied.append((index, reading[id(leader)]))
                real_apply(index, data)

            leader._apply = apply  # type: ignore[method-assign]
            await _put(leader, b"k")
            index = leader.sm.applied_index
            assert (index, True) in applied, applied
            for follower in (n for n in nodes if n is not leader):
                entries = appended[id(follower)]

                def persisted(entries: list[tuple[int, bool]] = entries) -> bool:
                    return any(i == index for i, _ in entries)

                await until(persisted)
                assert (index, True) in entries, entries
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(scenario())


def test_a_turn_that_fails_half_way_stops_the_member(tmp_path: Path) -> None:
    """The WAL sync fails inside a lone request's turn: the member records the
    failure, tells its owner once, takes no further Ready (neither at once nor on
    the loop task, which ends), and its waiting requests fail when it stops."""

    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1)[0])
        told: list[Exception] = []
        node.on_failure = told.append
        await node.start()
        stopped = False
        try:
            await until(lambda: node.is_leader)
            await _put(node, b"warm")

            def broken_sync() -> None:
                raise WALError("sync failed: injected")

            node.disk.sync = broken_sync  # type: ignore[method-assign]
            readies = 0
            real_ready = node.raft.ready

            def ready() -> Any:
                nonlocal readies
                readies += 1
                return real_ready()

            node.raft.ready = ready  # type: ignore[method-assign]
            node.alone = lambda: True
            first = asyncio.ensure_future(_put(node, b"a"))
            await until(lambda: node.failure is not None)
            assert isinstance(node.failure, WALError)
            assert told == [node.failure]
            assert readies == 1
            second = asyncio.ensure_future(_put(node, b"b"))
            await asyncio.sleep(0.05)
            assert readies == 1
            assert node._tasks[0].done()
            assert not first.done()
            assert not second.done()
            await node.stop()
            stopped = True
            for fut in (first, second):
                with pytest.raises(errors.EtcdError) as exc:
                    await fut
                assert exc.value is errors.STOPPED
            assert told == [node.failure]
        finally:
            if not stopped:
                await node.stop()

    asyncio.run(scenario())


def test_the_daemon_exits_with_status_1_once_its_member_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keel-store`` itself: a put whose WAL sync fails ends in an error for the
    client and the daemon returns 1 (systemd's Restart= then starts it again)."""
    created: list[StoreNode] = []

    class Recorded(StoreNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config)
            created.append(self)

    monkeypatch.setattr(daemon, "StoreNode", Recorded)
    client, flags = solo_daemon_flags(tmp_path)
    args = daemon.parse_args(flags, {})

    async def scenario() -> int:
        serving = asyncio.ensure_future(daemon.serve(args))
        await until(lambda: bool(created) and created[0].is_leader)
        async with grpc.aio.insecure_channel(client) as channel:
            kv = rpcgrpc.KVStub(channel)
            await kv.Put(rpcpb.PutRequest(key=b"ok", value=b"v"), timeout=10)

            def broken_sync() -> None:
                raise WALError("sync failed: injected")

            created[0].disk.sync = broken_sync  # type: ignore[method-assign]
            with pytest.raises(grpc.aio.AioRpcError):
                await kv.Put(rpcpb.PutRequest(key=b"lost", value=b"v"), timeout=10)
        return await asyncio.wait_for(serving, 10)

    assert asyncio.run(scenario()) == 1
    assert isinstance(created[0].failure, WALError)
