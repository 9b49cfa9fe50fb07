"""Lease deadlines: the leader's clock, kept outside the deterministic state machine.

etcd keeps lease expiry on the leader only: keep-alives reset a deadline in memory,
and when a deadline passes the leader proposes a revoke through the log, so every
member deletes the lease's keys at the same revision. A new leader gives every lease
a fresh full TTL (etcd's ``Promote``), so a leader change never expires leases early.
Times are plain floats from the caller (``time.monotonic()`` in the node, a fake in
tests).
"""

from __future__ import annotations

import math


class Lessor:
    """Deadlines of the leases this member knows, by lease ID."""

    def __init__(self) -> None:
        self._deadline: dict[int, float] = {}
        self._ttl: dict[int, int] = {}

    def grant(self, lease_id: int, ttl: int, now: float) -> None:
        """Start the clock of a lease just granted (applied)."""
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = now + ttl

    def forget(self, lease_id: int) -> None:
        """The lease was revoked (applied)."""
        self._ttl.pop(lease_id, None)
        self._deadline.pop(lease_id, None)

    def renew(self, lease_id: int, now: float) -> int | None:
        """A keep-alive: reset the deadline; returns the TTL, or ``None`` if unknown."""
        ttl = self._ttl.get(lease_id)
        if ttl is None:
            return None
        self._deadline[lease_id] = now + ttl
        return ttl

    def remaining(self, lease_id: int, now: float) -> int:
        """Seconds left (rounded up, as etcd reports), -1 if the lease is unknown."""
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return -1
        return max(0, math.ceil(deadline - now))

    def promote(self, now: float) -> None:
        """This member became leader: every lease gets its full TTL from now."""
        for lease_id, ttl in self._ttl.items():
            self._deadline[lease_id] = now + ttl

    def expired(self, now: float) -> list[int]:
        """Leases whose deadline has passed, oldest deadline first."""
        due = [(d, i) for i, d in self._deadline.items() if d <= now]
        return [i for _, i in sorted(due)]
