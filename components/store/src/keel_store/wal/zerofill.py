"""Zeros written ahead of a WAL segment's writer, in a thread, so its syncs stay small.

``posix_fallocate`` reserves a segment's blocks as *unwritten* extents (ext4, xfs). The
first write into such a block must convert the extent to written, a change of file
metadata, so the ``fdatasync`` (or ``RWF_DSYNC`` write) that makes it durable also
commits the file system's journal. A WAL appends a few kB per sync and so crosses into a
fresh block on nearly every sync under load. Measured here (ext4 on virtio, appends of
5.5 kB each made durable with ``RWF_DSYNC``, three rounds): 134-147 us per append in a
fallocated file, 85-90 us in a file whose blocks were written with zeros beforehand.
PostgreSQL writes its new WAL files full of zeros for the same reason (``wal_init_zero``).

:class:`ZeroAhead` overwrites the free part of a preallocated, append-only file with
zeros a little ahead of its writer (:data:`AHEAD` bytes), a chunk at a time, each made
durable before the next, from a daemon thread with a file descriptor of its own (so that
a write-back error its ``fdatasync`` meets is still reported to the writer's). The
writer calls :meth:`ZeroAhead.claim` before each write; the thread never writes a chunk
the writer has claimed, and a claim waits for a chunk being written that it overlaps.
The disk writes cost: about as many bytes as the writer writes, plus :data:`AHEAD`.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Bytes zeroed and made durable in one step; also how far past its write a claim
reaches, so a writer takes the lock about once per CHUNK written."""

AHEAD = 8 << 20
"""How far past the writer's claim the thread keeps the file zeroed."""

_PIECE = 256 << 10
"""Bytes per ``pwrite`` of zeros: the writer's own writes wait for the inode lock
while one is copied into the page cache (tens of microseconds)."""

_ZEROS = bytes(_PIECE)


class ZeroAhead:
    """Zero ``[free_from, end)`` of the file open as ``fd`` ahead of its writer (see
    the module's docstring). Everything below ``free_from`` is the writer's; the writer
    appends and claims each range before writing it."""

    def __init__(self, fd: int, free_from: int, end: int) -> None:
        # The same file opened anew (not dup'ed): a descriptor of its own, whose
        # fdatasync cannot take a write-back error from the writer's.
        self._fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        self._end = end
        # The writer's next writes land right at free_from: start a chunk past it, so
        # that its first claims find the thread well ahead rather than busy there.
        self._limit = free_from + CHUNK
        """Below here is the writer's: the thread writes nothing there."""
        self._next = _round_up(self._limit)
        """The next chunk the thread zeroes (at or past ``_limit``)."""
        self._busy: int | None = None
        """The chunk being written now, if any."""
        self._stopped = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="wal-zero-ahead", daemon=True)
        self._thread.start()

    def claim(self, end: int) -> None:
        """The writer will write below ``end``: keep the thread out of there (waiting
        for a chunk in progress that overlaps), and let it go on ahead."""
        if end <= self._limit:  # the common case, without the lock
            return
        with self._cond:
            limit = min(end + CHUNK, self._end)
            while self._busy is not None and self._busy < limit:
                self._cond.wait()
            self._limit = limit
            if self._next < limit:  # the writer got there first: skip ahead
                self._next = _round_up(limit)
            self._cond.notify_all()

    def stop(self, *, wait: bool = False) -> None:
        """Stop zeroing (idempotent); with ``wait``, return once no write is in
        progress. The thread closes its descriptor when it ends."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopped and self._end > self._next >= self._limit + AHEAD:
                        self._cond.wait()
                    if self._stopped or self._next >= self._end:
                        return
                    start = self._busy = self._next
                    self._next = start + CHUNK
                try:
                    _zero_range(self._fd, start, min(start + CHUNK, self._end))
                finally:
                    with self._cond:
                        self._busy = None
                        self._cond.notify_all()
        except OSError as exc:
            # The WAL works without it (its blocks are allocated); the writer's own
            # fdatasync reports any write-back error through its own descriptor.
            log.warning("zeroing a WAL segment ahead stopped", extra={"error": str(exc)})
        finally:
            os.close(self._fd)


def _zero_range(fd: int, start: int, end: int) -> None:
    """Write zeros over ``[start, end)`` and make them durable."""
    offset = start
    while offset < end:
        offset += os.pwrite(fd, _ZEROS[: min(_PIECE, end - offset)], offset)
    os.fdatasync(fd)


def _round_up(offset: int) -> int:
    return -(-offset // CHUNK) * CHUNK
