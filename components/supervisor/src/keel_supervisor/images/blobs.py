"""Content-addressed blob storage: ``blobs/sha256/<hex>``, every write hashed and checked.

A blob is written to a private temporary file, hashed while it streams in, checked against the
digest (and size) it was announced with, flushed to disk and only then renamed into place. A
partial or corrupt download therefore never becomes visible under its digest.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from keel_supervisor.images.errors import DigestMismatch, IncompleteTransfer
from keel_supervisor.images.reference import is_digest

CHUNK = 1 << 20


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest (checked, so it is safe as a file name)."""
    if not is_digest(digest):
        raise DigestMismatch(
            f"unsupported or malformed digest {digest!r}: expected sha256:<64 hex>"
        )
    return digest.split(":", 1)[1]


class BlobStore:
    """Blobs of one image store, kept under ``root/blobs/sha256``; temporaries under ``tmp``."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root / "blobs" / "sha256"
        self.tmp = tmp
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (whether or not it is there)."""
        return self.root / digest_hex(digest)

    def has(self, digest: str) -> bool:
        """True when the blob is stored."""
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        """The whole blob (small blobs: manifests and configs)."""
        return self.path(digest).read_bytes()

    def open(self, digest: str) -> BinaryIO:
        """The blob opened for reading."""
        return self.path(digest).open("rb")

    def put_bytes(self, data: bytes, digest: str | None = None, *, source: str = "") -> str:
        """Store ``data``; when ``digest`` is given it must match. Returns the digest."""
        actual = digest_bytes(data)
        if digest is not None and digest != actual:
            raise DigestMismatch(
                f"{source or 'blob'}: content hashes to {actual}, expected {digest}; nothing stored"
            )
        if not self.has(actual):
            target = self.path(actual)
            tmp = self._tmpfile(actual)
            try:
                with tmp.open("wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return actual

    def put_stream(
        self,
        stream: IO[bytes],
        digest: str | None = None,
        size: int | None = None,
        *,
        source: str = "",
        advance: Callable[[int], object] | None = None,
    ) -> str:
        """Copy ``stream`` into the store, verifying hash (and size) before it becomes visible.

        With ``digest`` None the content is stored under whatever it hashes to (docker-archive
        layers, checked later against the config's diff_ids). ``advance`` gets each chunk's length
        (progress display). Returns the digest.
        """
        if digest is not None and self.has(digest):
            return digest
        tmp = self._tmpfile(digest_hex(digest) if digest else "new")
        hasher = hashlib.sha256()
        written = 0
        what = source or digest or "blob"
        try:
            with tmp.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                    if size is not None and written > size:
                        raise DigestMismatch(
                            f"{what}: more than the announced {size} bytes; nothing stored"
                        )
                    if advance is not None:
                        advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            actual = "sha256:" + hasher.hexdigest()
            if size is not None and written != size:
                raise IncompleteTransfer(
                    f"{what}: got {written} bytes, expected {size}; nothing stored "
                    "(interrupted transfer? try again)"
                )
            if digest is not None and actual != digest:
                raise DigestMismatch(
                    f"{what}: content hashes to {actual}, expected {digest}; "
                    "nothing stored (corrupt archive or transfer)"
                )
            os.replace(tmp, self.path(actual))
        finally:
            tmp.unlink(missing_ok=True)
        return actual

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest."""
        for entry in self.root.iterdir():
            if entry.is_file():
                yield f"sha256:{entry.name}"

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def _tmpfile(self, hint: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"blob-{hint[:16]}-{os.getpid()}-{os.urandom(4).hex()}"


def tree_size(path: Path) -> int:
    """Bytes used by the regular files under ``path`` (not following symlinks)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            total += st.st_size
    return total


def remove_tree(path: Path) -> None:
    """Remove a directory tree (read-only directories included) if it exists."""

    def make_writable(func: object, target: str, _exc: object) -> None:
        os.chmod(os.path.dirname(target), 0o700)
        if callable(func):
            func(target)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable)


_libc = ctypes.CDLL(None, use_errno=True)


def sync_filesystem(path: Path) -> None:
    """``syncfs(2)`` on the filesystem holding ``path``: make an unpacked layer durable with one
    call before it is renamed into place (an fsync per file would cost far more)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
