"""``KeySpace.busy``: called while one long entry is applied (a ranged delete and its
watch delivery), so that a member can keep its peers informed meanwhile."""

from __future__ import annotations

from keel_store.mvcc import watch
from keel_store.mvcc.keyspace import BUSY_EVERY, Changes, Event
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import Watcher, WatchHub
from keel_store.pb import rpcpb


def _loaded(keys: int) -> StateMachine:
    sm = StateMachine()
    for start in range(0, keys, 100):
        ops = [
            rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%06d" % i, value=b"v"))
            for i in range(start, min(keys, start + 100))
        ]
        sm.txn(rpcpb.TxnRequest(success=ops))
    return sm


def test_a_ranged_delete_calls_busy_every_so_many_keys() -> None:
    keys = 3 * BUSY_EVERY + 10
    sm = _loaded(keys)
    calls: list[int] = []
    sm.kv.busy = lambda: calls.append(len(sm.kv._pending or ()))
    resp = sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))
    assert resp.deleted == keys
    assert calls == [BUSY_EVERY - 1, 2 * BUSY_EVERY - 1, 3 * BUSY_EVERY - 1]


def test_short_operations_do_not_call_busy() -> None:
    sm = _loaded(BUSY_EVERY)
    calls: list[None] = []
    sm.kv.busy = lambda: calls.append(None)
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    hub.watch(Watcher(1, b"k/", b"k0", lambda _w, _e: None), 0)
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))
    sm.put(rpcpb.PutRequest(key=b"k/x", value=b"v"))
    assert calls == []


def test_watch_delivery_of_a_long_revision_calls_busy_between_and_within_watchers() -> None:
    """Two watchers of a 3k-key delete (one with prev_kv): busy is called while their
    events are prepared and between the two deliveries; each gets every event once."""
    keys = 3 * BUSY_EVERY
    sm = _loaded(keys)
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    log: list[str] = []
    got: dict[int, list[Event]] = {1: [], 2: []}

    def sink(w: Watcher, events: list[Event]) -> None:
        log.append(f"sink {w.id}")
        got[w.id].extend(events)

    hub.watch(Watcher(1, b"k/", b"k0", sink), 0)
    hub.watch(Watcher(2, b"k/", b"k0", sink, prev_kv=True), 0)
    sm.kv.busy = lambda: log.append("busy")
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))

    sinks = [i for i, entry in enumerate(log) if entry.startswith("sink")]
    assert len(sinks) == 2
    assert log[: sinks[0]].count("busy") >= 3 + 2  # the delete itself, then the events
    assert "busy" in log[sinks[0] + 1 : sinks[1]]  # between the two deliveries
    for wid, events in got.items():
        assert [e.kv.key for e in events] == [b"k/%06d" % i for i in range(keys)]
        assert all(e.type == Event.DELETE for e in events)
        assert all(e.HasField("prev_kv") == (wid == 2) for e in events)


def test_the_events_built_for_a_long_revision_are_freed_in_slices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Freeing one revision's 400k built events at once held a leader's loop 125 ms:
    after the last delivery they are dropped a slice at a time, with busy between."""
    keys = 3 * BUSY_EVERY
    sm = _loaded(keys)
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    made: list[watch.Built] = []

    class Recorded(watch.Built):
        __slots__ = ()

        def __init__(self, changes: Changes) -> None:
            super().__init__(changes)
            made.append(self)

    monkeypatch.setattr(watch, "Built", Recorded)
    log: list[object] = []
    hub.watch(Watcher(1, b"k/", b"k0", lambda _w, _e: log.append("sink")), 0)
    hub.watch(Watcher(2, b"k/", b"k0", lambda _w, _e: log.append("sink"), prev_kv=True), 0)
    sm.kv.busy = lambda: log.append(len(made[0]._full) + len(made[0]._bare) if made else None)
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))

    after = log[len(log) - 1 - log[::-1].index("sink") :][1:]
    # busy between the two deliveries, then once per freed slice of the 2 x 3k events
    assert after == [2 * keys] + [2 * keys - n * BUSY_EVERY for n in range(1, 7)]
