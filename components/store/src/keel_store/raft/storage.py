"""The stable-storage view the core reads, and an in-memory implementation of it.

The core only ever *reads* storage; the caller writes what a ``Ready`` tells it to (the
WAL on a real node, :class:`MemoryStorage` in the simulator and in tests). Index 0 / term
0 stand for "before the first entry".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from keel_store.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta


class StorageError(Exception):
    """Base of the errors a storage view raises for an index it cannot serve."""


class CompactedError(StorageError):
    """The requested index is at or below the last snapshot: only the snapshot has it."""


class UnavailableError(StorageError):
    """The requested index is beyond the last stored entry."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """The snapshot is being made ready (read from its file): ask again later (etcd raft's
    ``ErrSnapshotTemporarilyUnavailable``; a leader then sends nothing to that follower
    until its next heartbeat response)."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already held was offered."""


class Storage(Protocol):
    """What the core needs to read from durable storage."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Hard state and membership to restart from."""
        ...

    def entries(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Entries with index in [lo, hi), at most ``max_count`` (at least one)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (also valid at the snapshot index)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (snapshot index if none)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise :class:`SnapshotTemporarilyUnavailableError`)."""
        ...


class MemoryStorage:
    """Storage in a list; ``_entries[0]`` is a dummy at the snapshot's (index, term)."""

    __slots__ = ("_entries", "_hard_state", "_load", "_snapshot")

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._load: Callable[[], bytes] | None = None
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # --- read side (the Storage protocol) ---------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """Hard state and the membership recorded in the last snapshot."""
        return self._hard_state, self._snapshot.meta.conf

    def entries(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Entries in [lo, hi), at most ``max_count``; raises for compacted/missing ones."""
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"index {hi - 1} is beyond the last {self.last_index()}")
        hi = min(hi, lo + max(1, max_count))
        return self._entries[lo - offset : hi - offset]

    def term(self, index: int) -> int:
        """Term at ``index``; the snapshot index answers with the snapshot's term."""
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"index {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"index {index} is beyond the last {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        """Snapshot index + 1."""
        return self._entries[0].index + 1

    def last_index(self) -> int:
        """Index of the last entry (the snapshot's if there are none)."""
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (empty before the first); data kept elsewhere (see
        :meth:`create_snapshot`) is loaded now."""
        if self._load is not None:
            return Snapshot(self._snapshot.meta, self._load())
        return self._snapshot

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        """Where the most recent snapshot stands, without loading its data."""
        return self._snapshot.meta

    # --- write side (what the caller does with a Ready) -------------------------------

    @property
    def hard_state(self) -> HardState:
        """The persisted hard state."""
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        """Persist ``hard_state``."""
        self._hard_state = hard_state

    def append(self, entries: list[Entry]) -> None:
        """Append ``entries``, replacing any held entries from their first index on."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # wholly covered by the snapshot
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._entries[0].index
        if offset > len(self._entries):
            raise UnavailableError(
                f"append at {entries[0].index} leaves a gap after {self.last_index()}"
            )
        del self._entries[offset:]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything held with ``snapshot`` (a follower installing it)."""
        if snapshot.meta.index < self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.meta.index} is older than {self._snapshot.meta.index}"
            )
        self._snapshot = snapshot
        self._load = None
        self._entries = [Entry(term=snapshot.meta.term, index=snapshot.meta.index)]

    def create_snapshot(
        self, index: int, conf: ConfState, data: bytes, load: Callable[[], bytes] | None = None
    ) -> Snapshot:
        """Record a snapshot of the state machine at applied ``index`` (entries stay).
        With ``load``, the data is not held here: :meth:`snapshot` calls ``load()``
        (which reads it back from where it was written) each time it is asked for; it
        may raise :class:`SnapshotTemporarilyUnavailableError` while it reads."""
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot at {index} is beyond the last {self.last_index()}")
        meta = SnapshotMeta(index=index, term=self.term(index), conf=conf)
        self._snapshot = Snapshot(meta=meta, data=data)
        self._load = load
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index`` (must be covered by a snapshot)."""
        offset = self._entries[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise UnavailableError(f"compact at {index} is beyond the last {self.last_index()}")
        term = self._entries[index - offset].term
        self._entries = [Entry(term=term, index=index), *self._entries[index - offset + 1 :]]
