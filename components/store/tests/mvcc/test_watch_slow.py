"""Slow watchers (etcd's victims): a watcher whose consumer is full is set aside, keeps
only the revision it stopped at, and catches up from the change log when resumed,
every event once and in order."""

from __future__ import annotations

from keel_store.mvcc import snapshot
from keel_store.mvcc.keyspace import Event
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import REPLAY_BATCH_REVISIONS, Watcher, WatchHub
from keel_store.pb import rpcpb


class Consumer:
    """A sink with room for ``room`` batches until the test reads them."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.batches: list[list[Event]] = []
        self.refused = 0

    def __call__(self, _w: Watcher, events: list[Event]) -> bool:
        if len(self.batches) >= self.room:
            self.refused += 1
            return False
        self.batches.append(list(events))
        return True

    def read(self) -> list[tuple[bytes, int]]:
        """Take every batch waiting (room comes back)."""
        got = [(e.kv.key, e.kv.mod_revision) for b in self.batches for e in b]
        self.room += len(self.batches)
        self.batches = []
        return got


def store() -> tuple[StateMachine, WatchHub]:
    sm = StateMachine()
    hub = WatchHub(sm.kv)
    sm.listeners.append(hub.notify)
    return sm, hub


def put(sm: StateMachine, key: bytes, n: int = 1) -> None:
    for _ in range(n):
        sm.put(rpcpb.PutRequest(key=key, value=b"v"))


def test_a_full_consumer_makes_the_watcher_slow_until_resumed() -> None:
    sm, hub = store()
    full = Consumer(room=2)
    other = Consumer(room=1000)
    w = Watcher(1, b"k/", b"k0", full)
    hub.watch(w, 0)
    hub.watch(Watcher(2, b"k/", b"k0", other), 0)
    put(sm, b"k/a", 10)  # revisions 2..11
    assert full.refused == 1, "refused once, then set aside: no more batches offered"
    assert hub.slow == 1
    assert len(hub) == 2
    assert len(other.batches) == 10, "another watcher of the same keys is not held back"
    got = full.read()
    assert hub.resume(w) == 0
    assert hub.slow == 0
    got += full.read()
    put(sm, b"k/a")  # 12: live again
    got += full.read()
    assert [rev for _, rev in got] == list(range(2, 13))


def test_a_resumed_watcher_that_fills_up_again_stays_slow() -> None:
    sm, hub = store()
    consumer = Consumer(room=1)
    w = Watcher(1, b"k", b"", consumer)
    hub.watch(w, 0)
    put(sm, b"k", 3 * REPLAY_BATCH_REVISIONS)  # revisions 2..3001
    got = consumer.read()
    resumes = 0
    while hub.slow:
        consumer.room = 1  # one batch of room at a time
        hub.resume(w)
        resumes += 1
        got += consumer.read()
    assert resumes == 3  # live: 2; resumed: 3..1002, 1003..2002, 2003..3001 (caught up)
    assert [rev for _, rev in got] == list(range(2, 3 * REPLAY_BATCH_REVISIONS + 2))


def test_a_replay_at_creation_refused_resumes_later() -> None:
    sm, hub = store()
    put(sm, b"k", 1500)  # 2..1501
    consumer = Consumer(room=1)
    w = Watcher(1, b"k", b"", consumer)
    assert hub.watch(w, 1) == 0
    assert hub.slow == 1
    assert len(consumer.batches[0]) == REPLAY_BATCH_REVISIONS
    put(sm, b"k", 2)  # 1502, 1503: not offered to a slow watcher
    assert consumer.refused == 1
    got = consumer.read()
    hub.resume(w)
    assert hub.slow == 0
    got += consumer.read()
    assert [rev for _, rev in got] == list(range(2, 1504))


def test_history_compacted_while_slow_cancels_with_the_compact_revision() -> None:
    sm, hub = store()
    consumer = Consumer(room=0)
    w = Watcher(1, b"k", b"", consumer)
    hub.watch(w, 0)
    put(sm, b"k", 5)  # 2..6: refused at 2
    sm.compact(rpcpb.CompactionRequest(revision=4))
    assert hub.resume(w) == 4
    assert hub.slow == 0
    assert len(hub) == 0, "the compacted watcher is dropped"
    put(sm, b"k")
    assert consumer.refused == 1


def test_a_slow_watcher_at_the_compact_revision_still_catches_up() -> None:
    sm, hub = store()
    consumer = Consumer(room=0)
    w = Watcher(1, b"k", b"", consumer)
    hub.watch(w, 0)
    put(sm, b"other")  # 2
    put(sm, b"k", 3)  # 3..5: refused at 3
    sm.compact(rpcpb.CompactionRequest(revision=3))
    consumer.room = 10
    assert hub.resume(w) == 0
    assert [rev for _, rev in consumer.read()] == [3, 4, 5]


def test_cancel_forgets_a_slow_watcher() -> None:
    sm, hub = store()
    consumer = Consumer(room=0)
    w = Watcher(1, b"k", b"", consumer)
    hub.watch(w, 0)
    put(sm, b"k")
    assert hub.slow == 1
    hub.cancel(w)
    assert (hub.slow, len(hub)) == (0, 0)
    consumer.room = 10
    assert hub.resume(w) == 0
    put(sm, b"k")
    assert consumer.batches == [], "a cancelled watcher hears nothing, resumed or not"


def test_a_snapshot_installed_under_watchers_replays_what_they_missed() -> None:
    """A follower that fell behind installs the leader's snapshot: its watchers get
    the revisions in the snapshot they were never notified of (they skipped them
    before), and those whose history the snapshot has compacted are cancelled."""
    leader = StateMachine()
    put(leader, b"k")  # 2
    follower, hub = store()
    put(follower, b"k")  # 2, the same entry
    live, every, ahead = Consumer(100), Consumer(100), Consumer(100)
    told: list[int] = []
    hub.watch(Watcher(1, b"k", b"", live), 0)
    hub.watch(Watcher(2, b"\0", b"\0", every, compacted=lambda _w, rev: told.append(rev)), 0)
    hub.watch(Watcher(3, b"k", b"", ahead), 9)
    put(leader, b"k", 5)  # 3..7: the follower misses them
    follower = snapshot.restore(snapshot.save(leader))
    follower.listeners.append(hub.notify)
    hub.rebind(follower.kv)
    for sm in (leader, follower):
        put(sm, b"k", 3)  # 8..10, applied by both
    assert [rev for _, rev in live.read()] == list(range(3, 11))
    assert [rev for _, rev in every.read()] == list(range(3, 11))
    assert [rev for _, rev in ahead.read()] == [9, 10]
    assert (told, len(hub)) == ([], 3)

    put(leader, b"k", 5)  # 11..15: missed again, and compacted at 13
    leader.compact(rpcpb.CompactionRequest(revision=13))
    hub.rebind(snapshot.restore(snapshot.save(leader)).kv)
    assert told == [13]
    assert (len(hub), hub.slow) == (0, 0), "compacted watchers are dropped"
    assert live.batches == every.batches == ahead.batches == []
