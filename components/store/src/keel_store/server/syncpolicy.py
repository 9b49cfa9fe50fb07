"""Where a member waits for its WAL fsync: on the event loop, or in a worker thread.

On the loop, nothing else runs until the disk answers: requests wait in the socket
buffers (they still join the next fsync: the Raft loop takes no new Ready before this
one is durable either way), and reads and watches wait too. In a thread, the loop
serves them meanwhile, but the hand-off is not free: the worker needs the interpreter
lock back to report, and under load it waits for it. Measured on this machine (1
member, 64 concurrent writers, ``benchmarks/store_profile.py``-style trace): fsyncs
of 0.2-0.3 ms took 0.5-1.8 ms to come back from the thread (median 0.33 ms more than
the fsync itself), and the write rate rose from 9.8-11.8k to 12.8-14.4k puts/s (four
runs each) with every fsync on the loop (docs/store.md, "The WAL sync on the loop").

So a disk that syncs fast is waited for on the loop, a slow one in a thread; the
choice follows a moving average of the measured fsync times, so a disk that slows
down (or recovers) changes it within a few syncs.
"""

from __future__ import annotations

INLINE_BELOW_S = 0.001
"""Average fsync time under which the loop waits for the disk itself."""

WEIGHT = 0.25
"""Weight of the newest fsync time in the moving average."""


class SyncPolicy:
    """Chooses, before each WAL fsync, whether the event loop waits for it itself."""

    def __init__(self, inline_below: float = INLINE_BELOW_S, weight: float = WEIGHT) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], not {weight}")
        self.inline_below = inline_below
        self.weight = weight
        self.average = 0.0
        """Moving average of fsync times, seconds (0 until the first is observed)."""

    def inline(self) -> bool:
        """Whether the next fsync should run on the event loop."""
        return self.average < self.inline_below

    def observe(self, took: float) -> None:
        """Record how long an fsync took (seconds), wherever it ran."""
        self.average += self.weight * (took - self.average)
