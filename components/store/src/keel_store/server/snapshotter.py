"""Building a member's snapshot in a forked child, off the event loop.

``snapshot.save(sm)`` serializes the whole state machine, and writing the file takes
as long again: with the daemon's ``--snapshot-count`` of 100,000 entries a busy member
stopped answering for seconds (the slowest request of ``etcdctl check perf --load=l`` was
2.6-4.5 s, 0.22 s with snapshots off). etcd copies its bbolt file in the background;
keel-store forks, as Redis's BGSAVE does: the child gets a copy-on-write image of the
state machine exactly as it is at the fork (between two applies on the loop),
serializes it and either lets the caller keep it (the node writes the snapshot file
there) or writes the bytes to a pipe, and exits. The parent goes on serving; a thread
reads the pipe and reaps the child, and the loop records the snapshot once it is done.

The child runs nothing but ``snapshot.save``, the caller's ``keep`` (plain file writes)
and ``os.write``: no loop, no logging, no locks another thread could have held at the
fork; it leaves with ``os._exit``. It dies with its parent (``PR_SET_PDEATHSIG``): a
member killed with ``kill -9`` would otherwise leave it writing a ``.tmp`` file into
the data directory for up to a few seconds, under the member restarted there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from keel_store.mvcc import snapshot
from keel_store.mvcc.store import StateMachine
from keel_store.raft.storage import SnapshotTemporarilyUnavailableError

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def _die_with_parent(parent: int) -> None:
    """In the child: be killed when the parent dies, or leave now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class SnapshotChildError(Exception):
    """The forked child did not produce a snapshot."""


def _settle_child() -> None:
    """In a forked child: leave the parent's signal handling and the collector alone."""
    signal.set_wakeup_fd(-1)  # the parent's loop owns that socket
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    gc.disable()  # a collection would touch (and copy) every page


def _child(
    sm: StateMachine,
    fd: int,
    keep: Callable[[Any], None] | None,
    compute: Callable[[StateMachine], Any] = snapshot.save,
) -> None:
    """In the forked child: serialize (or ``compute`` something else over ``sm``, a
    hash), then ``keep`` the bytes (write the file, or send them framed) or send them
    as they are, then leave without any cleanup."""
    code = 1
    try:
        _settle_child()
        data = compute(sm)
        if keep is not None:
            keep(data)  # the file is the snapshot: the parent reads it if ever needed
        else:
            _write_all(fd, cast(bytes, data))
        code = 0
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(fd: int, pid: int) -> bytes:
    """In a thread of the parent: the child's bytes, once it exited cleanly."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SnapshotChildError(f"snapshot child {pid} exited with status {status}")
    return b"".join(chunks)


class ChildSnapshot:
    """A running child: ``future`` gets the bytes; ``kill()`` gives up on it."""

    def __init__(self, future: asyncio.Future[bytes], pid: int) -> None:
        self.future = future
        self.pid = pid

    def kill(self) -> None:
        """Stop the child (the future then fails); harmless once it has exited."""
        if not self.future.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def compute_in_child(sm: StateMachine, compute: Callable[[StateMachine], bytes]) -> ChildSnapshot:
    """Fork a child that runs ``compute`` over ``sm`` as it is now (HashKV over a large
    key space: 0.4-0.5 s per 100k keys that the loop does not wait for); its future
    gets the bytes ``compute`` returned."""
    return save_in_child(sm, save=functools.partial(_child, compute=compute))


def save_in_child(
    sm: StateMachine,
    keep: Callable[[bytes], None] | None = None,
    save: Callable[[StateMachine, int, Callable[[bytes], None] | None], None] = _child,
) -> ChildSnapshot:
    """Fork a child that serializes ``sm`` as it is now; its future gets the bytes.

    ``keep(data)``, if given, runs in the child instead of sending the bytes (a file
    written there, which the loop does not wait for) and the future gets ``b""``:
    piping 160-320 MB back cost the parent a thread copying them under the interpreter
    lock, a join of them on the loop and as much memory again. The node's snapshots use
    :func:`write_in_child`. Call it from the event loop's thread between two changes of
    ``sm``.
    """
    loop = asyncio.get_running_loop()
    r, pid = _fork(lambda w: save(sm, w, keep))
    return ChildSnapshot(loop.run_in_executor(None, _collect, r, pid), pid)


IDLE_S = 10.0
"""How long a member's snapshot child runs at idle priority before it asks for its
priority back (:func:`write_in_child`)."""


def write_in_child(
    sm: StateMachine, write: Callable[[Iterator[bytes]], None], idle_for: float = IDLE_S
) -> ChildSnapshot:
    """Fork a child that hands ``write`` the serialization of ``sm`` as it is now, as
    the chunks of ``snapshot.save_chunks``; its future gets ``b""``. The node writes
    them to the snapshot file as they come, so the child never holds the serialized
    key space (323 MB for 200k keys of 1 kB) nor a joined copy of it: for those keys
    its peak memory fell by 618 MB, its page faults from 211k to 53k and its time
    from 2.6-2.7 s to 1.5 s.

    Nobody waits for this child, so it runs at idle priority (``SCHED_IDLE``): on the
    CPU only when the member and its peers have nothing to run. With three members
    on two cores, ``etcdctl check perf --load=l``'s slowest request was 0.46-0.56 s
    with children at normal priority and 0.37-0.45 s at idle priority, three runs
    each. After ``idle_for`` seconds it asks for its priority back, so a machine
    that is never idle still gets its snapshots (which lets the WAL be cut); that
    needs ``RLIMIT_NICE`` of at least 20 (the unit's ``LimitNICE=+0``) or
    ``CAP_SYS_NICE``, and without them the child stays idle."""
    return save_in_child(
        sm,
        cast(Callable[[bytes], None], write),
        functools.partial(
            _child, compute=lambda sm: _at_idle_priority(snapshot.save_chunks(sm), idle_for)
        ),
    )


def _at_idle_priority(chunks: Iterator[bytes], idle_for: float) -> Iterator[bytes]:
    """In a child: ``chunks`` at idle priority, until ``idle_for`` seconds have passed
    (checked after each chunk is taken), then at the priority it had (its parent's)
    if allowed."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # not on this kernel: its own priority throughout
        yield from chunks
        return
    deadline = time.monotonic() + idle_for
    for chunk in chunks:
        yield chunk
        if deadline and time.monotonic() >= deadline:
            deadline = 0.0
            with contextlib.suppress(OSError):  # EPERM: no RLIMIT_NICE for it
                os.sched_setscheduler(0, policy, param)


def _fork(run: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that runs ``run(w)`` (``w`` the write end of a pipe; ``run`` must
    leave through ``os._exit``); returns the read end and the child's pid."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child leaves through os._exit)
        os.close(r)
        _die_with_parent(parent)
        run(w)
    os.close(w)
    return r, pid


_SIZE = struct.Struct(">Q")
STREAM_BATCH = 1 << 20
"""Bytes of pieces a streaming child joins for one write to its pipe."""


def _stream_child(
    sm: StateMachine, fd: int, compute: Callable[[StateMachine], bytes | list[bytes]]
) -> None:
    """In the forked child: ``compute`` over ``sm``, then send the result's length and
    the result itself (given as the pieces it is made of: never joined whole), waiting
    on the pipe as the parent reads it; then leave."""

    def send(data: bytes | list[bytes]) -> None:
        pieces = [data] if isinstance(data, bytes) else data
        _write_all(fd, _SIZE.pack(sum(map(len, pieces))))
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= STREAM_BATCH:
                _write_all(fd, b"".join(batch))
                batch, size = [], 0
        _write_all(fd, b"".join(batch))

    _child(sm, fd, send, compute)


class ChildStream:
    """The bytes a forked child computes, read on the loop as they come (the parent
    never holds them whole: the pipe holds 64 KiB and the reader pauses at 128 KiB,
    so the child waits for the reader). Open it with :func:`stream_from_child`.

    ``size`` is the length the child announced; :meth:`read` returns the next bytes;
    :meth:`finish`, after the last byte, checks that the child exited cleanly;
    :meth:`close` gives up on the child (kills it if it still runs) and is harmless
    after :meth:`finish`.
    """

    def __init__(
        self, pid: int, reader: asyncio.StreamReader, transport: asyncio.ReadTransport
    ) -> None:
        self.pid = pid
        self.size = 0
        self._reader = reader
        self._transport = transport
        self._reaped = False

    async def _start(self) -> None:
        (self.size,) = _SIZE.unpack(await self.read(_SIZE.size))

    async def read(self, n: int) -> bytes:
        """The next ``n`` bytes; raises :class:`SnapshotChildError` if the child
        stopped before them."""
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            status = await self._reap()
            raise SnapshotChildError(
                f"snapshot child {self.pid} stopped ({_describe(status)}) "
                f"{n - len(exc.partial)} bytes short"
            ) from None

    async def finish(self) -> None:
        """Wait for the child to exit; raises :class:`SnapshotChildError` unless it
        sent nothing more and exited with 0."""
        extra = await self._reader.read(1)
        status = await self._reap()
        if extra or os.waitstatus_to_exitcode(status) != 0:
            raise SnapshotChildError(f"snapshot child {self.pid} {_describe(status)}")

    async def _reap(self) -> int:
        self._transport.close()
        _, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
        self._reaped = True
        return status

    def close(self) -> None:
        """Stop the child and stop reading (it is reaped in a thread)."""
        self._transport.close()
        if self._reaped:
            return
        self._reaped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        asyncio.get_running_loop().run_in_executor(None, _reap_quietly, self.pid)


def _reap_quietly(pid: int) -> None:
    """Wait for ``pid`` in a thread nobody awaits (a reap already under way, cancelled
    with its caller, may have taken it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class BytesStream:
    """:class:`ChildStream`'s interface over bytes already made (a member that does not
    fork: ``background_snapshots`` off, as in the in-process tests)."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self._view = memoryview(data)

    async def read(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end)."""
        chunk, self._view = self._view[:n], self._view[n:]
        return bytes(chunk)

    async def finish(self) -> None:
        """Nothing can have failed."""

    def close(self) -> None:
        """Drop the bytes."""
        self._view = memoryview(b"")


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"


async def stream_from_child(
    sm: StateMachine, compute: Callable[[StateMachine], bytes | list[bytes]]
) -> ChildStream:
    """Fork a child that runs ``compute`` over ``sm`` as it is now and sends the result
    (``Maintenance.Snapshot``: etcd's database of 100k keys costs 0.6 s of rows and
    pages that the loop does not wait for); returns once its size is known. Call it
    from the event loop's thread between two changes of ``sm``."""
    loop = asyncio.get_running_loop()
    r, pid = _fork(lambda w: _stream_child(sm, w, compute))
    pipe = os.fdopen(r, "rb", buffering=0)
    reader = asyncio.StreamReader(limit=1 << 16)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(_reap_quietly, pid)
        raise
    stream = ChildStream(pid, reader, transport)
    try:
        await stream._start()
    except BaseException:
        stream.close()
        raise
    return stream


class FileLoader:
    """A snapshot's ``load`` (``MemoryStorage.create_snapshot``) for a snapshot kept in
    its file: the first call starts ``read`` in a worker thread and raises
    :class:`SnapshotTemporarilyUnavailableError`, as does every call until the read is
    done; the next one returns the bytes and forgets them (a few hundred MB not held
    between sends). A leader's loop reading and verifying the file itself stopped
    serving for a few tenths of a second per few hundred MB; a read that failed raises
    here, as it did there. Call it from the event loop's thread.
    """

    def __init__(
        self,
        read: Callable[[], bytes],
        on_failure: Callable[[Exception], None] | None = None,
    ) -> None:
        self._read = read
        self._reading: asyncio.Future[bytes] | None = None
        self.on_failure = on_failure
        """If set, a read that failed (a damaged or missing file) is handed to it and
        the snapshot stays "temporarily unavailable" (the caller makes a new one)
        instead of raising."""

    def __call__(self) -> bytes:
        reading = self._reading
        if reading is None:
            reading = asyncio.get_running_loop().run_in_executor(None, self._read)
            self._reading = reading
        if not reading.done():
            raise SnapshotTemporarilyUnavailableError("the snapshot file is being read")
        self._reading = None
        exc = reading.exception()
        if exc is not None and self.on_failure is not None and isinstance(exc, Exception):
            self.on_failure(exc)
            raise SnapshotTemporarilyUnavailableError(f"the snapshot file failed: {exc}")
        return reading.result()
