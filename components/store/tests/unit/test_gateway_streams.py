"""What a client can make a member do through a stream: the gateway's body decoder
(values found in linear time, errors at once, the loop given turns), a watch stream
that stops reading a client that does not read its answers and holds no more than
128 batches of events for it (its watchers are slow meanwhile), an Observe that does
the same, a waiting Lock/Campaign given up when its connection is reset, and
auto-compaction that never compacts to 0."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from keel_store import daemon
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import MAX_QUEUED_EVENTS, WatchHub
from keel_store.pb import rpcpb
from keel_store.server.concurrency import EventQueue
from keel_store.server.gateway import until_answered_or_gone
from keel_store.server.gateway_streams import BodyTooLarge, json_values
from keel_store.server.watch_stream import MAX_QUEUED, WatchStream

from .conftest import LoopTurns


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _values(parts: list[bytes], limit: int = 4 << 20) -> list[object]:
    return [v async for v in json_values(_chunks(parts), limit)]


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    parts, at = [], 0
    while at < len(data):
        n = rng.randint(1, 7)
        parts.append(data[at : at + n])
        at += n
    return parts


def test_values_are_found_however_the_body_is_cut() -> None:
    docs: list[object] = [
        {"create_request": {"key": "YQ==", "x": 'a\\"b{[', "u": "é☃"}},
        {"progress_request": {}},
        [1, {"a": [2, "]"]}],
        {},
    ]
    data = " \n".join(json.dumps(d, ensure_ascii=False) for d in docs).encode()
    rng = random.Random(7)
    for _ in range(100):
        assert asyncio.run(_values(_pieces(data, rng))) == docs
    assert asyncio.run(_values([b'12 true null "s" {}'])) == [12, True, None, "s", {}]


@pytest.mark.parametrize("body", [b"{]", b"xx", b'{"a" 1}', b"{} xx"])
def test_bad_json_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        asyncio.run(_values([body]))


def test_bad_json_is_an_error_before_the_body_ends() -> None:
    """A syntax error is not mistaken for a value still arriving."""

    async def scenario() -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        async def body() -> AsyncIterator[bytes]:
            while True:
                yield await queue.get()

        values = json_values(body(), 1 << 20).__aiter__()
        queue.put_nowait(b'{"a": 1} {]')
        assert await values.__anext__() == {"a": 1}
        with pytest.raises(ValueError, match=r"."):
            await asyncio.wait_for(values.__anext__(), 2)

    asyncio.run(scenario())


def test_a_value_over_the_limit_is_refused() -> None:
    with pytest.raises(BodyTooLarge):
        asyncio.run(_values([b'{"a": "' + b"x" * 2000], limit=1000))


def _one_value_in_bytes(size: int) -> float:
    parts = [b'{"k": "'] + [b"A"] * size + [b'"}']
    started = time.perf_counter()
    assert len(asyncio.run(_values(parts))) == 1
    return time.perf_counter() - started


def test_a_value_sent_a_byte_at_a_time_costs_its_length_not_its_square() -> None:
    """Each piece used to restart the decoder from the value's start: 20k one-byte
    pieces of a 1 MiB value held the loop 12 s. Best of three, compared with each
    other (never an absolute time): 4x the pieces, linear ~4x, quadratic ~16x."""
    small = min(_one_value_in_bytes(10_000) for _ in range(3))
    large = min(_one_value_in_bytes(40_000) for _ in range(3))
    assert large < 8 * small, f"10k: {small * 1e3:.1f} ms, 40k: {large * 1e3:.1f} ms"


def test_many_values_give_the_loop_turns() -> None:
    """200k tiny requests in one body used to hold the loop until all were decoded."""

    async def scenario() -> int:
        async with LoopTurns() as turns:
            assert len(await _values([b"{}" * 200_000])) == 200_000
        return turns.count

    assert asyncio.run(scenario()) > 1000


def _fake_node() -> Any:
    kv = SimpleNamespace(revision=5, compact_revision=-1, busy=lambda: None)
    return SimpleNamespace(
        cluster=SimpleNamespace(cluster_id=1),
        member_id=2,
        term=3,
        sm=SimpleNamespace(kv=kv, auth=SimpleNamespace(enabled=False)),
        tokens=SimpleNamespace(info=lambda token: None),
        hub=SimpleNamespace(watch=lambda w, rev: 0, cancel=lambda w: None),
        is_leader=True,
    )


def test_a_client_that_does_not_read_is_not_read_either() -> None:
    """Progress requests sent without reading the answers: the stream takes no more
    once MAX_QUEUED answers wait (it took every one before: ~24 MB for 200k)."""

    async def scenario() -> int:
        taken = 0

        async def requests() -> AsyncIterator[Any]:
            nonlocal taken
            for _ in range(10_000):
                taken += 1
                yield rpcpb.WatchRequest(progress_request=rpcpb.WatchProgressRequest())

        class Context:
            def invocation_metadata(self) -> tuple[()]:
                return ()

        stream = WatchStream(_fake_node(), Context(), progress_interval=600, fragment_bytes=1 << 20)
        answers = stream.run(requests())
        first = await answers.__anext__()  # the client reads one answer, then stops
        assert first.watch_id == -1
        for _ in range(200):
            await asyncio.sleep(0)
        before = taken
        read = 0
        async for _ in answers:  # now it reads: the requests flow again
            read += 1
            if read == 500:
                break
        await answers.aclose()
        assert taken > before
        return before

    assert asyncio.run(scenario()) <= MAX_QUEUED + 2


def _node_with_store() -> Any:
    """``_fake_node`` around a real state machine and watch hub."""
    node = _fake_node()
    node.sm = StateMachine()
    node.hub = WatchHub(node.sm.kv)
    node.sm.listeners.append(node.hub.notify)
    return node


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()


def test_a_watch_client_that_does_not_read_costs_128_batches_not_the_history() -> None:
    """10,000 revisions written while the client reads nothing: the stream holds
    MAX_QUEUED_EVENTS responses and the watcher is slow (before: all 10,000 queued);
    once the client reads, every event arrives once, in order, and it is live again."""
    node = _node_with_store()

    async def scenario() -> tuple[int, int, list[int]]:
        async def requests() -> AsyncIterator[Any]:
            create = rpcpb.WatchCreateRequest(key=b"k/", range_end=b"k0")
            yield rpcpb.WatchRequest(create_request=create)
            await asyncio.Event().wait()  # the client keeps the stream open

        stream = WatchStream(node, _Context(), progress_interval=600, fragment_bytes=1 << 20)
        answers = stream.run(requests())
        assert (await answers.__anext__()).created
        for i in range(10_000):
            node.sm.put(rpcpb.PutRequest(key=b"k/%d" % (i % 7), value=b"v"))
        queued, slow = stream._queue.qsize(), node.hub.slow
        revisions: list[int] = []
        while len(revisions) < 10_000:
            resp = await asyncio.wait_for(answers.__anext__(), 5)
            revisions += [e.kv.mod_revision for e in resp.events]
        node.sm.put(rpcpb.PutRequest(key=b"k/live", value=b"v"))
        resp = await asyncio.wait_for(answers.__anext__(), 5)
        revisions += [e.kv.mod_revision for e in resp.events]
        assert node.hub.slow == 0
        await answers.aclose()
        return queued, slow, revisions

    queued, slow, revisions = asyncio.run(scenario())
    assert queued <= MAX_QUEUED_EVENTS
    assert slow == 1
    assert revisions == list(range(2, 10_003))
    assert len(node.hub) == 0, "the watcher is gone with its stream"


def test_an_observe_that_is_not_read_holds_128_batches() -> None:
    node = _node_with_store()

    async def scenario() -> tuple[int, int, list[int]]:
        with EventQueue(node, b"e/", b"e0", 0) as events:
            for _ in range(1_000):
                node.sm.put(rpcpb.PutRequest(key=b"e/1", value=b"v"))
            queued, slow = events.queue.qsize(), node.hub.slow
            revisions: list[int] = []
            while len(revisions) < 1_000:
                _, batch = await asyncio.wait_for(events.next(), 5)
                revisions += [e.kv.mod_revision for e in batch]
        return queued, slow, revisions

    queued, slow, revisions = asyncio.run(scenario())
    assert (queued, slow) == (MAX_QUEUED_EVENTS, 1)
    assert revisions == list(range(2, 1_002))
    assert (node.hub.slow, len(node.hub)) == (0, 0)


class _ResetReader:
    """A connection reset while a call waits."""

    async def read(self, n: int) -> bytes:
        await asyncio.sleep(0.05)
        raise ConnectionResetError("reset by peer")


def test_a_waiting_call_is_given_up_when_its_connection_is_reset() -> None:
    """The reset used to escape before the call was cancelled: a Lock kept waiting
    for nobody and later took the lock."""

    async def scenario() -> bool:
        cancelled = asyncio.Event()

        async def lock() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "held"

        with pytest.raises(ConnectionError):
            await until_answered_or_gone(lock(), _ResetReader())  # type: ignore[arg-type]
        return cancelled.is_set()

    assert asyncio.run(asyncio.wait_for(scenario(), 5))


def test_auto_compaction_never_compacts_to_revision_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the first revision the retention window names revision 0; etcd's
    compactors skip it (the store starts at compact revision -1)."""
    clock = [0.0]
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        await real_sleep(0)

    monkeypatch.setattr(daemon.asyncio, "sleep", sleep)
    monkeypatch.setattr(daemon.time, "monotonic", lambda: clock[0])
    node = _fake_node()
    node.sm.kv.revision = 0
    proposed: list[int] = []

    async def propose(kind: Any, request: Any) -> None:
        proposed.append(request.revision)

    node.propose = propose

    async def scenario() -> None:
        task = asyncio.create_task(daemon.auto_compact(node, "periodic", 1.0))
        for _ in range(10):
            await real_sleep(0)
        node.sm.kv.revision = 7
        for _ in range(10):
            await real_sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert proposed
    assert 0 not in proposed
