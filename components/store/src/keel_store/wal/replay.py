"""Rebuilding the log, hard state and snapshot marker from the records of the segments."""

from __future__ import annotations

import itertools
import logging
import posixpath
import re
import struct
from dataclasses import dataclass, field

from keel_store.raft.types import Entry, HardState, SnapshotMeta

from . import records as rec
from .fs import FileSystem

log = logging.getLogger(__name__)

_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


def segment_name(sequence: int, first_index: int) -> str:
    """The file name of a segment."""
    return f"{sequence:016x}-{first_index:016x}.wal"


class WALError(Exception):
    """The log cannot be used: a failed fsync, a misuse, or damaged data."""


class CorruptionError(WALError):
    """Durable data is damaged; the message names the file and byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass
class Segment:
    """One segment file and the range of entry indices written into it."""

    sequence: int
    first_index: int
    """The next index expected when the segment was made (entries overwriting older
    ones may still have lower indices)."""
    name: str
    first_written: int | None = None
    """Index of the first entry record in the file (None: no entries yet)."""

    def saw(self, index: int) -> None:
        """Note that an entry with ``index`` was written into this segment."""
        if self.first_written is None:
            self.first_written = index


class Replayer:
    """Feeds the records of each segment, in order, into the state they describe.

    An ENTRY at index i replaces the log from i on (how an overwrite by a new leader is
    recorded). A SNAPSHOT marker past the last entry means the log was replaced by that
    snapshot. The result is the log after the snapshot the node restarts from.
    """

    def __init__(self, base: SnapshotMeta, last_index: int) -> None:
        self.base = base
        self.hard_state = HardState()
        self.latest_snapshot = base
        self._last_index = last_index
        self._log: list[Entry] = []
        self._term_at_base: int | None = None

    def segment(self, path: str, segment: Segment, records: list[rec.Record]) -> None:
        """Apply one segment's records (already checksum-verified)."""
        if not records or records[0].kind is not rec.RecordKind.SEGMENT:
            raise CorruptionError(path, 0, "the file does not start with a SEGMENT record")
        found = rec.unpack_segment(records[0].payload)
        if found != (segment.sequence, segment.first_index):
            raise CorruptionError(
                path, 0, f"the SEGMENT record says {found}, the file name says "
                f"{(segment.sequence, segment.first_index)}",
            )  # fmt: skip
        for record in records[1:]:
            try:
                self._record(path, segment, record)
            except (struct.error, ValueError) as exc:
                raise CorruptionError(
                    path, record.offset, f"unreadable {record.kind.name} record: {exc}"
                ) from exc

    def _record(self, path: str, segment: Segment, record: rec.Record) -> None:
        kind = record.kind
        if kind is rec.RecordKind.ENTRY:
            entry = rec.unpack_entry(record.payload)
            self._entry(path, record.offset, entry)
            segment.saw(entry.index)
        elif kind is rec.RecordKind.HARD_STATE:
            self.hard_state = rec.unpack_hard_state(record.payload)
        elif kind is rec.RecordKind.SNAPSHOT:
            meta = rec.unpack_snapshot_meta(record.payload)
            if meta.index >= self.latest_snapshot.index:
                self.latest_snapshot = meta
            if meta.index > self._last_index:
                self._last_index = meta.index  # the log was replaced by this snapshot
                if meta.index >= self.base.index:
                    self._log.clear()
            if (meta.index, meta.term) == (self.base.index, self.base.term):
                if self._term_at_base not in (None, meta.term):
                    # Installed over a log that disagreed with it: that log is gone.
                    self._log.clear()
                    self._last_index = meta.index
                self._term_at_base = meta.term
        else:
            raise CorruptionError(path, record.offset, "a second SEGMENT record")

    def _entry(self, path: str, offset: int, entry: Entry) -> None:
        if entry.index > self._last_index + 1:
            raise CorruptionError(
                path, offset, f"entry {entry.index} leaves a gap after entry {self._last_index}"
            )
        self._last_index = entry.index
        base = self.base.index
        if entry.index <= base:
            self._log.clear()
            self._term_at_base = entry.term if entry.index == base else None
            return
        position = entry.index - base - 1
        if position > len(self._log):
            raise CorruptionError(
                path, offset,
                f"entries {base + 1}..{entry.index - 1} after snapshot {base} are not in the "
                "WAL (compacted away, or covered by a newer snapshot whose file is missing)",
            )  # fmt: skip
        del self._log[position:]
        self._log.append(entry)

    def entries(self) -> list[Entry]:
        """The log after the base snapshot.

        If the WAL holds the entry at the snapshot's index with another term, what follows
        it came after a different history than the snapshot's and is dropped.
        """
        if self._term_at_base is not None and self._term_at_base != self.base.term:
            log.warning(
                "dropping entries that do not follow the snapshot",
                extra={"snapshot": self.base.index, "dropped": len(self._log)},
            )
            return []
        return list(self._log)

    @property
    def last_index(self) -> int:
        """The index of the last entry of the replayed log (snapshot included)."""
        return self.base.index + len(self.entries())


@dataclass
class Recovery:
    """What reading a WAL directory found, before anything is changed."""

    replayer: Replayer
    segments: list[Segment] = field(default_factory=list)
    end: int = 0
    """Offset just after the last good record of the last segment."""
    torn_bytes: int = 0
    """Bytes a torn write left after ``end`` (zero fill not counted); 0: a clean end."""
    stale: list[str] = field(default_factory=list)
    """Leftover ``.wal.tmp`` files of a segment creation that a crash interrupted."""


def read_wal(fs: FileSystem, directory: str, base: SnapshotMeta) -> Recovery:
    """Read and verify every segment in ``directory`` without changing anything.

    Raises :class:`CorruptionError` for damage that is not a torn tail of the last segment.
    """
    names = fs.list(directory)
    found = Recovery(Replayer(base, base.index))
    found.stale = [n for n in names if n.endswith(".wal.tmp")]
    for name in names:
        match = _NAME.match(name)
        if match:
            found.segments.append(Segment(int(match[1], 16), int(match[2], 16), name))
    if not found.segments:
        return found
    for before, after in itertools.pairwise(found.segments):
        if after.sequence != before.sequence + 1:
            raise CorruptionError(
                posixpath.join(directory, after.name), 0,
                f"segment {before.sequence + 1} is missing before this one",
            )  # fmt: skip
    found.replayer = Replayer(base, found.segments[0].first_index - 1)
    data = b""
    torn = False
    for position, segment in enumerate(found.segments):
        path = posixpath.join(directory, segment.name)
        data = fs.read(path)
        scan = rec.scan(data)
        if scan.problem is not None:
            follower = next(rec.records_after(data, scan.end), None)
            if position != len(found.segments) - 1 or follower is not None:
                tail = f"; a valid record follows at offset {follower.offset}" if follower else ""
                raise CorruptionError(path, scan.end, f"{scan.problem}{tail}")
            torn = True
        found.replayer.segment(path, segment, scan.records)
        found.end = scan.end
    if torn:
        found.torn_bytes = max(1, len(data.rstrip(b"\x00")) - found.end)
    return found
