"""The node's view of its log: what is stable in storage plus what is not yet persisted.

Entries the core has accepted but the caller has not yet persisted live in the
*unstable* part (``_offset`` is the index of its first entry); a snapshot received from
the leader waits there too until the caller installs it.
"""

from __future__ import annotations

from keel_store.raft.storage import CompactedError, Storage, StorageError
from keel_store.raft.types import Entry, Snapshot


class RaftInvariantError(AssertionError):
    """The core was asked to do something Raft forbids (e.g. rewrite committed entries)."""


class RaftLog:
    """Stable entries (through ``storage``), unstable entries, commit and apply points."""

    __slots__ = ("_entries", "_offset", "_snapshot", "applied", "committed", "storage")

    def __init__(self, storage: Storage, applied: int = 0) -> None:
        self.storage = storage
        self._offset = storage.last_index() + 1
        self._entries: list[Entry] = []
        self._snapshot: Snapshot | None = None
        self.committed = storage.first_index() - 1
        self.applied = max(applied, self.committed)

    # --- reading ----------------------------------------------------------------------

    def first_index(self) -> int:
        """First index with an entry (not only a snapshot) available."""
        if self._snapshot is not None:
            return self._snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry, persisted or not."""
        if self._entries:
            return self._offset + len(self._entries) - 1
        if self._snapshot is not None:
            return self._snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry."""
        term = self.term(self.last_index())
        assert term is not None
        return term

    def term(self, index: int) -> int | None:
        """Term at ``index``, or None if compacted away or beyond the last entry."""
        if self._entries and index >= self._offset:
            pos = index - self._offset
            return self._entries[pos].term if pos < len(self._entries) else None
        if self._snapshot is not None:
            if index == self._snapshot.meta.index:
                return self._snapshot.meta.term
            if index < self._snapshot.meta.index:
                return None
        try:
            return self.storage.term(index)
        except StorageError:
            return None

    def match_term(self, index: int, term: int) -> bool:
        """True if the entry at ``index`` has ``term``."""
        return self.term(index) == term

    def slice(self, lo: int, hi: int, max_count: int) -> list[Entry]:
        """Entries in [lo, hi), at most ``max_count``; CompactedError below the first."""
        if lo < self.first_index():
            raise CompactedError(f"index {lo} is compacted")
        hi = min(hi, self.last_index() + 1, lo + max_count)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self._offset:
            out = list(self.storage.entries(lo, min(hi, self._offset), max_count))
        if hi > self._offset:
            start = max(lo, self._offset) - self._offset
            out.extend(self._entries[start : hi - self._offset])
        return out

    def snapshot(self) -> Snapshot:
        """The newest snapshot: the unstable one if any, else storage's."""
        if self._snapshot is not None:
            return self._snapshot
        return self.storage.snapshot()

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Is a log ending at (index, term) at least as up to date as ours (§5.4.1)?"""
        last_term = self.last_term()
        return term > last_term or (term == last_term and index >= self.last_index())

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or differs from ours in term; 0 if none."""
        for entry in entries:
            if self.term(entry.index) != entry.term:
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= ``index`` whose term is <= ``term``, and that term.

        Lets a leader skip a whole term of mismatching entries in one probe.
        """
        while index > 0:
            ours = self.term(index)
            if ours is None:
                return index, 0
            if ours <= term:
                return index, ours
            index -= 1
        return 0, 0

    # --- changing ---------------------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Add ``entries`` to the unstable part, cutting any entries they replace."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after - 1 < self.committed:
            raise RaftInvariantError(f"append at {after} would cut committed {self.committed}")
        if after == self._offset + len(self._entries):
            self._entries.extend(entries)
        elif after <= self._offset:
            # Replaces (part of) the stable log too; storage cuts it when persisting.
            self._offset = after
            self._entries = list(entries)
        else:
            del self._entries[after - self._offset :]
            self._entries.extend(entries)
        return self.last_index()

    def maybe_append(
        self,
        index: int,
        log_term: int,
        committed: int,
        entries: tuple[Entry, ...],
    ) -> int | None:
        """Follower side of APPEND: the new last matching index, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftInvariantError(
                    f"entry {conflict} conflicts with committed {self.committed}"
                )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        """Raise the commit index (never lowers it)."""
        if index > self.committed:
            if index > self.last_index():
                raise RaftInvariantError(
                    f"commit {index} is beyond the last index {self.last_index()}"
                )
            self.committed = index

    def applied_to(self, index: int) -> None:
        """Record that the caller applied everything up to ``index``."""
        if index:
            self.applied = max(self.applied, index)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot`` (waiting in the unstable part until installed)."""
        self.committed = snapshot.meta.index
        self._snapshot = snapshot
        self._offset = snapshot.meta.index + 1
        self._entries = []

    # --- what the Ready carries ---------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        """Entries the caller must persist."""
        return list(self._entries)

    def unstable_snapshot(self) -> Snapshot | None:
        """A snapshot the caller must install, if any."""
        return self._snapshot

    def has_next_committed(self) -> bool:
        """Are there committed entries not yet handed out for applying?"""
        return self.committed > max(self.applied, self.first_index() - 1)

    def next_committed(self, max_count: int) -> list[Entry]:
        """Committed entries after the applied index, at most ``max_count``."""
        lo = max(self.applied + 1, self.first_index())
        if lo > self.committed:
            return []
        return self.slice(lo, self.committed + 1, max_count)

    def stable_to(self, index: int, term: int) -> None:
        """The caller persisted entries up to (index, term): drop them from unstable."""
        if not self._entries or index < self._offset:
            return
        pos = index - self._offset
        if pos < len(self._entries) and self._entries[pos].term == term:
            del self._entries[: pos + 1]
            self._offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        """The caller installed the snapshot at ``index``."""
        if self._snapshot is not None and self._snapshot.meta.index == index:
            self._snapshot = None
