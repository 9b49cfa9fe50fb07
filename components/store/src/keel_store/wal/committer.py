"""Group commit: many concurrent callers, one write and one fsync per batch.

Callers (threads, or asyncio tasks through :meth:`GroupCommitter.commit`) submit
entries and hard states; one committer thread takes everything submitted so far,
appends it all, syncs once and then resolves every caller's future. While an fsync is
under way new submissions pile up and go together in the next one, so the fsync rate
stays what the disk allows while throughput grows with the number of callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from keel_store.raft.types import Entry, HardState

from .log import WALError, WriteAheadLog

_Job = tuple[Sequence[Entry], HardState | None, "Future[None]"]


class GroupCommitter:
    """Owns a :class:`WriteAheadLog` and serialises its use onto one thread.

    A future resolves only after the fsync covering its records returned: send nothing
    that depends on the records before that. Jobs are appended in submission order.
    """

    def __init__(self, wal: WriteAheadLog) -> None:
        self._wal = wal
        self._jobs: list[_Job] = []
        self._cond = threading.Condition()
        self._closing = False
        self.batches = 0
        """How many fsync batches ran (for statistics)."""
        self.jobs = 0
        """How many jobs were committed."""
        self._thread = threading.Thread(target=self._run, name="wal-committer", daemon=True)
        self._thread.start()

    def submit(
        self, entries: Sequence[Entry] = (), hard_state: HardState | None = None
    ) -> Future[None]:
        """Queue a job; the future resolves when it is durable (or fails with the error)."""
        future: Future[None] = Future()
        with self._cond:
            if self._closing:
                raise WALError("the group committer is closed")
            self._jobs.append((entries, hard_state, future))
            self._cond.notify()
        return future

    async def commit(
        self, entries: Sequence[Entry] = (), hard_state: HardState | None = None
    ) -> None:
        """Like :meth:`submit`, awaited: returns once the records are durable."""
        await asyncio.wrap_future(self.submit(entries, hard_state))

    def close(self) -> None:
        """Commit what is queued, stop the thread and close the log."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        with contextlib.suppress(WALError):  # already failed: every future carried it
            self._wal.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                jobs, self._jobs = self._jobs, []
                if not jobs and self._closing:
                    return
            accepted: list[Future[None]] = []
            for entries, hard_state, future in jobs:
                try:
                    self._wal.append(entries, hard_state)
                except Exception as exc:  # this job's mistake (or a dead WAL); others go on
                    future.set_exception(exc)
                else:
                    accepted.append(future)
            try:
                self._wal.sync()
            except Exception as exc:  # the thread must live on, or every caller would hang
                for future in accepted:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.jobs += len(accepted)
            for future in accepted:
                future.set_result(None)
