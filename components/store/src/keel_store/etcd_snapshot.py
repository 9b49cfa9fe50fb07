"""Client-facing snapshots in etcd's format: a bbolt file, as ``etcdctl snapshot`` expects.

``Maintenance.Snapshot`` streams the state as etcd's bbolt database
(:func:`keel_store.mvcc.etcd_db.to_buckets`, :func:`keel_store.bbolt.write_db`) followed
by its SHA-256, which ``etcdctl snapshot save`` checks and ``snapshot restore`` verifies.
:func:`status` and :func:`restore` are ``etcdctl snapshot status/restore`` for
keel-store: they read a snapshot saved from etcd or from keel-store. Keel's own Raft
snapshots between members stay in :mod:`keel_store.mvcc.snapshot`'s format.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from keel_store.bbolt import BoltError, Database, read_db
from keel_store.mvcc import snapshot as keel_snapshot
from keel_store.mvcc.etcd_db import EtcdDBError, from_database
from keel_store.mvcc.store import MemberRecord, StateMachine
from keel_store.raft import ConfState, Snapshot, SnapshotMeta
from keel_store.server.members import Cluster
from keel_store.wal import NodeStorage, OSFileSystem

SHA_SIZE = 32


class SnapshotFileError(ValueError):
    """A snapshot file that cannot be used; the message names the file and the fault."""


def has_checksum(size: int) -> bool:
    """etcdctl's test for an appended SHA-256 (``n % 512 == sha256.Size``)."""
    return size % 512 == SHA_SIZE


def load(path: Path, *, skip_hash_check: bool = False) -> tuple[Database, int]:
    """Read and check a snapshot file: (database, bytes of the database proper).

    Refused with :class:`SnapshotFileError`: a missing or wrong SHA-256 (unless
    ``skip_hash_check``, for a ``member/snap/db`` copied from a data directory), a file
    that is not bbolt, truncated or damaged pages, or buckets not in etcd's layout.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotFileError(f"{path}: {exc.strerror or exc}") from None
    size = len(data)
    if has_checksum(size):
        db, digest = data[: size - SHA_SIZE], data[size - SHA_SIZE :]
        if not skip_hash_check and hashlib.sha256(db).digest() != digest:
            raise SnapshotFileError(
                f"{path}: sha256 mismatch: the file ends with {digest.hex()}, "
                f"its first {len(db)} bytes hash to {hashlib.sha256(db).hexdigest()} "
                "(damaged or truncated)"
            )
    else:
        db = data
        if not skip_hash_check:
            raise SnapshotFileError(
                f"{path}: no sha256 at the end ({size} bytes is not 32 mod 512): truncated, "
                "or a db copied from a data directory (then use --skip-hash-check)"
            )
    try:
        database = read_db(db)
    except BoltError as exc:
        raise SnapshotFileError(f"{path}: {exc}") from None
    if database.problems:
        raise SnapshotFileError(
            f"{path}: integrity check failed, {len(database.problems)} errors: "
            + "; ".join(database.problems[:10])
        )
    return database, len(db)


@dataclass(frozen=True, slots=True)
class Status:
    """``etcdctl snapshot status``: hash, revision, total keys, total size."""

    hash: int
    revision: int
    total_key: int
    total_size: int

    def to_json(self) -> dict[str, int]:
        return {
            "hash": self.hash,
            "revision": self.revision,
            "totalKey": self.total_key,
            "totalSize": self.total_size,
        }


def database_status(db: Database) -> Status:
    """Computed as etcdctl's ``Status``: CRC-32C over every bucket name and key/value,
    the main revision of the last row of ``key``, keys in every bucket, pages in use."""
    crc = 0
    total = revision = 0
    for name, bucket in sorted(db.root.buckets.items()):
        crc = google_crc32c.extend(crc, name)
        for key, value in bucket.entries():
            crc = google_crc32c.extend(crc, key)
            if isinstance(value, bytes):
                crc = google_crc32c.extend(crc, value)
            if name == b"key":
                revision = int.from_bytes(key[:8], "big")
            total += 1
    return Status(crc, revision, total, db.size)


def status(path: Path) -> Status:
    """Status of the snapshot file ``path`` (checked as :func:`load` checks)."""
    database, _ = load(path, skip_hash_check=not has_checksum(_size(path)))
    return database_status(database)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SnapshotFileError(f"{path}: {exc.strerror or exc}") from None


def state_machine(path: Path, *, skip_hash_check: bool = False) -> StateMachine:
    """The state held in an etcd (or keel-store) snapshot file."""
    database, _ = load(path, skip_hash_check=skip_hash_check)
    try:
        return from_database(database)
    except EtcdDBError as exc:
        raise SnapshotFileError(f"{path}: {exc}") from None


def restore(
    path: Path,
    data_dir: Path,
    name: str,
    cluster: Cluster,
    *,
    skip_hash_check: bool = False,
    wal_dir: Path | None = None,
) -> StateMachine:
    """A new keel-store data directory for member ``name`` of ``cluster`` from ``path``.

    As ``etcdctl snapshot restore``: the keys, leases, auth and alarms come from the
    snapshot, the members from the new cluster; the data directory (and ``wal_dir``,
    the WAL's own directory as ``--wal-dir`` gives it) must not exist. Each is built
    beside its target and renamed into place, so on any error nothing is left.
    """
    if data_dir.exists():
        raise SnapshotFileError(f"data-dir {str(data_dir)!r} exists")
    if wal_dir is not None and wal_dir.exists():
        raise SnapshotFileError(f"wal-dir {str(wal_dir)!r} exists")
    sm = state_machine(path, skip_hash_check=skip_hash_check)
    for m in cluster.members.values():
        sm.members[m.id] = MemberRecord(m.id, m.name, list(m.peer_urls), m.is_learner)
    conf = ConfState(voters=tuple(sorted(cluster.voter_ids())))
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
    tmp_wal = None
    if wal_dir is not None:
        wal_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_wal = Path(tempfile.mkdtemp(prefix=f".{wal_dir.name}.restore-", dir=wal_dir.parent))
    try:
        storage, _ = NodeStorage.open(
            OSFileSystem(),
            str(tmp / "member"),
            wal_dir=None if tmp_wal is None else str(tmp_wal),
        )
        storage.save_snapshot(Snapshot(SnapshotMeta(0, 0, conf), keel_snapshot.save(sm)))
        storage.close()
        if tmp_wal is not None and wal_dir is not None:
            os.rename(tmp_wal, wal_dir)
        os.rename(tmp, data_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_wal is not None and wal_dir is not None:
            shutil.rmtree(tmp_wal, ignore_errors=True)
            if not data_dir.exists():
                shutil.rmtree(wal_dir, ignore_errors=True)
        raise
    return sm
