"""Lease deadlines: the leader's clock, kept outside the deterministic state machine.

etcd keeps lease expiry on the leader only: keep-alives reset a deadline in memory,
and when a deadline passes the leader proposes a revoke through the log, so every
member deletes the lease's keys at the same revision. A new leader gives every lease
a fresh full TTL (etcd's ``Promote``), so a leader change never expires leases early.

With checkpoints (etcd's ``--experimental-enable-lease-checkpoint``) the leader writes
the remaining TTL of each long lease to the log every checkpoint interval (etcd: five
minutes); every member remembers it, and a new leader gives such a lease what was left
at the last checkpoint instead of its full TTL, so a lease of an hour under frequent
leader changes still expires. A keep-alive clears the checkpoint (through the log too).
The remembered TTLs live in memory, as in etcd 3.4 (not in snapshots).

Times are plain floats from the caller (``time.monotonic()`` in the node, a fake in
tests).
"""

from __future__ import annotations

import heapq
import math

MAX_CHECKPOINT_BATCH = 1000
"""etcd's ``maxLeaseCheckpointBatchSize``: checkpoints in one log entry."""


class Lessor:
    """Deadlines of the leases this member knows, by lease ID."""

    def __init__(self, checkpoint_interval: float = 0.0) -> None:
        self._deadline: dict[int, float] = {}
        self._ttl: dict[int, int] = {}
        self.checkpoint_interval = checkpoint_interval
        """Seconds between a lease's checkpoints; 0: no checkpoints."""
        self._remaining: dict[int, int] = {}
        self._checkpoints: list[tuple[float, int]] = []

    def grant(self, lease_id: int, ttl: int, now: float, leader: bool = True) -> None:
        """Start the clock of a lease just granted (applied); the leader schedules its
        first checkpoint (a follower's schedule starts when it is promoted)."""
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = now + ttl
        if leader:
            self._schedule(lease_id, now)

    def forget(self, lease_id: int) -> None:
        """The lease was revoked (applied)."""
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)
        self._remaining.pop(lease_id, None)

    def renew(self, lease_id: int, now: float) -> int | None:
        """A keep-alive: reset the deadline; returns the TTL, or ``None`` if unknown.

        A checkpointed remaining TTL is dropped here; the caller clears it on the other
        members through the log (see :meth:`checkpointed`)."""
        ttl = self._ttl.get(lease_id)
        if ttl is None:
            return None
        self._remaining.pop(lease_id, None)
        self._deadline[lease_id] = now + ttl
        return ttl

    def checkpointed(self, lease_id: int) -> bool:
        """Whether the lease has a remaining TTL from a checkpoint (a renewal clears it)."""
        return lease_id in self._remaining

    def remaining(self, lease_id: int, now: float) -> int:
        """Seconds left (rounded up, as etcd reports), -1 if the lease is unknown."""
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return -1
        return max(0, math.ceil(deadline - now))

    def promote(self, now: float) -> None:
        """This member became leader: every lease gets its full TTL from now, or what was
        left at its last checkpoint."""
        self._checkpoints = []
        for lease_id, ttl in self._ttl.items():
            self._deadline[lease_id] = now + (self._remaining.get(lease_id) or ttl)
            self._schedule(lease_id, now)

    def expired(self, now: float) -> list[int]:
        """Leases whose deadline has passed, oldest deadline first."""
        due = [(d, i) for i, d in self._deadline.items() if d <= now]
        return [i for _, i in sorted(due)]

    # ------------------------------------------------------------------ checkpoints

    def reschedule(self, lease_id: int, now: float) -> None:
        """A checkpoint could not be proposed: try again an interval later."""
        if lease_id in self._ttl:
            self._schedule(lease_id, now)

    def _schedule(self, lease_id: int, now: float) -> None:
        interval = self.checkpoint_interval
        if interval <= 0:
            return
        ttl = self._remaining.get(lease_id) or self._ttl[lease_id]
        if ttl > interval:  # a shorter lease ends before its checkpoint would help
            heapq.heappush(self._checkpoints, (now + interval, lease_id))

    def due_checkpoints(self, now: float) -> list[tuple[int, int]]:
        """(lease ID, seconds left) of the leases whose checkpoint is due (the leader
        proposes them), at most :data:`MAX_CHECKPOINT_BATCH`."""
        out: list[tuple[int, int]] = []
        heap = self._checkpoints
        while heap and heap[0][0] <= now and len(out) < MAX_CHECKPOINT_BATCH:
            _, lease_id = heapq.heappop(heap)
            deadline = self._deadline.get(lease_id)
            if deadline is None or deadline <= now:
                continue  # revoked, or about to be
            left = math.ceil(deadline - now)
            if left >= self._ttl[lease_id]:
                self._schedule(lease_id, now)  # just renewed: nothing to record yet
                continue
            out.append((lease_id, left))
        return out

    def checkpoint(self, lease_id: int, remaining: int, now: float, leader: bool) -> None:
        """A checkpoint was applied: remember what was left (0 clears it); the leader
        schedules the lease's next one. The deadline itself does not change."""
        if lease_id not in self._ttl:
            return
        if remaining > 0:
            self._remaining[lease_id] = remaining
        else:
            self._remaining.pop(lease_id, None)
        if leader and remaining > 0:
            self._schedule(lease_id, now)
