"""Unpack one layer tar into its own directory, in the form overlayfs expects for a lowerdir.

Each layer of an image is unpacked once, keyed by its diff_id, into a directory of its own; the
container's root filesystem is the overlay of those directories. So the OCI whiteouts of a layer
become what overlayfs understands:

* ``dir/.wh.name``   -> a character device 0/0 at ``dir/name`` (hides ``name`` of lower layers);
* ``dir/.wh..wh..opq`` -> the xattr ``trusted.overlay.opaque=y`` on ``dir`` (hides all lower
  children).

Every write goes through directory file descriptors opened with ``O_NOFOLLOW``, starting at the
layer root: a member named ``../x`` or ``/x``, a member written through a symlink (of the same
layer), or a hard link pointing outside the layer is refused with :class:`UnsafeLayer` naming the
archive and the member. Symlink targets are stored verbatim and never followed.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from keel_supervisor.images.errors import ArchiveError, DigestMismatch, UnsafeLayer

log = logging.getLogger("keel.supervisor.images.layer")

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class LayerStats:
    """What unpacking one layer did: counts, bytes of file content, the diff_id it hashed to."""

    diff_id: str = ""
    files: int = 0
    size: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    skipped_devices: int = 0
    skipped_xattrs: list[str] = field(default_factory=list)


class _HashingReader(io.RawIOBase):
    """Reads through to ``inner`` and hashes everything read (the uncompressed tar -> diff_id)."""

    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hasher.update(data)
        return n


def decompressed(stream: BinaryIO) -> BinaryIO:
    """``stream`` uncompressed: gzip and zstd recognized by their magic bytes, else plain tar."""
    head = stream.read(4)
    whole: BinaryIO = _Prefixed(head, stream)  # type: ignore[assignment]
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=whole, mode="rb")  # type: ignore[return-value]
    if head == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(whole, read_across_frames=True)
    return whole


class _Prefixed(io.RawIOBase):
    """``prefix`` followed by the rest of ``stream`` (undoes a peek on a non-seekable stream)."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self.prefix = prefix
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def unpack_layer(
    stream: BinaryIO, target: Path, *, source: str, expected_diff_id: str | None = None
) -> LayerStats:
    """Unpack the (possibly compressed) layer ``stream`` into the new directory ``target``.

    ``source`` names the archive or blob in errors. When ``expected_diff_id`` is given, the
    uncompressed tar must hash to it, else DigestMismatch (the caller discards ``target``).
    """
    hashing = _HashingReader(decompressed(stream))
    reader = io.BufferedReader(hashing, 1 << 20)
    target.mkdir(mode=0o755)
    applier = _Applier(target, source)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                try:
                    applier.apply(tar, member)
                except OSError as exc:
                    raise ArchiveError(
                        f"{source}: cannot unpack member {member.name!r}: {exc.strerror or exc}"
                    ) from exc
        while reader.read(1 << 20):  # the tar's end padding is part of the diff_id too
            pass
        applier.stats.diff_id = "sha256:" + hashing.hasher.hexdigest()
        if expected_diff_id is not None and applier.stats.diff_id != expected_diff_id:
            raise DigestMismatch(
                f"{source}: uncompressed layer hashes to {applier.stats.diff_id}, but the image "
                f"config lists diff_id {expected_diff_id}; the archive is corrupt"
            )
        applier.finish()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as exc:
        raise ArchiveError(f"{source}: truncated or corrupt layer tar: {exc}") from exc
    finally:
        applier.close()
    return applier.stats


class _Applier:
    """Applies tar members one by one below ``root``, never leaving it."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.source = source
        self.root_fd = os.open(root, _DIR_OPEN)
        self.is_root = os.geteuid() == 0
        self.stats = LayerStats()
        self.dir_times: list[tuple[tuple[str, ...], int]] = []
        # Parent directories already walked (tar members come grouped by directory). Cleared
        # before the next member whenever a member removed anything, so a directory replaced by
        # a symlink is never reached through a stale descriptor.
        self.parents: dict[tuple[str, ...], int] = {}
        self.removed = False

    def _parent(self, parts: tuple[str, ...], member: str) -> int:
        if self.removed or len(self.parents) > 64:
            self._forget_parents()
        fd = self.parents.get(parts)
        if fd is None:
            fd = self.parents[parts] = self._open_dir(parts, member, create=True)
        return fd

    def _forget_parents(self) -> None:
        for fd in self.parents.values():
            os.close(fd)
        self.parents.clear()
        self.removed = False

    def close(self) -> None:
        self._forget_parents()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # -- paths -------------------------------------------------------------------------------
    def _parts(self, name: str, member: str) -> tuple[str, ...]:
        if name.startswith("/"):
            raise UnsafeLayer(self.source, member, "absolute path; layer members must be relative")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise UnsafeLayer(self.source, member, "'..' in the path would leave the layer root")
        return parts

    def _open_dir(self, parts: tuple[str, ...], member: str, *, create: bool) -> int:
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_OPEN, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    nfd = os.open(part, _DIR_OPEN, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        reason = f"its parent {where!r} is a symlink; writing through it could "
                        reason += "leave the layer root"
                    else:
                        reason = f"its parent {where!r} is not a directory"
                    raise UnsafeLayer(self.source, member, reason) from exc
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- members -----------------------------------------------------------------------------
    def apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._parts(m.name, m.name)
        if not parts:
            return  # the layer root itself ("./")
        base = parts[-1]
        if base == OPAQUE_MARKER:
            fd = self._open_dir(parts[:-1], m.name, create=True)
            try:
                os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            self.stats.opaque_dirs += 1
            return
        parent = self._parent(parts[:-1], m.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base[len(WHITEOUT_PREFIX) :], m.name)
        else:
            self._entry(tar, m, parent, parts)

    def _whiteout(self, parent: int, name: str, member: str) -> None:
        if name in ("", ".", ".."):
            raise ArchiveError(f"{self.source}: member {member!r} is not a valid whiteout")
        if _lexists(parent, name):
            return  # an entry of the same layer is never hidden by that layer's whiteouts
        try:
            os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        except PermissionError as exc:
            raise ArchiveError(
                f"{self.source}: member {member!r} is a whiteout; storing it for overlayfs needs "
                "root (a 0/0 character device): run the supervisor as root"
            ) from exc
        self.stats.whiteouts += 1

    def _entry(
        self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, parts: tuple[str, ...]
    ) -> None:
        base = parts[-1]
        existing = _lstat(parent, base)
        if existing is not None and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
            self.removed = True
            if stat.S_ISDIR(existing.st_mode):
                shutil.rmtree(base, dir_fd=parent)
            else:
                os.unlink(base, dir_fd=parent)
        mode = m.mode & 0o7777
        if m.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, _DIR_OPEN, dir_fd=parent)
            try:
                self._attrs_fd(fd, m, mode)
            finally:
                os.close(fd)
            self.dir_times.append((parts, int(m.mtime)))
        elif m.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(base, flags, 0o600, dir_fd=parent)
            try:
                data = tar.extractfile(m)
                assert data is not None
                with os.fdopen(os.dup(fd), "wb") as out:
                    shutil.copyfileobj(data, out, 1 << 20)
                self._attrs_fd(fd, m, mode)
                os.utime(fd, ns=(int(m.mtime) * 10**9,) * 2)
            finally:
                os.close(fd)
            self.stats.files += 1
            self.stats.size += m.size
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
            if self.is_root:
                os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            self._xattrs(f"/proc/self/fd/{parent}/{base}", m, follow=False)
            os.utime(base, ns=(int(m.mtime) * 10**9,) * 2, dir_fd=parent, follow_symlinks=False)
        elif m.islnk():
            self._hardlink(m, parent, base)
        elif m.ischr() or m.isblk() or m.isfifo():
            self._special(m, parent, base, mode)
        else:
            log.warning("skipping member of unsupported type", extra={"member": m.name})

    def _hardlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        target = self._parts(m.linkname, m.name)
        if not target:
            raise UnsafeLayer(self.source, m.name, "hard link to the layer root")
        try:
            tparent = self._open_dir(target[:-1], m.name, create=False)
        except FileNotFoundError as exc:
            raise ArchiveError(
                f"{self.source}: member {m.name!r} is a hard link to {m.linkname!r}, "
                "which is not in this layer"
            ) from exc
        try:
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise ArchiveError(
                f"{self.source}: member {m.name!r} is a hard link to {m.linkname!r}, "
                "which is not in this layer"
            ) from exc
        except PermissionError as exc:
            raise UnsafeLayer(self.source, m.name, f"cannot hard link to {m.linkname!r}") from exc
        finally:
            os.close(tparent)
        self.stats.files += 1

    def _special(self, m: tarfile.TarInfo, parent: int, base: str, mode: int) -> None:
        if m.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
            except PermissionError:
                self.stats.skipped_devices += 1
                log.info("device node skipped (not root)", extra={"member": m.name})
                return
        if self.is_root:
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, mode, dir_fd=parent)  # we just created it: not a symlink
        os.utime(base, ns=(int(m.mtime) * 10**9,) * 2, dir_fd=parent, follow_symlinks=False)

    # -- attributes --------------------------------------------------------------------------
    def _attrs_fd(self, fd: int, m: tarfile.TarInfo, mode: int) -> None:
        if self.is_root:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
        self._xattrs(fd, m, follow=True)

    def _xattrs(self, target: int | str, m: tarfile.TarInfo, *, follow: bool) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            allowed = name.startswith("user.") or name == "security.capability"
            allowed = allowed or (name.startswith("trusted.") and self.is_root)
            if not allowed or name.startswith("trusted.overlay."):
                self.stats.skipped_xattrs.append(f"{m.name}:{name}")
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(target, name, raw, follow_symlinks=follow)
            except OSError as exc:
                self.stats.skipped_xattrs.append(f"{m.name}:{name}")
                log.warning("xattr not applied", extra={"member": m.name, "error": str(exc)})

    def finish(self) -> None:
        """Set directory mtimes last (creating their children changed them), deepest first."""
        for parts, mtime in sorted(self.dir_times, key=lambda item: -len(item[0])):
            try:
                fd = self._open_dir(parts, "/".join(parts), create=False)
            except (UnsafeLayer, FileNotFoundError):
                continue  # replaced by a later member that is not a directory
            try:
                os.utime(fd, ns=(mtime * 10**9,) * 2)
            finally:
                os.close(fd)


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _lexists(parent: int, name: str) -> bool:
    return _lstat(parent, name) is not None
