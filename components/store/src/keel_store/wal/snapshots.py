"""Snapshot files: one checksummed file per snapshot, written atomically.

A file ``<index>-<term>.snap`` (16 hex digits each, so names sort by index) holds::

    8 bytes  magic b"KEELSNP1"
    record   a SNAPSHOT record (see records.py): the SnapshotMeta, checksummed
    u64      length of the state-machine data
    u32      crc32 of the data
    ...      the data

It is written to ``<name>.tmp``, synced, renamed and the directory synced, so a crash
leaves either the whole file or none. Loading takes the newest file that checks out; a
damaged one is renamed to ``<name>.broken`` (kept for inspection, never deleted) and the
next older one is tried.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import re
import struct
import zlib
from collections.abc import Iterable

from keel_store.raft.types import Snapshot, SnapshotMeta

from . import records as rec
from .fs import FileSystem

log = logging.getLogger(__name__)

MAGIC = b"KEELSNP1"
_DATA = struct.Struct("<QI")
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


class SnapshotError(ValueError):
    """A snapshot file is damaged; the message names the file and what is wrong."""


def snapshot_name(index: int, term: int) -> str:
    """The file name of the snapshot at ``index`` of ``term``."""
    return f"{index:016x}-{term:016x}.snap"


def encode(snapshot: Snapshot) -> bytes:
    """The content of a snapshot file (:meth:`SnapshotStore.write_tmp_chunks` writes
    the same without holding it whole)."""
    data = snapshot.data
    return _file_head(snapshot.meta, len(data), zlib.crc32(data)) + data


def _file_head(meta: SnapshotMeta, length: int, crc: int) -> bytes:
    """What precedes the data in a snapshot file (its length does not depend on the
    data)."""
    return MAGIC + rec.encode_snapshot_meta(meta) + _DATA.pack(length, crc)


def decode(content: bytes, path: str = "<snapshot>") -> Snapshot:
    """Parse and verify a snapshot file's content; :class:`SnapshotError` if damaged."""
    meta, at, crc = _decode_head(content, len(content), path)
    data = content[at:]
    _check_data(data, crc, at, path)
    return Snapshot(meta, data)


_HEAD_READ = 64 << 10
"""Bytes read first to find the data of a snapshot file: the magic, the metadata record
(its conf state: a few IDs) and the data's length and checksum."""


def _decode_head(head: bytes, size: int, path: str) -> tuple[SnapshotMeta, int, int]:
    """From the first bytes of a file of ``size`` bytes: its metadata, where the data
    starts (checked to run to the end of the file) and the data's checksum."""
    if head[: len(MAGIC)] != MAGIC:
        raise SnapshotError(f"{path}: offset 0: not a Keel snapshot (bad magic)")
    found = rec.read_record(head, len(MAGIC))
    if isinstance(found, str) or found.kind is not rec.RecordKind.SNAPSHOT:
        reason = found if isinstance(found, str) else f"a {found.kind.name} record"
        raise SnapshotError(f"{path}: offset {len(MAGIC)}: metadata: {reason}")
    try:
        meta = rec.unpack_snapshot_meta(found.payload)
    except (struct.error, ValueError) as exc:
        raise SnapshotError(f"{path}: offset {len(MAGIC)}: metadata: {exc}") from exc
    at = len(MAGIC) + len(rec.encode_snapshot_meta(meta))
    if at + _DATA.size > len(head):
        raise SnapshotError(f"{path}: offset {at}: data header cut short")
    length, crc = _DATA.unpack_from(head, at)
    at += _DATA.size
    if at + length != size:
        raise SnapshotError(
            f"{path}: offset {at}: data should be {length} bytes, file has {size - at}"
        )
    return meta, at, crc


def _head_size(head: bytes) -> int:
    """How many bytes precede the data, as far as the first bytes of a file tell (its
    metadata record's length field; 0 if even that is cut short)."""
    if len(head) < len(MAGIC) + rec.HEADER.size:
        return 0
    length: int = rec.HEADER.unpack_from(head, len(MAGIC))[0]
    record = rec.HEADER.size + length
    return len(MAGIC) + record + -record % rec.ALIGN + _DATA.size  # records are padded


def _check_data(data: bytes, crc: int, at: int, path: str) -> None:
    if zlib.crc32(data) != crc:
        raise SnapshotError(f"{path}: offset {at}: data checksum mismatch")


class SnapshotStore:
    """The snapshot files of one node, in one directory."""

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self._fs = fs
        self._dir = directory
        fs.makedirs(directory)

    def save(self, snapshot: Snapshot) -> str:
        """Write ``snapshot`` durably; returns its path. Record it in the WAL afterwards
        (``save_snapshot``), so the WAL never points at a snapshot that is not there."""
        self.write_tmp(snapshot)
        return self.commit_tmp(snapshot.meta)

    def write_tmp(self, snapshot: Snapshot) -> None:
        """The slow half of :meth:`save`: the file's bytes, fsynced, under a ``.tmp`` name
        (a forked child does it with :meth:`write_tmp_chunks` while the member serves on)."""
        self.write_tmp_chunks(snapshot.meta, [snapshot.data])

    def write_tmp_chunks(self, meta: SnapshotMeta, chunks: Iterable[bytes]) -> None:
        """:meth:`write_tmp` of the snapshot whose data is ``chunks`` joined, written as
        they come (the data's length and checksum, which precede it, last): the data is
        never held whole. The file is the same as :func:`encode` gives."""
        tmp = self._path(meta) + ".tmp"
        at = len(_file_head(meta, 0, 0))
        size = crc = 0
        file = self._fs.open(tmp, create=True)
        try:
            file.truncate(0)
            for chunk in chunks:
                file.write(at + size, chunk)
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
            file.write(0, _file_head(meta, size, crc))
            file.sync()
        finally:
            file.close()

    def commit_tmp(self, meta: SnapshotMeta) -> str:
        """The other half: give the written ``.tmp`` file its name, durably."""
        path = self._path(meta)
        self._fs.rename(path + ".tmp", path)
        self._fs.fsync_dir(self._dir)
        return path

    def _path(self, meta: SnapshotMeta) -> str:
        return posixpath.join(self._dir, snapshot_name(meta.index, meta.term))

    def set_aside(self, meta: SnapshotMeta) -> None:
        """Rename ``meta``'s file to ``.broken`` (found damaged; kept for inspection, as
        :meth:`load` does), durably; nothing if there is no such file."""
        with contextlib.suppress(FileNotFoundError):
            self._set_aside(self._path(meta))

    def _set_aside(self, path: str) -> None:
        self._fs.rename(path, path + ".broken")
        self._fs.fsync_dir(self._dir)

    def read(self, meta: SnapshotMeta) -> Snapshot:
        """The snapshot saved for ``meta``, verified (:class:`SnapshotError` if damaged,
        OSError if gone)."""
        return self._read(self._path(meta))

    def _read(self, path: str) -> Snapshot:
        """The file at ``path``, verified. Its data is read into its own buffer, not cut
        out of the whole file's (a copy of the snapshot: 0.17 s and 300 MB more for a
        300 MB snapshot, on every restart and every snapshot a leader sends)."""
        size = self._fs.size(path)
        head = self._fs.read(path, 0, min(size, _HEAD_READ))
        need = _head_size(head)
        if need > len(head):  # metadata past the first read (or a damaged length)
            head = self._fs.read(path, 0, min(need, size))
        meta, at, crc = _decode_head(head, size, path)
        data = self._fs.read(path, at, size - at)
        if len(data) != size - at:  # the file changed under us
            raise SnapshotError(f"{path}: offset {at}: data cut short while read")
        _check_data(data, crc, at, path)
        return Snapshot(meta, data)

    def names(self) -> list[str]:
        """Snapshot file names, oldest first."""
        return [n for n in self._fs.list(self._dir) if _NAME.match(n)]

    def load(self) -> Snapshot | None:
        """The newest snapshot that verifies, or None. Damaged files become ``.broken``."""
        for name in reversed(self.names()):
            path = posixpath.join(self._dir, name)
            try:
                return self._read(path)
            except SnapshotError as exc:
                log.warning("skipping a damaged snapshot", extra={"error": str(exc)})
                self._set_aside(path)
        return None

    def purge(self, keep: int = 2) -> list[str]:
        """Remove all but the ``keep`` newest snapshots and leftover tmp files, in the
        background (``FileSystem.discard``: :meth:`names` may list them a while longer)."""
        if keep < 1:
            raise ValueError("keep at least one snapshot")
        names = self.names()
        doomed = names[:-keep] + [n for n in self._fs.list(self._dir) if n.endswith(".snap.tmp")]
        self._fs.discard(self._dir, doomed)
        return doomed
