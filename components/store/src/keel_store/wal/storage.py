"""A node's data directory: the WAL and the snapshot files, kept in the right order.

The order of writes is where durability bugs hide, so it lives here once:

- entries and hard state: appended to the WAL and synced before ``save`` returns;
- a snapshot (taken locally or installed from a leader): the snapshot file is made
  durable first, then a WAL marker is synced, then old snapshot files are purged and the
  WAL is compacted up to the *oldest kept* snapshot, so that if the newest snapshot file
  is later found damaged, the previous one plus the WAL still rebuild the node.

Layout: ``<data dir>/wal/*.wal`` and ``<data dir>/snap/*.snap``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from keel_store.raft.types import Entry, HardState, Snapshot

from .fs import FileSystem
from .log import DEFAULT_SEGMENT_BYTES, WriteAheadLog
from .snapshots import SnapshotStore


@dataclass(frozen=True, slots=True)
class Restart:
    """What a node restarts from: the newest valid snapshot, then the log after it."""

    snapshot: Snapshot | None
    hard_state: HardState
    entries: list[Entry]
    torn_bytes: int
    """Bytes of a torn write cut from the WAL (0: it ended cleanly)."""


class NodeStorage:
    """The durable state of one Raft node."""

    def __init__(
        self,
        fs: FileSystem,
        wal: WriteAheadLog,
        snapshots: SnapshotStore,
        keep_snapshots: int,
        max_wals: int | None = 1,
    ) -> None:
        self._fs = fs
        self.wal = wal
        """The log itself, e.g. to hand to a GroupCommitter (then use only that)."""
        self.snapshots = snapshots
        self._keep = keep_snapshots
        self._max_wals = max_wals

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        data_dir: str,
        *,
        wal_dir: str | None = None,
        keep_snapshots: int = 2,
        max_wals: int | None = 1,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        preallocate: bool = False,
    ) -> tuple[NodeStorage, Restart]:
        """Open (or create) ``data_dir`` and recover: newest valid snapshot, then the WAL.

        ``wal_dir``: the WAL's own directory (etcd's ``--wal-dir``, e.g. on a faster
        disk); default ``data_dir/wal``. Raises :class:`~keel_store.wal.CorruptionError`
        if the WAL is damaged, or if it no longer covers the gap after the newest
        snapshot that could be read.

        ``max_wals``: WAL segments left when older ones are no longer needed (etcd's
        ``--max-wals``; a segment the oldest kept snapshot does not cover always stays);
        None keeps every segment (etcd's ``--max-wals=0``).
        """
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        snapshots = SnapshotStore(fs, posixpath.join(data_dir, "snap"))
        snapshot = snapshots.load()
        wal, replay = WriteAheadLog.open(
            fs, wal_dir or posixpath.join(data_dir, "wal"),
            snapshot=snapshot.meta if snapshot else None,
            segment_bytes=segment_bytes, preallocate=preallocate,
        )  # fmt: skip
        restart = Restart(snapshot, replay.hard_state, replay.entries, replay.torn_bytes)
        return cls(fs, wal, snapshots, keep_snapshots, max_wals), restart

    def append(self, entries: Sequence[Entry] = (), hard_state: HardState | None = None) -> None:
        """Queue a Ready's entries and hard state; :meth:`sync` makes them durable (e.g. in a
        worker thread, so that proposals arriving meanwhile share the next fsync)."""
        self.wal.append(entries, hard_state)

    def sync(self) -> None:
        """One write and one fsync for everything appended; send dependent messages after."""
        self.wal.sync()

    def save(self, entries: Sequence[Entry] = (), hard_state: HardState | None = None) -> None:
        """Make ``entries`` (replacing any from their first index on) and ``hard_state``
        durable; send the messages that depend on them only after this returns."""
        self.wal.save(entries, hard_state)

    def save_snapshot(self, snapshot: Snapshot, *, written: bool = False) -> None:
        """Make ``snapshot`` durable, record it in the WAL and drop what is no longer needed.

        ``written``: its file was already written and fsynced as ``.tmp``
        (``snapshots.write_tmp``, e.g. by a forked child); only name it.
        """
        if snapshot.meta.index < self.wal.snapshot.index:
            raise ValueError(
                f"snapshot {snapshot.meta.index} is older than {self.wal.snapshot.index}"
            )
        if written:
            self.snapshots.commit_tmp(snapshot.meta)
        else:
            self.snapshots.save(snapshot)
        self.wal.save_snapshot(snapshot.meta)
        self.wal.sync()
        self.snapshots.purge(self._keep)
        # The newest ``keep`` names: older ones may still be listed while being removed.
        oldest_kept = self.snapshots.names()[-self._keep :][0]
        if self._max_wals is not None:
            self.wal.compact(int(oldest_kept.split("-", 1)[0], 16), self._max_wals)

    def close(self) -> None:
        """Sync and close the WAL; wait for old files still being removed."""
        try:
            self.wal.close()
        finally:
            self._fs.settle()
