"""Watches: streams of events over a key range, from any revision still in history.

A watch created at a past revision first replays the event log from there, then
follows new revisions as they are applied; both happen on the apply thread, so no
revision is skipped or delivered twice between replay and live delivery. Watches are
local to a member (not replicated): they only see what this member has applied.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from keel_store.mvcc.keyspace import BUSY_EVERY, Changes, Event, KeySpace, paced

REPLAY_BATCH_REVISIONS = 1000
"""etcd's ``watchBatchMaxRevs``: a catching-up watch gets at most this many revisions
per response (one revision's events are never split, except by ``fragment``)."""

MAX_QUEUED_EVENTS = 128
"""Batches a watch's consumer holds unread before its sink refuses more (etcd's
``chanBufLen``): the watcher is then slow (:class:`WatchHub`) until the consumer has
read its queue down below :data:`RESUME_BELOW`."""

RESUME_BELOW = MAX_QUEUED_EVENTS // 2


@dataclass(eq=False, slots=True)
class Watcher:
    """One watch: which keys, from which revision, what to include, where to deliver."""

    id: int
    key: bytes
    end: bytes
    sink: Callable[[Watcher, list[Event]], bool | None]
    """Receives batches of matching events (in revision order). Returns False when its
    consumer is full and did not take the batch: the watcher is then *slow* (etcd's
    victim) and gets nothing more until :meth:`WatchHub.resume`, which replays from the
    refused batch on."""
    next_revision: int = 0
    """The lowest revision not delivered yet."""
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    fragment: bool = False
    compacted: Callable[[Watcher, int], None] | None = None
    """Told the compact revision when history this watcher still needed was compacted
    away under it (by a snapshot installed from the leader); the watcher is dropped."""
    tags: dict[str, object] = field(default_factory=dict)

    def matches(self, key: bytes) -> bool:
        if not self.end:
            return key == self.key
        if self.end == b"\0":
            return key >= self.key
        return self.key <= key < self.end

    def select(
        self,
        changes: Changes,
        built: Built | None = None,
        busy: Callable[[], None] | None = None,
    ) -> list[Event]:
        """The events of ``changes`` this watcher wants, shaped as it asked (filters,
        prev_kv); only those events are built.

        ``built``: events already built for other watchers of the same revision, shared
        (so fan-out builds each event once, not once per watcher). ``busy``: called every
        :data:`~keel_store.mvcc.keyspace.BUSY_EVERY` changes.
        """
        if built is None:
            built = Built(changes)
        with_prev = self.prev_kv
        out = []
        for i, (key, kv, _) in enumerate(paced(changes.items, busy)):
            if not self.matches(key):
                continue
            if self.no_delete if kv is None else self.no_put:
                continue
            out.append(built.event(i, with_prev))
        return out


class Built:
    """The watch events of one revision built so far, with and without ``prev_kv``."""

    __slots__ = ("_bare", "_changes", "_full")

    def __init__(self, changes: Changes) -> None:
        self._changes = changes
        # Indexed by change; made on first use (most revisions have one watcher shape).
        self._full: list[Event | None] = []
        self._bare: list[Event | None] = []

    def event(self, i: int, prev_kv: bool) -> Event:
        """Change ``i``'s event (built on first use, then shared)."""
        cache = self._full if prev_kv else self._bare
        if not cache:
            cache.extend(itertools.repeat(None, len(self._changes)))
        event = cache[i]
        if event is None:
            event = cache[i] = self._changes.event(i, prev_kv)
        return event

    def release(self, busy: Callable[[], None]) -> None:
        """Drop the events built so far, calling ``busy`` between every
        :data:`~keel_store.mvcc.keyspace.BUSY_EVERY`: freeing the 400k events of one
        ranged delete held a leader's loop for 125 ms in one piece, inside the apply
        (the watchers' responses hold copies)."""
        for cache in (self._full, self._bare):
            while cache:
                del cache[-BUSY_EVERY:]
                busy()


class WatchHub:
    """All watches on one member, fed by the state machine's listener.

    A watcher whose consumer stops taking events (a client that does not read) is set
    aside as *slow*, as etcd sets aside a victim watcher whose 128-response channel is
    full: its events are not built and queued any more, and it keeps only the revision
    it stopped at. Its consumer calls :meth:`resume` once it has room again; the
    missed revisions are then replayed from the change log, and the watcher goes live
    once it has caught up. What a slow client costs is its consumer's queue, not the
    history written since it stopped reading.
    """

    def __init__(self, kv: KeySpace) -> None:
        self._kv = kv
        self._ids = itertools.count(1)
        self._exact: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._slow: set[Watcher] = set()
        self._held: list[Changes] | None = None

    def hold(self) -> None:
        """Keep the revisions notified from now on until :meth:`release` (idempotent).

        A member holds them while it applies one entry, so that the entry's request is
        answered before its watchers' responses are built: with 50 watchers of the
        written keys, building theirs first put ~0.3 ms before every answer.
        """
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Deliver the held revisions, in order, and stop holding."""
        held, self._held = self._held, None
        for changes in held or ():
            self._deliver(changes)

    def rebind(self, kv: KeySpace) -> None:
        """Follow a new key space (after a snapshot was installed); watches stay.

        The snapshot may carry revisions the watchers were never notified of (a
        follower that fell behind): each live watcher catches up from the new key
        space's log where it stopped, as etcd moves its watchers to unsynced on
        restore, or, when that history is compacted in the snapshot, is cancelled
        through its ``compacted`` callback.
        """
        self._kv = kv
        live = [*self._ranges, *(w for same in self._exact.values() for w in same)]
        for w in live:
            if w.next_revision > kv.revision:
                continue  # nothing missed (or a future start revision)
            self.cancel(w)
            self._slow.add(w)
            compacted = self.resume(w)
            if compacted and w.compacted is not None:
                w.compacted(w, compacted)

    def __len__(self) -> int:
        return len(self._ranges) + sum(len(s) for s in self._exact.values()) + len(self._slow)

    @property
    def slow(self) -> int:
        """How many watchers are set aside until their consumers have room
        (etcd's ``etcd_debugging_mvcc_slow_watcher_total``)."""
        return len(self._slow)

    def new_id(self) -> int:
        """A member-unique watch ID (for streams that do not choose their own)."""
        return next(self._ids)

    def watch(self, watcher: Watcher, start_revision: int) -> int:
        """Register ``watcher`` from ``start_revision`` (0: the next revision).

        Past revisions are replayed in batches of up to 1000 revisions, as etcd sends a
        catching-up watcher (until the sink refuses one: the watcher is then slow).
        Returns 0 when registered, or the compact revision when ``start_revision`` is
        compacted; the watcher is then not registered and the caller cancels it with
        that revision, as etcd does.
        """
        if 0 < start_revision < self._kv.compact_revision:
            return self._kv.compact_revision
        current = self._kv.revision
        watcher.next_revision = current + 1 if start_revision <= 0 else start_revision
        if watcher.next_revision <= current and not self._replay(watcher):
            self._slow.add(watcher)
            return 0
        self._add(watcher)
        return 0

    def resume(self, watcher: Watcher) -> int:
        """Replay to a slow ``watcher`` what it missed, as far as its sink takes it; it
        goes live again once it has caught up. Returns 0, or the compact revision when
        what it missed was compacted meanwhile: the watcher is then dropped, and the
        caller cancels it with that revision (etcd's compacted unsynced watcher)."""
        if watcher not in self._slow:
            return 0
        if watcher.next_revision < self._kv.compact_revision:
            self._slow.discard(watcher)
            return self._kv.compact_revision
        if self._replay(watcher):
            self._slow.discard(watcher)
            self._add(watcher)
        return 0

    def _replay(self, watcher: Watcher) -> bool:
        """Send ``watcher`` the logged revisions from its ``next_revision`` on, in
        batches of :data:`REPLAY_BATCH_REVISIONS`. False when the sink refused a batch:
        ``next_revision`` is then that batch's first revision."""
        current = self._kv.revision
        replay: list[Event] = []
        revisions = first = 0
        for changes in self._kv.changes_since(watcher.next_revision):
            selected = watcher.select(changes)
            if not selected:
                continue
            if revisions == REPLAY_BATCH_REVISIONS:
                if watcher.sink(watcher, replay) is False:
                    watcher.next_revision = first
                    return False
                replay, revisions = [], 0
            if not replay:
                first = changes.revision
            replay.extend(selected)
            revisions += 1
        if replay and watcher.sink(watcher, replay) is False:
            watcher.next_revision = first
            return False
        watcher.next_revision = current + 1
        return True

    def _add(self, watcher: Watcher) -> None:
        if watcher.end:
            self._ranges.add(watcher)
        else:
            self._exact.setdefault(watcher.key, set()).add(watcher)

    def cancel(self, watcher: Watcher) -> None:
        """Stop delivering to ``watcher`` (idempotent)."""
        self._slow.discard(watcher)
        self._ranges.discard(watcher)
        same = self._exact.get(watcher.key)
        if same is not None:
            same.discard(watcher)
            if not same:
                del self._exact[watcher.key]

    def notify(self, changes: Changes) -> None:
        """State-machine listener: deliver one applied revision's events (or keep
        them, while held)."""
        if self._held is not None:
            self._held.append(changes)
            return
        self._deliver(changes)

    def _deliver(self, changes: Changes) -> None:
        touched: dict[Watcher, None] = {}
        if self._exact:
            for key, _, _ in changes.items:
                for w in self._exact.get(key, ()):
                    touched[w] = None
        for w in self._ranges:
            touched[w] = None
        if not touched:
            return
        revision = changes.revision
        built = Built(changes)
        # A long revision (a ranged delete) lets the member breathe between slices.
        busy = self._kv.busy if len(changes) > BUSY_EVERY else None
        selected: list[Event] = []
        for w in touched:
            if w.next_revision > revision:
                continue  # a future start revision not reached yet
            w.next_revision = revision + 1
            selected = w.select(changes, built, busy)
            if selected and w.sink(w, selected) is False:
                w.next_revision = revision
                self.cancel(w)
                self._slow.add(w)
            if busy is not None:
                busy()
        if busy is not None:
            selected = []  # the last watcher's list: the built events are freed below
            built.release(busy)
