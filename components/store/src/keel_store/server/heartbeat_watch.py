"""Notices a leader whose heartbeats leave late: etcd's ``TimeoutDetector``.

A leader sends each follower a heartbeat every heartbeat interval. When the gap between
two heartbeats to the same follower exceeds twice the interval, the leader was too busy
(a slow disk, a long stop of its event loop) and its followers came that much closer to
electing another leader. etcd (``etcdserver/raft.go``, ``pkg/contention``) then warns
"leader failed to send out heartbeat on time; took too long, leader is overloaded likely
from slow disk" and counts ``etcd_server_heartbeat_send_failures_total``; keel-store does
the same (:class:`keel_store.server.node.StoreNode`), so an election that followed a stall
leaves a trace.
"""

from __future__ import annotations


class HeartbeatWatch:
    """The last heartbeat sent to each follower, and how late the next one is."""

    __slots__ = ("_last", "allowed")

    def __init__(self, interval: float) -> None:
        self.allowed = 2 * interval
        """Longest gap between two heartbeats to one follower that is on time (seconds)."""
        self._last: dict[int, float] = {}

    def reset(self) -> None:
        """Forget every follower (on becoming leader: no heartbeat was due before)."""
        self._last.clear()

    def observe(self, to: int, now: float) -> float:
        """A heartbeat to ``to`` leaves at ``now``: by how many seconds it exceeded the
        allowed gap since the previous one to ``to`` (0.0 if on time or the first)."""
        last = self._last.get(to)
        self._last[to] = now
        if last is None:
            return 0.0
        return max(0.0, now - last - self.allowed)
