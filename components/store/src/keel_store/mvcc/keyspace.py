"""The revisioned key space: every version of every key since the last compaction.

etcd's data model (``Documentation/learning/data_model.md``): one store-wide revision
that starts at 1 on an empty store and grows by exactly one per write transaction;
each key keeps its generations of versions. This module holds that model in memory,
with no I/O and no clock, so the same sequence of writes gives the same state on every
member. Durability comes from the Raft log and snapshots around it.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sortedcontainers import SortedDict, SortedKeysView, SortedList

from keel_store.mvcc import errors
from keel_store.pb import mvccpb

KeyValue = mvccpb.KeyValue
Event = mvccpb.Event
ENTRY_OVERHEAD = 64
"""Bytes counted per stored version on top of key and value (for the space quota)."""
PUT = mvccpb.Event.PUT
DELETE = mvccpb.Event.DELETE
BUSY_EVERY = 1024
"""Items of one long operation between two calls of :attr:`KeySpace.busy`."""

_T = TypeVar("_T")


def paced(items: Sequence[_T], busy: Callable[[], None] | None) -> Sequence[_T] | Iterator[_T]:
    """``items``, calling ``busy`` before every :data:`BUSY_EVERY`-th one when there are
    more than :data:`BUSY_EVERY` (else ``items`` itself: nothing added per item)."""
    return items if busy is None or len(items) <= BUSY_EVERY else _paced(items, busy)


def _paced(items: Sequence[_T], busy: Callable[[], None]) -> Iterator[_T]:
    for n, item in enumerate(items):
        if n % BUSY_EVERY == BUSY_EVERY - 1:
            busy()
        yield item


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside the block (back on after, if it was).

    For restoring a key space: that creates several objects per key and no cycle, and
    the collections those allocations set off, each scanning the growing key space,
    took as long as the restore itself (a keel-store snapshot of 200k keys: 1.57 s with
    them, 0.89 s without; etcd's database of 100k keys: 0.98 and 0.66 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix`` (etcd's rule)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(slots=True)
class KeyHistory:
    """The versions of one key, oldest first; ``None`` marks a deletion (tombstone).

    ``subs`` is each version's position among its revision's changes (etcd's sub
    revision: the bbolt key is ``main, sub``), needed to hash as etcd hashes.
    """

    revs: list[int] = field(default_factory=list)
    kvs: list[KeyValue | None] = field(default_factory=list)
    subs: list[int] = field(default_factory=list)

    def at(self, revision: int) -> KeyValue | None:
        """The key as it was at ``revision`` (``None``: absent then)."""
        i = bisect.bisect_right(self.revs, revision)
        return self.kvs[i - 1] if i else None

    def latest(self) -> KeyValue | None:
        return self.kvs[-1] if self.kvs else None


class Changes:
    """What one revision changed, in order: ``(key, kv, prev)`` per key, where ``kv`` is
    the new version (``None``: the key was deleted) and ``prev`` the one it replaced.

    Watch events are built from these only when a watcher or a replay asks
    (:meth:`event`): building a protobuf ``Event`` (and copying ``prev_kv`` into it) cost
    6-8 us per key, most of a ranged delete's time, for events nobody may be watching.
    """

    __slots__ = ("items", "revision")

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.items: list[tuple[bytes, KeyValue | None, KeyValue | None]] = []

    def __len__(self) -> int:
        return len(self.items)

    def event(self, i: int, prev_kv: bool = True) -> Event:
        """The watch event of change ``i``; with ``prev_kv`` when asked and there is one."""
        key, kv, prev = self.items[i]
        if kv is None:
            event = Event(type=DELETE, kv=KeyValue(key=key, mod_revision=self.revision))
        else:
            event = Event(type=PUT, kv=kv)
        if prev_kv and prev is not None:
            event.prev_kv.CopyFrom(prev)
        return event

    def events(self, prev_kv: bool = True) -> list[Event]:
        """Every change's watch event, in order."""
        return [self.event(i, prev_kv) for i in range(len(self.items))]


class KeySpace:
    """Keys with their history, the current and compacted revisions, and the event log.

    Writes happen inside a write transaction (:meth:`begin` ... :meth:`end`) so that
    everything one Raft entry changes shares one revision, as etcd's Txn does.
    """

    def __init__(self) -> None:
        self._keys: SortedDict[bytes, KeyHistory] = SortedDict()
        self._live: SortedList[bytes] = SortedList()
        """The keys whose latest version is not a tombstone (pending writes included):
        a read of the latest revision counts and walks these, not the deleted keys
        that stay in ``_keys`` until a compaction (etcd's index walks both)."""
        self.revision = 1
        """The store revision: the revision of the last write (1 on an empty store)."""
        self.compact_revision = -1
        """Reads below this revision fail with ``COMPACTED``; -1 until the first
        compaction, as etcd's ``compactMainRev``, so a compaction to revision 0 on a
        store never compacted succeeds (and a second one fails), as with etcd."""
        self._log_revs: list[int] = []
        self._log_changes: list[Changes] = []
        self._log_from = 0
        """The log holds every change from this revision on: 0 normally; after a restore,
        the restored revision + 1 until the log is rebuilt from the histories (when a
        watcher first asks for an earlier revision, see :meth:`changes_since`)."""
        self._pending: Changes | None = None
        self.size = 0
        """Approximate bytes held: every version since compaction (the quota's measure)."""
        self.busy: Callable[[], None] | None = None
        """Called every :data:`BUSY_EVERY` keys of a ranged delete or a compaction, and
        every as many events of one revision's watch delivery (``mvcc.watch``): a member
        applying a long entry may keep its peers informed meanwhile (a leader, its
        heartbeats)."""

    # --- write transactions -------------------------------------------------------

    def begin(self) -> None:
        """Start a write transaction; its writes get revision ``self.revision + 1``."""
        assert self._pending is None, "nested write transaction"
        self._pending = Changes(self.revision + 1)

    def end(self) -> Changes:
        """Finish the write transaction; bump the revision if anything changed."""
        changes, self._pending = self._pending, None
        assert changes is not None, "end() without begin()"
        if changes.items:
            self.revision += 1
            self._log_revs.append(self.revision)
            self._log_changes.append(changes)
        return changes

    @property
    def key_count(self) -> int:
        """Keys with a history, deleted ones included until compacted (etcd's keyIndex)."""
        return len(self._keys)

    @property
    def changed(self) -> bool:
        """Whether the open write transaction has changed anything yet."""
        return bool(self._pending and self._pending.items)

    @property
    def write_revision(self) -> int:
        """The revision the current write transaction's changes get."""
        return self.revision + 1

    def put(self, key: bytes, value: bytes, lease: int) -> tuple[KeyValue, KeyValue | None]:
        """Write ``key`` inside the current transaction; returns (new, previous)."""
        assert self._pending is not None, "put outside a write transaction"
        rev = self.write_revision
        history = self._keys.get(key)
        if history is None:
            history = self._keys[key] = KeyHistory()
        prev = history.latest()
        # The txn checks reject writing one key twice in one revision, so ``prev`` is
        # always from an earlier revision.
        assert prev is None or prev.mod_revision < rev, "key written twice in one revision"
        if prev is None:
            create, version = rev, 1
        else:
            create, version = prev.create_revision, prev.version + 1
        kv = KeyValue(
            key=key,
            value=value,
            lease=lease,
            create_revision=create,
            mod_revision=rev,
            version=version,
        )
        if prev is None:
            self._live.add(key)
        history.revs.append(rev)
        history.kvs.append(kv)
        changes = self._pending.items
        history.subs.append(len(changes))
        self.size += len(key) + len(value) + ENTRY_OVERHEAD
        # A put that creates the key has no previous version for its event, even where
        # the txn deleted the key just before (etcd's watch skips create events).
        changes.append((key, kv, prev))
        return kv, prev

    def delete(self, key: bytes, end: bytes) -> list[KeyValue]:
        """Delete every live key in ``[key, end)`` inside the transaction; returns them."""
        assert self._pending is not None, "delete outside a write transaction"
        rev = self.write_revision
        keys, live = self._keys, self._live
        first, stop = _slice(live, key, end)
        changes = self._pending.items
        deleted: list[KeyValue] = []
        # One pass over the live keys' own key objects (reading ``.key`` of a stored
        # ``KeyValue`` would copy it out of the message), touching each history once.
        for k in paced(live[first:stop], self.busy):
            history = keys[k]
            prev = history.kvs[-1]
            assert prev is not None, "a live key's latest version is a tombstone"
            # The event's previous version is the key before this revision, as etcd's
            # watch reads it (at mod_revision - 1); it differs from ``prev`` only when
            # the txn put the key already (a ranged delete etcd lets through, see
            # validate._deleted).
            before = history.at(rev - 1) if history.revs[-1] == rev else prev
            history.revs.append(rev)
            history.kvs.append(None)
            history.subs.append(len(changes))
            self.size += len(k) + ENTRY_OVERHEAD
            changes.append((k, None, before))
            deleted.append(prev)
        if deleted:
            del live[first:stop]
        return deleted

    # --- reads -------------------------------------------------------------------

    def check_revision(self, revision: int) -> int:
        """Resolve a requested read revision (``<= 0``: current) or raise etcd's error."""
        if revision <= 0:
            return self.revision
        if revision < self.compact_revision:
            raise errors.COMPACTED
        if revision > self.revision:
            raise errors.FUTURE_REV
        return revision

    def _latest(self, revision: int) -> bool:
        """Whether ``revision`` reads the latest state (what ``_live`` holds)."""
        return revision == (self.write_revision if self.changed else self.revision)

    def range(self, key: bytes, end: bytes, revision: int) -> list[KeyValue]:
        """Live keys in ``[key, end)`` at ``revision`` (already checked), in key order."""
        return self.window(key, end, revision)[1]

    def window(
        self, key: bytes, end: bytes, revision: int, limit: int = 0, reverse: bool = False
    ) -> tuple[int, list[KeyValue]]:
        """How many live keys ``[key, end)`` holds at ``revision`` (already checked), and
        them in key order; with ``limit``, only the first (``reverse``: the last)
        ``limit``. At the latest revision only the keys returned are read."""
        keys = self._keys
        if self._latest(revision):
            first, stop = _slice(self._live, key, end)
            count = stop - first
            if limit and count > limit:
                first, stop = (stop - limit, stop) if reverse else (first, first + limit)
            return count, [keys[k].kvs[-1] for k in self._live.islice(first, stop)]
        at = (keys[k].at(revision) for k in keys.islice(*_slice(keys, key, end)))
        kvs = [kv for kv in at if kv is not None]
        count = len(kvs)
        if limit and count > limit:
            kvs = kvs[-limit:] if reverse else kvs[:limit]
        return count, kvs

    def count(self, key: bytes, end: bytes, revision: int) -> int:
        """How many live keys ``[key, end)`` holds at ``revision`` (already checked)."""
        if self._latest(revision):
            first, stop = _slice(self._live, key, end)
            return stop - first
        keys = self._keys
        return sum(keys[k].at(revision) is not None for k in keys.islice(*_slice(keys, key, end)))

    def get(self, key: bytes) -> KeyValue | None:
        """The current version of ``key``."""
        history = self._keys.get(key)
        return history.latest() if history else None

    def changes_since(self, revision: int) -> Iterator[Changes]:
        """Every revision's changes from ``revision`` on that are still in the log (which
        holds every change since the last compaction, rebuilt here first if a restore
        left out what ``revision`` needs)."""
        if revision < self._log_from and self._log_from > self.compact_revision:
            self._rebuild_log()
        start = bisect.bisect_left(self._log_revs, revision)
        for i in range(start, len(self._log_revs)):
            yield self._log_changes[i]

    # --- compaction --------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget every version superseded at or before ``revision``, and tombstones.

        Afterwards reads and watches from below ``revision`` fail with ``COMPACTED``;
        the latest version of each key at ``revision`` stays readable there.
        """
        if revision <= self.compact_revision:
            raise errors.COMPACTED
        if revision > self.revision:
            raise errors.FUTURE_REV
        # Only a key updated or deleted since the last compaction has anything to drop:
        # that one left each key at most one version up to its revision, never a
        # tombstone, and a key created since holds one version unless it changed again.
        # The change log holds every change since, so the work follows the updates,
        # not the size of the key space; while it lacks revisions a restore left out
        # (rebuilt only when a watcher asks for them), the keys are walked, as etcd's
        # database finishing a scheduled compaction on load walks them.
        log_revs = self._log_revs
        logged = self._log_changes[
            bisect.bisect_right(log_revs, self.compact_revision) : bisect.bisect_right(
                log_revs, revision
            )
        ]
        # Where the log holds more than twice as many changes as there are keys (few
        # keys written many times), walking every key costs less than reading the log.
        keys = self._keys
        touched: list[bytes] | SortedKeysView[bytes] = keys.keys()
        whole = self._log_from <= self.compact_revision + 1
        if whole and sum(len(changes.items) for changes in logged) <= 2 * len(keys):
            touched = list(
                dict.fromkeys(
                    key
                    for changes in paced(logged, self.busy)
                    for key, kv, _ in changes.items
                    if kv is None or kv.version > 1
                )
            )
        self.compact_revision = revision
        emptied = []
        for key in paced(touched, self.busy):
            history = keys[key]
            i = bisect.bisect_right(history.revs, revision) - 1
            if i < 0:
                continue
            drop = i + 1 if history.kvs[i] is None else i
            for kv in history.kvs[:drop]:
                self.size -= len(key) + ENTRY_OVERHEAD + (len(kv.value) if kv else 0)
            if drop:
                del history.revs[:drop]
                del history.kvs[:drop]
                del history.subs[:drop]
            if not history.revs:
                emptied.append(key)
        for key in emptied:
            del keys[key]
        cut = bisect.bisect_left(self._log_revs, revision)
        del self._log_revs[:cut]
        del self._log_changes[:cut]
        if self._log_revs and self._log_revs[0] == revision:
            self._log_changes[0] = _as_compacted(self._log_changes[0])

    # --- snapshot support -----------------------------------------------------------

    def histories(self) -> Iterator[tuple[bytes, KeyHistory]]:
        """Every key with its history, in key order."""
        yield from self._keys.items()

    def histories_unordered(self) -> Iterable[tuple[bytes, KeyHistory]]:
        """Every key with its history, in the order the keys were inserted (not key
        order): without the sorted view's per-key lookups, and about in the order the
        histories' objects lie in memory (a snapshot walks it twice as fast)."""
        return dict.items(self._keys)

    def restore_histories(self, histories: list[tuple[bytes, KeyHistory]]) -> None:
        """Put back many keys' histories at once while restoring a snapshot (the sorted
        index is built in one sort, not a key at a time: 200k keys, 0.65 -> 0.05 s)."""
        size = 0
        for key, history in histories:
            klen = len(key) + ENTRY_OVERHEAD
            for kv in history.kvs:
                size += klen + (len(kv.value) if kv is not None else 0)
        self.size += size
        self._log_from = _UNLOGGED  # until restore_events
        if self._keys:
            self._keys.update(histories)
        else:
            self._keys = SortedDict(histories)

    def restore_events(self) -> None:
        """After :meth:`restore_histories`: the live keys now; the change log (what a
        watcher from before the restored revision replays) only once a watcher asks
        for it (:meth:`changes_since`). A restarted member serves sooner: rebuilding it
        took 0.09 of 0.82 s restoring 200k keys, and a restart's watchers usually
        start after the snapshot (the entries replayed after it are logged as they
        apply)."""
        keys = self._keys
        # The live keys taken from the sorted index, in an order SortedList keeps
        # without sorting them again: a snapshot lists the keys in their insertion
        # order, and sorting 200k of those a second time cost 0.08 s.
        dead = {k for k, h in dict.items(keys) if h.kvs[-1] is None}
        ordered = keys.keys()
        self._live = SortedList((k for k in ordered if k not in dead) if dead else ordered)
        self._log_revs, self._log_changes = [], []
        self._log_from = self.revision + 1

    def _rebuild_log(self) -> None:
        """The change log, every revision since the last compaction, from the key
        histories (paced: :attr:`busy` every :data:`BUSY_EVERY` keys; the collector off,
        as in a restore: many new objects, no cycle)."""
        with collector_paused():
            self._build_log()

    def _build_log(self) -> None:
        keys = self._keys
        by_rev: defaultdict[int, list[tuple[int, bytes, KeyValue | None, KeyValue | None]]]
        by_rev = defaultdict(list)
        items = list(dict.items(keys))
        # any order: each revision is sorted below
        for key, history in paced(items, self.busy):
            revs, kvs = history.revs, history.kvs
            if len(revs) == 1:  # most keys: one version, nothing before it
                by_rev[revs[0]].append((history.subs[0], key, kvs[0], None))
                continue
            # An event's previous version is the key before the event's revision.
            prev: KeyValue | None = None
            last: KeyValue | None = None
            last_rev = 0
            for rev, kv, sub in zip(revs, kvs, history.subs, strict=True):
                if rev != last_rev:
                    prev, last_rev = last, rev
                created = kv is not None and kv.create_revision == rev
                by_rev[rev].append((sub, key, kv, None if created else prev))
                last = kv
        # The compact revision's own changes stay watchable (what compaction left of
        # them: its puts, without their previous versions; see _as_compacted).
        self._log_revs = sorted(r for r in by_rev if r >= self.compact_revision)
        self._log_changes = []
        for rev in self._log_revs:
            changes = Changes(rev)
            batch = by_rev[rev]
            batch.sort(key=_SUB_KEY)
            changes.items = [(k, kv, p) for _, k, kv, p in batch]
            self._log_changes.append(changes)
        self._log_from = 0


_UNLOGGED = 2**63
"""``KeySpace._log_from`` between restoring histories and :meth:`KeySpace.restore_events`:
the log holds no revision (a compaction then walks the keys)."""

_SUB_KEY = operator.itemgetter(0, 1)
"""A restored change's place in its revision: (sub revision, key)."""


def _as_compacted(changes: Changes) -> Changes:
    """What a watch from the compact revision sees of that revision's changes.

    etcd replays a watch from its backend, where compaction has removed the compact
    revision's tombstones and every version before it (``keyIndex.compact``): so that
    revision's deletes are not delivered, and its puts come without ``prev_kv`` (etcd
    reads the previous version at ``revision - 1``, compacted). A key changed twice in
    the revision keeps only its last change."""
    out = Changes(changes.revision)
    last = {key: i for i, (key, _, _) in enumerate(changes.items)}
    out.items = [
        (key, kv, None)
        for i, (key, kv, _) in enumerate(changes.items)
        if kv is not None and last[key] == i
    ]
    return out


def _slice(
    keys: SortedList[bytes] | SortedDict[bytes, Any], key: bytes, end: bytes
) -> tuple[int, int]:
    """The positions ``[first, stop)`` of the keys in ``[key, end)`` in the sorted
    ``keys`` (etcd's rules for ``end``: empty is ``key`` alone, ``\\0`` is every key from
    ``key`` on)."""
    first = keys.bisect_left(key)
    if not end:
        return first, first + 1 if key in keys else first
    if end == b"\0":
        return first, len(keys)
    return first, max(first, keys.bisect_left(end))
