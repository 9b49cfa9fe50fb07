"""How a Raft node behaves: timeouts, flow control, and switches that remove safety.

The ``unsafe_*`` switches exist only so that tests can prove the simulator notices when
one safety mechanism is missing. Production code never sets them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A RaftConfig value is out of range; the message names the field."""


@dataclass(slots=True)
class RaftConfig:
    """Settings of one Raft node. Times are in ticks of the caller's clock."""

    id: int
    election_ticks: int = 10
    """Followers campaign after a random timeout in [election_ticks, 2*election_ticks)."""
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    """Ask first whether a campaign could win, so a partitioned node cannot bump terms."""
    check_quorum: bool = True
    """A leader that has not heard from a quorum for an election timeout steps down."""
    max_entries_per_message: int = 64
    """Batching: at most this many entries in one APPEND."""
    max_inflight: int = 64
    """Pipelining window: unacknowledged APPENDs with entries per follower."""
    applied: int = 0
    """The index the caller's state machine has applied (restart from a snapshot)."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    """The only source of randomness; seeded by the caller so runs replay exactly."""

    unsafe_skip_persist_vote: bool = False
    """Report hard state without the vote: after a crash the node may vote twice."""
    unsafe_skip_append_response_term_check: bool = False
    """Accept APPEND_RESPONSEs from older terms (stale acknowledgements count)."""
    unsafe_skip_read_index_heartbeat: bool = False
    """Serve ReadIndex without confirming leadership with a quorum."""
    unsafe_commit_previous_term_entries: bool = False
    """Commit by counting replicas of entries from older terms (Raft paper, figure 8)."""
    unsafe_read_before_term_commit: bool = False
    """Serve ReadIndex before the leader committed an entry of its own term."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is out of range."""
        if self.id <= 0:
            raise ConfigError(f"id: must be a positive node ID, got {self.id}")
        if self.heartbeat_ticks <= 0:
            raise ConfigError(f"heartbeat_ticks: must be > 0, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks: must exceed heartbeat_ticks ({self.heartbeat_ticks}),"
                f" got {self.election_ticks}"
            )
        if self.max_entries_per_message <= 0:
            raise ConfigError("max_entries_per_message: must be > 0")
        if self.max_inflight <= 0:
            raise ConfigError("max_inflight: must be > 0")
        if self.applied < 0:
            raise ConfigError("applied: must be >= 0")
