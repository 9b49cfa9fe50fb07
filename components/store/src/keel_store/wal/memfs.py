"""An in-memory file system that forgets, on ``crash()``, everything not made durable.

It follows the rules in :mod:`keel_store.wal.fs`: a file's writes survive a crash only
if that file was synced after them, and a name only if its directory was synced after
it was created, renamed or removed. ``crash(tear=True)`` is harsher and closer to a
real disk: some of the unsynced writes may have reached it, in order, the last one cut
short. Faults can also be injected into ``sync`` (an EIO, as a failing disk gives).
Directories themselves are always durable.
"""

from __future__ import annotations

import errno
import posixpath
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

_Pending = tuple[str, int, bytes]
"""("write", offset, data), ("truncate", size, b"") or ("allocate", size, b"")."""


@dataclass
class _Inode:
    current: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[_Pending] = field(default_factory=list)


def _apply(content: bytearray, op: _Pending) -> None:
    kind, at, data = op
    if kind == "write":
        if len(content) < at:
            content.extend(bytes(at - len(content)))
        content[at : at + len(data)] = data
    elif kind == "truncate":
        del content[at:]
        content.extend(bytes(max(0, at - len(content))))
    elif len(content) < at:  # allocate
        content.extend(bytes(at - len(content)))


class _MemoryFile:
    def __init__(self, fs: MemoryFileSystem, inode: _Inode) -> None:
        self._fs = fs
        self._inode = inode
        self._epoch = fs.epoch
        self._closed = False

    def _check(self) -> None:
        if self._closed or self._epoch != self._fs.epoch:
            raise ValueError("file handle used after close() or after the crash")

    def _do(self, op: _Pending) -> None:
        self._check()
        _apply(self._inode.current, op)
        self._inode.pending.append(op)

    def write(self, offset: int, data: bytes) -> None:
        self._do(("write", offset, bytes(data)))

    def truncate(self, size: int) -> None:
        self._do(("truncate", size, b""))

    def allocate(self, size: int, *, free_from: int | None = None) -> None:
        self._do(("allocate", size, b""))  # zero-filled already: free_from changes nothing

    def sync(self) -> None:
        self._check()
        self._fs.before_sync()
        self._inode.durable = bytearray(self._inode.current)
        self._inode.pending.clear()

    def write_sync(self, offset: int, data: bytes) -> None:
        op: _Pending = ("write", offset, bytes(data))
        self._do(op)
        self._fs.before_sync()  # an injected EIO leaves the write unsynced
        _apply(self._inode.durable, op)  # this write only, as RWF_DSYNC
        self._inode.pending.remove(op)

    def close(self) -> None:
        self._closed = True


class MemoryFileSystem:
    """Files in memory; :meth:`crash` keeps only what was durable (see module docs)."""

    def __init__(self, seed: int = 0, *, defer_discards: bool = False) -> None:
        self.defer_discards = defer_discards
        """Hold each :meth:`discard` until :meth:`settle`, as a slow background thread
        would (by default they are done at once)."""
        self._deferred: list[tuple[str, tuple[str, ...]]] = []
        self._names: dict[str, _Inode] = {}
        self._durable_names: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._rng = random.Random(seed)
        self.epoch = 0
        """Bumped by each crash; handles from an earlier epoch refuse to work."""
        self.syncs = 0
        """How many file syncs and directory syncs were made (for group-commit tests)."""
        self.fail_syncs = 0
        """How many of the next syncs fail with EIO (a fault to inject)."""

    def before_sync(self) -> None:
        """Count a sync, or fail it if a fault was injected."""
        if self.fail_syncs:
            self.fail_syncs -= 1
            raise OSError(errno.EIO, "injected I/O error on sync")
        self.syncs += 1

    def crash(self, *, tear: bool = False) -> None:
        """Lose every unsynced write and name change, as a power cut would.

        With ``tear``, a random prefix of each file's unsynced writes survives, in order,
        the last of them cut at a random length. Open handles become unusable.
        """
        self.epoch += 1
        self._deferred.clear()  # the thread that would have removed them is gone too
        self._names = dict(self._durable_names)
        for inode in {id(i): i for i in self._names.values()}.values():
            content = bytearray(inode.durable)
            if tear and inode.pending:
                kept = self._rng.randint(0, len(inode.pending))
                for op in inode.pending[:kept]:
                    _apply(content, op)
                if kept < len(inode.pending) and inode.pending[kept][0] == "write":
                    _, at, data = inode.pending[kept]
                    _apply(content, ("write", at, data[: self._rng.randrange(len(data) + 1)]))
            inode.current = content
            inode.durable = bytearray(content)
            inode.pending.clear()

    def _dir_of(self, path: str) -> str:
        directory = posixpath.dirname(path) or "/"
        if directory not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", directory)
        return directory

    def _inode(self, path: str) -> _Inode:
        try:
            return self._names[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file", path) from None

    def makedirs(self, directory: str) -> None:
        """Create ``directory`` and its parents."""
        while directory not in ("", "/"):
            self._dirs.add(directory)
            directory = posixpath.dirname(directory)

    def open(self, path: str, *, create: bool) -> _MemoryFile:
        """Open ``path``; with ``create``, make it if missing."""
        self._dir_of(path)
        if path not in self._names:
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            self._names[path] = _Inode()
        return _MemoryFile(self, self._names[path])

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """The current content of ``path`` (``size`` bytes from ``offset``)."""
        current = self._inode(path).current
        return bytes(current[offset:] if size < 0 else current[offset : offset + size])

    def size(self, path: str) -> int:
        """The current length of ``path``."""
        return len(self._inode(path).current)

    def list(self, directory: str) -> list[str]:
        """Names in ``directory``, sorted."""
        if directory not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", directory)
        return sorted(
            posixpath.basename(p) for p in self._names if posixpath.dirname(p) == directory
        )

    def rename(self, src: str, dst: str) -> None:
        """Move the name ``src`` to ``dst`` (same directory or not)."""
        self._dir_of(dst)
        self._names[dst] = self._inode(src)
        del self._names[src]

    def remove(self, path: str) -> None:
        """Remove the name ``path``."""
        self._inode(path)
        del self._names[path]

    def discard(self, directory: str, names: Sequence[str]) -> None:
        """Remove ``names`` from ``directory`` and sync it (at :meth:`settle` if
        ``defer_discards``); a name already gone is skipped."""
        self._deferred.append((directory, tuple(names)))
        if not self.defer_discards:
            self.settle()

    def settle(self) -> None:
        """Do the discards held so far."""
        deferred, self._deferred = self._deferred, []
        for directory, names in deferred:
            for name in names:
                self._names.pop(posixpath.join(directory, name), None)
            self.fsync_dir(directory)

    def fsync_dir(self, directory: str) -> None:
        """Make the current names in ``directory`` the durable ones."""
        self.before_sync()
        for path in [p for p in self._durable_names if posixpath.dirname(p) == directory]:
            del self._durable_names[path]
        for path, inode in self._names.items():
            if posixpath.dirname(path) == directory:
                self._durable_names[path] = inode
