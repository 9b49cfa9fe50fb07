"""The leader's view of each follower: how far it matches and how to send it more.

A follower is *probed* (one APPEND at a time until its match is found), *replicated* to
(APPENDs pipelined up to a window of ``max_inflight`` unacknowledged messages) or sent a
*snapshot* (nothing else until it is installed or given up on).
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    """How the leader currently feeds one follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    """Replication state of one peer, kept by the leader."""

    __slots__ = (
        "inflight",
        "is_learner",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_ticks",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, *, is_learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.recent_active = False
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.value},"
            f" inflight={len(self.inflight)})"
        )

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.state = state
        self.inflight.clear()

    def become_probe(self) -> None:
        """Find the follower's match one APPEND at a time."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Stream APPENDs optimistically: the match is known."""
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        """A snapshot at ``index`` is on its way; send nothing else meanwhile."""
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; True if that raised its match."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an APPEND at ``rejected``; False if the reply is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last: int) -> None:
        """Entries up to ``last`` went out in one APPEND."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_inflight_to(self, index: int) -> None:
        """APPENDs up to ``index`` are acknowledged: they leave the window."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()

    @property
    def paused(self) -> bool:
        """Must the leader hold back APPENDs to this follower for now?"""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True
