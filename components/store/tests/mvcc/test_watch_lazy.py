"""Watch events are built when a watcher or a replay asks for them, not on every write.

A ranged delete of 200k keys spent most of its ~8 s per member (three members on
two cores, ``etcdctl check perf``'s final delete) building a protobuf event per key
that no watcher wanted.
"""

from __future__ import annotations

import pytest

from keel_store.mvcc import keyspace
from keel_store.mvcc.keyspace import Event
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import Watcher, WatchHub
from keel_store.pb import rpcpb


class _Counting:
    """Stands in for ``mvccpb.Event`` in the key space module and counts constructions."""

    def __init__(self) -> None:
        self.built = 0

    def __call__(self, **fields: object) -> Event:
        self.built += 1
        return Event(**fields)  # type: ignore[arg-type]


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> _Counting:
    counting = _Counting()
    monkeypatch.setattr(keyspace, "Event", counting)
    return counting


def _load(sm: StateMachine, prefix: bytes, keys: int) -> None:
    ops = [
        rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=prefix + b"%04d" % i, value=b"v"))
        for i in range(keys)
    ]
    sm.txn(rpcpb.TxnRequest(success=ops))


def test_writes_nobody_watches_build_no_events(built: _Counting) -> None:
    sm = StateMachine()
    sm.listeners.append(WatchHub(sm.kv).notify)
    _load(sm, b"a/", 500)
    sm.put(rpcpb.PutRequest(key=b"a/0001", value=b"w"))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"a/", range_end=b"a0"))
    assert built.built == 0


def test_only_the_events_a_watcher_selects_are_built(built: _Counting) -> None:
    sm = StateMachine()
    _load(sm, b"a/", 300)
    _load(sm, b"b/", 300)
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    got: list[Event] = []
    hub.watch(Watcher(1, b"b/0010", b"b/0020", lambda _w, e: got.extend(e)), 0)
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"\0", range_end=b"\0"))
    assert [e.kv.key for e in got] == [b"b/%04d" % i for i in range(10, 20)]
    assert all(e.type == Event.DELETE and not e.HasField("prev_kv") for e in got)
    assert built.built == 10


def test_watchers_of_one_revision_share_its_events(built: _Counting) -> None:
    """Fan-out builds each event once per shape (bare, with prev_kv), whatever the
    number of watchers."""
    sm = StateMachine()
    _load(sm, b"a/", 50)
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    got: dict[int, list[Event]] = {}

    def sink(w: Watcher, events: list[Event]) -> None:
        got.setdefault(w.id, []).extend(events)

    for wid, prev_kv in ((1, False), (2, False), (3, True), (4, True)):
        hub.watch(Watcher(wid, b"a/", b"a0", sink, prev_kv=prev_kv), 0)
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"a/", range_end=b"a0"))
    assert built.built == 2 * 50
    assert all(x is y for x, y in zip(got[1], got[2], strict=True))
    assert all(x is y for x, y in zip(got[3], got[4], strict=True))
    assert [e.prev_kv.value for e in got[3]] == [b"v"] * 50
    assert not any(e.HasField("prev_kv") for e in got[1])


def test_a_replay_builds_the_same_events_as_live_delivery() -> None:
    sm = StateMachine()
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    live: list[Event] = []
    hub.watch(Watcher(1, b"k", b"l", lambda _w, e: live.extend(e), prev_kv=True), 0)
    sm.put(rpcpb.PutRequest(key=b"k1", value=b"one"))
    sm.put(rpcpb.PutRequest(key=b"k1", value=b"two", lease=0))
    _load(sm, b"k2/", 3)
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k", range_end=b"l"))
    replayed: list[Event] = []
    hub.watch(Watcher(2, b"k", b"l", lambda _w, e: replayed.extend(e), prev_kv=True), 2)
    assert replayed == live
    assert [(e.type, e.kv.key, e.prev_kv.value) for e in live[:2]] == [
        (Event.PUT, b"k1", b""),
        (Event.PUT, b"k1", b"one"),
    ]
    assert [e.kv.mod_revision for e in live[-4:]] == [sm.kv.revision] * 4
