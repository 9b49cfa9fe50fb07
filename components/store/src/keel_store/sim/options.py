"""What one simulated run looks like: cluster size, fault rates, unsafe switches."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    "churn": {
        # Many elections, crashes and very late messages, undamped by pre-vote and
        # check-quorum (so liveness is not expected: a stale node may keep disrupting).
        "check_liveness": False,
        "crash_rate": 0.03,
        "restart_rate": 0.3,
        "straggler_rate": 0.2,
        "straggler_factor": 40,
        "partition_rate": 0.04,
        "pre_vote": False,
        "check_quorum": False,
    },
    "crash-storm": {
        "check_liveness": False,
        "pre_vote": False,
        "check_quorum": False,
        "crash_rate": 0.05,
        "restart_rate": 0.5,
        "partition_rate": 0.02,
    },
    "no-check-quorum": {"check_quorum": False, "partition_rate": 0.02},
    "small-batches": {"max_entries_per_message": 1, "max_inflight": 2, "compact_every": 8},
}
"""Fault mixes (Jepsen's "nemeses"); ``--mix`` gives each seed one, by seed number."""


@dataclass(slots=True)
class SimOptions:
    """Knobs of a run; the seed decides everything else. Rates are per simulated step."""

    nodes: int = 3
    steps: int = 600
    """Steps with faults; then the network heals and ``settle_steps`` more run."""
    settle_steps: int = 200
    clients: int = 3
    keys: int = 2
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_delay: int = 4
    """Message delay in steps is 1..max_delay; a few messages take up to 5x longer."""
    drop_rate: float = 0.05
    duplicate_rate: float = 0.03
    crash_rate: float = 0.006
    torn_ready_rate: float = 0.15
    """Of crashes: the share that strike midway through persisting a Ready."""
    partition_rate: float = 0.006
    clock_skew: float = 0.3
    """Each node's clock runs at a rate in [1 - skew, 1 + skew]."""
    op_timeout: int = 60
    compact_every: int = 24
    """A node snapshots when this many entries were applied since its last snapshot."""
    membership_rate: float = 0.004
    transfer_rate: float = 0.003
    spare_nodes: int = 2
    """Node IDs beyond ``nodes`` that membership changes may add."""
    restart_rate: float = 0.05
    """Per step, the chance that a crashed node comes back."""
    straggler_rate: float = 0.02
    """Share of messages delayed ``straggler_factor`` times longer (overtaken by later ones)."""
    straggler_factor: int = 5
    unreachable_report_rate: float = 0.01
    """Per step, the chance that a node is told its leader is unreachable although the
    leader may well be alive (``RaftNode.report_leader_unreachable``: a wrong report must
    cost liveness only). Besides, when a leader crashes or is cut off, each of its
    followers is told with probability ``unreachable_seen``, as the peer transport does
    when the leader's connections close."""
    unreachable_seen: float = 0.8
    max_entries_per_message: int = 64
    max_inflight: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    unsafe: dict[str, bool] = field(default_factory=dict)
    """``RaftConfig.unsafe_*`` switches to turn on, e.g. {"unsafe_skip_persist_vote": True}."""
    check_linearizability: bool = True
    check_liveness: bool = True
    """After healing, a leader must be elected and commit. Without pre-vote, skewed
    clocks can keep a stale node disrupting elections for long: switch it off then."""

    def set(self, assignment: str) -> None:
        """Apply ``name=value`` from the command line (``--set drop_rate=0.2``)."""
        name, sep, text = assignment.partition("=")
        fields = {f for f in self.__dataclass_fields__ if f != "unsafe"}
        if not sep or name not in fields:
            raise ValueError(
                f"--set {assignment!r}: expected NAME=VALUE, NAME one of {sorted(fields)}"
            )
        current = getattr(self, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                value: object = text.lower() in ("true", "1")
            else:
                value = type(current)(text)
        except ValueError as exc:
            raise ValueError(f"--set {assignment!r}: {exc}") from exc
        setattr(self, name, value)


def for_seed(base: SimOptions, seed: int, overrides: list[str]) -> SimOptions:
    """The options of ``seed`` under ``--mix``: its profile, then the user's ``--set``s."""
    names = sorted(PROFILES)
    options = replace(base, **PROFILES[names[seed % len(names)]])  # type: ignore[arg-type]
    for assignment in overrides:
        options.set(assignment)
    return options


def profile_of(seed: int) -> str:
    """The name of the profile ``--mix`` gives ``seed``."""
    names = sorted(PROFILES)
    return names[seed % len(names)]
