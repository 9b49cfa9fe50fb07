"""The write-ahead log: segment files of checksummed records, group commit, recovery.

Order of durability is explicit in the API. ``append`` and ``save_snapshot`` only queue
records; ``sync`` writes everything queued with one write and one fsync. A Raft node
appends its entries and hard state, calls ``sync``, and only then sends the messages
and replies that depend on them (a vote, an acknowledgement). :class:`GroupCommitter`
does this for many concurrent callers under one fsync.

Files in the directory are ``<sequence>-<first index>.wal`` (16 hex digits each). Each
segment opens with a SEGMENT record, the hard state and the latest snapshot marker, so
segments before a snapshot can be deleted without losing them. When a segment outgrows
``segment_bytes`` it is synced and a new one is made (tmp file, sync, rename, directory
sync), so only the last segment can ever end in a torn write.

Recovery (:meth:`WriteAheadLog.open`) reads every segment. A bad record in the last
segment with no valid record after it is a torn write from a crash: the tail is cut. Any
other bad record is corruption of data that was durable: :class:`CorruptionError` names
the file and offset and nothing is changed.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from keel_store.raft.types import Entry, HardState, SnapshotMeta

from . import records as rec
from .fs import File, FileSystem
from .replay import CorruptionError, Segment, WALError, read_wal, segment_name

__all__ = ["CorruptionError", "Replay", "WALError", "WriteAheadLog", "segment_name"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_FLUSH_BYTES = 4 * 1024 * 1024
"""Queued records past this size are written out (not synced) to bound memory."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What recovery found: the state to restart the Raft node from."""

    hard_state: HardState
    entries: list[Entry]
    """The log after ``snapshot.index``, contiguous."""
    snapshot: SnapshotMeta
    """The snapshot the log continues (the one given to ``open``, or index 0)."""
    torn_bytes: int
    """How many bytes a torn write left after the last good record of the last segment
    (zero fill not counted); they were cut. 0: the log ended cleanly."""


class WriteAheadLog:
    """A log of entries, hard states and snapshot markers in a directory of segments.

    Not thread-safe: one owner calls it (for concurrent callers see GroupCommitter).
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        segments: list[Segment],
        file: File,
        offset: int,
        replayed: tuple[int, HardState, SnapshotMeta],
        segment_bytes: int,
        preallocate: bool,
    ) -> None:
        self._fs = fs
        self._dir = directory
        self._segments = segments
        self._file = file
        self._offset = offset
        self._last_index, self._hard_state, self._snapshot = replayed
        self._synced_snapshot = self._snapshot
        self._segment_bytes = segment_bytes
        self._preallocate = preallocate
        self._queue: list[bytes] = []
        self._queued = 0
        self._unsynced = False
        self._failed: BaseException | None = None
        self.syncs = 0
        """fsyncs made by ``sync`` (for group-commit statistics)."""

    # ----------------------------------------------------------------- recovery

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        directory: str,
        *,
        snapshot: SnapshotMeta | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        preallocate: bool = False,
    ) -> tuple[WriteAheadLog, Replay]:
        """Open (creating if empty) the log in ``directory`` and replay it.

        ``snapshot`` is the newest snapshot loaded from its file; the replayed log
        continues it. Cuts a torn tail; raises :class:`CorruptionError` for damage
        anywhere else, before changing any file.
        """
        fs.makedirs(directory)
        base = snapshot or SnapshotMeta()
        found = read_wal(fs, directory, base)
        for name in found.stale:
            fs.remove(posixpath.join(directory, name))
        if not found.segments:
            first = Segment(0, base.index + 1, segment_name(0, base.index + 1))
            file, end = _create_segment(
                fs, directory, first, hard_state=HardState(), snapshot=base,
                segment_bytes=segment_bytes, preallocate=False,
            )  # fmt: skip
            if preallocate:
                file.allocate(segment_bytes, free_from=end)
            wal = cls(
                fs, directory, segments=[first], file=file, offset=end,
                replayed=(base.index, HardState(), base),
                segment_bytes=segment_bytes, preallocate=preallocate,
            )  # fmt: skip
            return wal, Replay(HardState(), [], base, 0)
        path = posixpath.join(directory, found.segments[-1].name)
        file = fs.open(path, create=False)
        if found.torn_bytes:
            log.warning("cutting a torn tail", extra={"path": path, "offset": found.end})
            file.truncate(found.end)
            file.sync()
        if preallocate:
            file.allocate(segment_bytes, free_from=found.end)
        if found.stale:
            fs.fsync_dir(directory)
        replay = found.replayer
        replayed = (replay.last_index, replay.hard_state, replay.latest_snapshot)
        wal = cls(
            fs, directory, segments=found.segments, file=file, offset=found.end,
            replayed=replayed, segment_bytes=segment_bytes, preallocate=preallocate,
        )  # fmt: skip
        return wal, Replay(replay.hard_state, replay.entries(), base, found.torn_bytes)

    # ------------------------------------------------------------------ writing

    @property
    def last_index(self) -> int:
        """Index of the last entry appended (durable or not)."""
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        """The last hard state appended."""
        return self._hard_state

    @property
    def snapshot(self) -> SnapshotMeta:
        """The latest snapshot marker appended (durable or not)."""
        return self._snapshot

    @property
    def segments(self) -> list[str]:
        """Names of the segment files, oldest first."""
        return [s.name for s in self._segments]

    @property
    def tail(self) -> tuple[str, int]:
        """The last segment's path and where its records end (appended ones included):
        what follows is zero fill, preallocated or not yet written."""
        return self._path(self._segments[-1]), self._offset + self._queued

    def append(self, entries: Sequence[Entry] = (), hard_state: HardState | None = None) -> None:
        """Queue ``entries`` (which replace any entries from their first index on) and
        ``hard_state``. Nothing is durable until :meth:`sync` returns."""
        self._check()
        last = self._last_index
        if entries:
            first = entries[0].index
            for prev, entry in itertools.pairwise(entries):
                if entry.index != prev.index + 1:
                    raise ValueError(f"entry {entry.index} follows entry {prev.index}")
            if first > last + 1:
                raise ValueError(f"entry {first} would leave a gap after {last}")
            if first <= self._hard_state.commit:
                raise ValueError(
                    f"entry {first} would overwrite committed entries (commit "
                    f"{self._hard_state.commit})"
                )
            if first <= self._snapshot.index:
                raise ValueError(f"entry {first} is inside snapshot {self._snapshot.index}")
            last = entries[-1].index
        if hard_state is not None and hard_state.commit > last:
            raise ValueError(f"commit {hard_state.commit} is past the last entry {last}")
        for entry in entries:
            if self._offset + self._queued > self._segment_bytes:
                self._cut()
            self._enqueue(rec.encode_entry(entry))
            self._segments[-1].saw(entry.index)
            self._last_index = entry.index
        if hard_state is not None and hard_state != self._hard_state:
            self._enqueue(rec.encode_hard_state(hard_state))
            self._hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta) -> None:
        """Queue a marker that a snapshot up to ``meta.index`` was saved (save the
        snapshot file first); once synced, :meth:`compact` may drop what it covers."""
        self._check()
        if meta.index < self._snapshot.index:
            raise ValueError(f"snapshot {meta.index} is older than {self._snapshot.index}")
        self._enqueue(rec.encode_snapshot_meta(meta))
        self._snapshot = meta
        # A snapshot past the log (installed from a leader) replaces the log.
        self._last_index = max(self._last_index, meta.index)

    def sync(self) -> None:
        """Write everything queued and fsync once; after it returns, all of it survives
        a crash. If the disk fails the log refuses further use (its pages may be lost)."""
        self._check()
        # Nothing written since the last sync but what is queued: one durable write.
        durable = bool(self._queue) and not self._unsynced
        self._flush(durable=durable)
        if durable:
            self.syncs += 1
        elif self._unsynced:
            try:
                self._file.sync()
            except OSError as exc:
                self._fail("sync", exc)
            self.syncs += 1
            self._unsynced = False
        self._synced_snapshot = self._snapshot

    def save(self, entries: Sequence[Entry] = (), hard_state: HardState | None = None) -> None:
        """``append`` then ``sync``: durable when it returns."""
        self.append(entries, hard_state)
        self.sync()

    def compact(self, index: int, keep: int = 1) -> int:
        """Delete segments that hold only entries up to ``index``, which a synced snapshot
        marker must cover (the files go in the background: ``FileSystem.discard``), the
        oldest first, while more than ``keep`` segments are left (etcd's ``--max-wals``).
        Returns how many segments were dropped."""
        self._check()
        if index > self._synced_snapshot.index:
            raise ValueError(
                f"compact({index}) is past the last synced snapshot {self._synced_snapshot.index}"
            )
        # Dropping segments 0..k is safe when replaying the rest from the snapshot gives
        # the same log: the first entry written after them must not leave a gap past it.
        removable = 0
        for k in range(1, len(self._segments)):
            rest = (s.first_written for s in self._segments[k:] if s.first_written is not None)
            first = next(rest, None)
            if (self._last_index if first is None else first - 1) <= index:
                removable = k
        removable = min(removable, max(0, len(self._segments) - keep))
        if removable:
            self._fs.discard(self._dir, [s.name for s in self._segments[:removable]])
            del self._segments[:removable]
        return removable

    def close(self) -> None:
        """Sync what is queued (if the log is healthy) and release the file."""
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._file.close()
            self._failed = self._failed or WALError("the WAL is closed")

    # ---------------------------------------------------------------- internals

    def _check(self) -> None:
        if self._failed is not None:
            raise WALError(f"the WAL in {self._dir} is unusable: {self._failed}")

    def _path(self, segment: Segment) -> str:
        return posixpath.join(self._dir, segment.name)

    def _enqueue(self, record: bytes) -> None:
        self._queue.append(record)
        self._queued += len(record)
        if self._queued >= _FLUSH_BYTES:
            self._flush()

    def _flush(self, *, durable: bool = False) -> None:
        if self._queue:
            data = b"".join(self._queue)
            self._queue.clear()
            self._queued = 0
            try:
                if durable:
                    self._file.write_sync(self._offset, data)
                else:
                    self._file.write(self._offset, data)
            except OSError as exc:
                self._fail("write and sync" if durable else "write", exc)
            self._offset += len(data)
            self._unsynced = self._unsynced or not durable

    def _fail(self, what: str, exc: OSError) -> NoReturn:
        # After a failed write or fsync the kernel may have dropped the dirty pages and
        # a retried fsync can "succeed" without them: refuse to go on (reopen instead).
        self._failed = exc
        raise WALError(f"{self._path(self._segments[-1])}: {what} failed: {exc}") from exc

    def _cut(self) -> None:
        """Finish the last segment (durably) and start the next one."""
        self.sync()
        old = self._segments[-1]
        sequence, first = old.sequence + 1, self._last_index + 1
        new = Segment(sequence, first, segment_name(sequence, first))
        try:
            file, self._offset = _create_segment(
                self._fs, self._dir, new, hard_state=self._hard_state, snapshot=self._snapshot,
                segment_bytes=self._segment_bytes, preallocate=self._preallocate,
            )  # fmt: skip
        except OSError as exc:
            # The new file may exist; writing on in the old one would put records before
            # its (older) opening records in replay order. Stop; reopening sorts it out.
            self._fail("creating the next segment", exc)
        self._file.close()
        self._file = file
        self._segments.append(new)


def _create_segment(
    fs: FileSystem,
    directory: str,
    segment: Segment,
    *,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    segment_bytes: int,
    preallocate: bool,
) -> tuple[File, int]:
    """Make a segment atomically (tmp, sync, rename, dir sync) with its opening records;
    returns the open file and the offset after those records."""
    header = (
        rec.encode_segment(segment.sequence, segment.first_index)
        + rec.encode_hard_state(hard_state)
        + rec.encode_snapshot_meta(snapshot)
    )
    path = posixpath.join(directory, segment.name)
    tmp = path + ".tmp"
    file = fs.open(tmp, create=True)
    file.truncate(0)
    if preallocate:
        file.allocate(segment_bytes, free_from=0)
    file.write(0, header)
    file.sync()
    fs.rename(tmp, path)
    fs.fsync_dir(directory)
    return file, len(header)
