"""A member's durable Raft state: an append-only, checksummed log file plus snapshots.

This is the store's own minimal persistence, used until part 1's WAL
(:mod:`keel_store.wal`) is available on this branch; it keeps the same contract: a
``Ready``'s entries and hard state reach disk with one fsync before its messages go
out. Layout under ``<data-dir>/member``:

* ``wal/log``: records ``u32 length, u32 crc32, u8 kind, payload``; kinds are an entry
  (``term, index, type, data``) or a hard state (``term, vote, commit``). A torn tail
  (short or bad-checksum last record, from a crash mid-write) is cut off at open.
* ``snap/latest.snap``: ``SnapshotMeta`` as JSON, a newline, then the state machine.

After a snapshot the log is rewritten without the entries it covers (write a new file,
fsync, rename), so the directory stays small.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from keel_store.raft import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

_HEAD = struct.Struct(">IIB")
_ENTRY = struct.Struct(">QQB")
_HARD = struct.Struct(">QQQ")
KIND_ENTRY = 1
KIND_HARD = 2


class CorruptLogError(Exception):
    """A record in the middle of the log is damaged (not a torn tail): refuse to start."""


@dataclass
class Recovered:
    """What a member finds on disk at start."""

    snapshot: Snapshot | None = None
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_entry(entry: Entry) -> bytes:
    return _ENTRY.pack(entry.term, entry.index, entry.type) + entry.data


def _record(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload) ^ kind, kind) + payload


class DiskLog:
    """The log file and snapshot of one member's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.wal_dir = data_dir / "member" / "wal"
        self.snap_dir = data_dir / "member" / "snap"
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.snap_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.wal_dir / "log"
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the member's life
        self.bytes_written = self.path.stat().st_size

    @property
    def exists(self) -> bool:
        """Whether this data directory already holds a member's state."""
        return self.bytes_written > 0 or (self.snap_dir / "latest.snap").exists()

    def close(self) -> None:
        self._file.close()

    # --- reading ----------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read the snapshot and replay the log; cut a torn tail."""
        out = Recovered()
        snap = self.snap_dir / "latest.snap"
        if snap.exists():
            raw = snap.read_bytes()
            newline = raw.index(b"\n")
            meta = json.loads(raw[:newline])
            conf = ConfState(voters=tuple(meta["voters"]), learners=tuple(meta["learners"]))
            out.snapshot = Snapshot(
                SnapshotMeta(index=meta["index"], term=meta["term"], conf=conf),
                raw[newline + 1 :],
            )
        data = self.path.read_bytes()
        pos = 0
        entries: list[Entry] = []
        while pos < len(data):
            if pos + _HEAD.size > len(data):
                break
            length, crc, kind = _HEAD.unpack_from(data, pos)
            payload = data[pos + _HEAD.size : pos + _HEAD.size + length]
            if len(payload) < length or zlib.crc32(payload) ^ kind != crc:
                if pos + _HEAD.size + length < len(data):
                    raise CorruptLogError(f"{self.path}: bad record at byte {pos}")
                break
            pos += _HEAD.size + length
            if kind == KIND_ENTRY:
                term, index, etype = _ENTRY.unpack_from(payload)
                entry = Entry(term, index, EntryType(etype), payload[_ENTRY.size :])
                if entries and index <= entries[-1].index:
                    del entries[index - entries[0].index :]
                entries.append(entry)
            elif kind == KIND_HARD:
                out.hard_state = HardState(*_HARD.unpack(payload))
        if pos < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
            self.bytes_written = pos
        floor = out.snapshot.meta.index if out.snapshot else 0
        out.entries = [e for e in entries if e.index > floor]
        if out.entries and out.entries[0].index != floor + 1:
            raise CorruptLogError(
                f"{self.path}: log starts at {out.entries[0].index}, snapshot ends at {floor}"
            )
        return out

    # --- writing ----------------------------------------------------------------------

    def append(self, entries: list[Entry], hard_state: HardState | None) -> None:
        """Write entries and hard state (buffered); :meth:`sync` makes them durable."""
        buf = bytearray()
        for entry in entries:
            buf += _record(KIND_ENTRY, _encode_entry(entry))
        if hard_state is not None:
            buf += _record(
                KIND_HARD, _HARD.pack(hard_state.term, hard_state.vote, hard_state.commit)
            )
        if buf:
            self._file.write(buf)
            self.bytes_written += len(buf)

    def sync(self) -> None:
        """Flush and fdatasync the log file."""
        self._file.flush()
        os.fdatasync(self._file.fileno())

    def save_snapshot(self, snapshot: Snapshot, keep: list[Entry], hard_state: HardState) -> None:
        """Write ``snapshot`` durably, then rewrite the log with only ``keep`` entries."""
        meta = snapshot.meta
        head = {
            "index": meta.index,
            "term": meta.term,
            "voters": list(meta.conf.voters),
            "learners": list(meta.conf.learners),
        }
        tmp = self.snap_dir / "latest.snap.tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps(head).encode() + b"\n" + snapshot.data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.snap_dir / "latest.snap")
        _fsync_dir(self.snap_dir)
        new = self.wal_dir / "log.tmp"
        with open(new, "wb") as f:
            for entry in keep:
                f.write(_record(KIND_ENTRY, _encode_entry(entry)))
            f.write(
                _record(KIND_HARD, _HARD.pack(hard_state.term, hard_state.vote, hard_state.commit))
            )
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        new.replace(self.path)
        _fsync_dir(self.wal_dir)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self.bytes_written = self.path.stat().st_size
