"""When watchers hear of a write: after the write's request is answered, and their
responses built by the watch stream when it sends them, not inside the apply
(keel_store.server.node, keel_store.server.watch_stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from keel_store.mvcc.commands import Kind
from keel_store.mvcc.keyspace import BUSY_EVERY, Event
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import Watcher, WatchHub
from keel_store.pb import rpcpb
from keel_store.server.node import StoreNode
from keel_store.server.watch_stream import WatchStream

from .conftest import LoopTurns, node_configs, until


def test_a_write_is_answered_before_its_watchers_hear_of_it(tmp_path: Path) -> None:
    """One member, real fsyncs. With 50 watchers of the written keys, building their
    responses before the answer put ~0.3 ms in front of every put; the watchers are
    still told inside the apply of the entry, before the proposal returns."""

    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1)[0])
        await node.start()
        try:
            await until(lambda: node.is_leader)
            log: list[str] = []

            def sink(_w: Watcher, events: list[Event]) -> bool:
                log.extend(f"event {e.kv.key.decode()} at {e.kv.mod_revision}" for e in events)
                return True

            node.hub.watch(Watcher(1, b"k/", b"k0", sink), 0)
            for key in (b"k/a", b"k/b"):
                resp = await node.propose(
                    Kind.PUT,
                    rpcpb.PutRequest(key=key, value=b"v"),
                    answer=lambda r: log.append(f"answer at {r.header.revision}"),
                )
                assert log[-1] == f"event {key.decode()} at {resp.header.revision}"
            first = node.sm.kv.revision - 1
            assert log == [
                f"answer at {first}",
                f"event k/a at {first}",
                f"answer at {first + 1}",
                f"event k/b at {first + 1}",
            ]
        finally:
            await node.stop()

    asyncio.run(scenario())


def _node() -> Any:
    """What a watch stream uses of a member, around a real state machine and hub."""
    sm = StateMachine()
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    return SimpleNamespace(
        cluster=SimpleNamespace(cluster_id=1),
        member_id=2,
        term=3,
        sm=sm,
        tokens=SimpleNamespace(info=lambda token: None),
        hub=hub,
        is_leader=True,
    )


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()


async def _open(node: Any, create: rpcpb.WatchCreateRequest) -> AsyncIterator[Any]:
    async def requests() -> AsyncIterator[Any]:
        yield rpcpb.WatchRequest(create_request=create)
        await asyncio.Event().wait()  # the client keeps the stream open

    stream = WatchStream(node, _Context(), progress_interval=600, fragment_bytes=1 << 20)
    answers = stream.run(requests())
    assert (await answers.__anext__()).created
    return answers


def test_a_response_built_later_carries_the_revision_of_its_events() -> None:
    """etcd's header revision of a watch response is the store's when the events were
    delivered; here the response is built when sent, after the store moved on."""
    node = _node()

    async def scenario() -> list[tuple[int, list[int]]]:
        answers = await _open(node, rpcpb.WatchCreateRequest(key=b"k/", range_end=b"k0"))
        for i in range(3):
            node.sm.put(rpcpb.PutRequest(key=b"k/%d" % i, value=b"v"))
        node.sm.put(rpcpb.PutRequest(key=b"other", value=b"v"))  # not watched
        got = []
        for _ in range(3):
            resp = await asyncio.wait_for(answers.__anext__(), 5)
            got.append((resp.header.revision, [e.kv.mod_revision for e in resp.events]))
        await answers.aclose()
        return got

    assert node.sm.kv.revision == 1
    assert asyncio.run(scenario()) == [(2, [2]), (3, [3]), (4, [4])]
    assert node.sm.kv.revision == 5


def test_a_long_revision_is_copied_into_its_response_with_the_loop_turning() -> None:
    """One revision of 3 x BUSY_EVERY + 1 deletes: the stream copies the events into the
    response a slice at a time and lets the loop turn in between (400k events in one
    piece held the loop 0.29 s); the response has every event, in order. A short
    revision is built without a turn."""
    keys = 3 * BUSY_EVERY + 1
    node = _node()
    for start in range(0, keys, 100):
        ops = [
            rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%06d" % i, value=b"v"))
            for i in range(start, min(keys, start + 100))
        ]
        node.sm.txn(rpcpb.TxnRequest(success=ops))

    async def scenario() -> tuple[int, int, list[bytes]]:
        answers = await _open(node, rpcpb.WatchCreateRequest(key=b"k/", range_end=b"k0"))
        node.sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))
        node.sm.put(rpcpb.PutRequest(key=b"k/short", value=b"v"))
        async with LoopTurns() as turns:
            before = turns.count
            long = await answers.__anext__()
            during_long = turns.count - before
            before = turns.count
            short = await answers.__anext__()
            during_short = turns.count - before
        await answers.aclose()
        assert [e.kv.key for e in short.events] == [b"k/short"]
        return during_long, during_short, [e.kv.key for e in long.events]

    during_long, during_short, deleted = asyncio.run(scenario())
    assert deleted == [b"k/%06d" % i for i in range(keys)]
    assert during_long >= 3
    assert during_short == 0
