"""Each safety mechanism, switched off, makes the simulator fail some seed.

This is what proves the simulator can fail. Each case names the fault mix that exposes
the missing mechanism (a nemesis, in Jepsen's terms), searches seeds from 0 up to a bound
and expects a failure of the right kind; the failing seed must pass with the mechanism
on, so the failure is the switch's doing and not the fault mix's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from keel_store.sim import RunResult, SimOptions, run_seed
from keel_store.sim.options import PROFILES

# The simulator's "churn" mix (many elections, crashes, long-delayed messages; no pre-vote or
# check-quorum to damp them), minus the linearizability check.
CHURN = {**PROFILES["churn"], "check_linearizability": False}
# Crash-restart storms right after votes.
VOTE_CRASHES = {
    "check_liveness": False,
    "pre_vote": False,
    "check_quorum": False,
    "crash_rate": 0.05,
    "restart_rate": 0.5,
    "partition_rate": 0.02,
    "check_linearizability": False,
}

CASES = [
    pytest.param("unsafe_skip_persist_vote", VOTE_CRASHES, 30, "election safety", id="vote"),
    # Commit notices are not answered (Message.quiet), so stale answers are rarer: the
    # first failing seed moved from below 30 to 265 (2026-12-05).
    pytest.param(
        "unsafe_skip_append_response_term_check", CHURN, 300, "replication", id="append-reply"
    ),
    pytest.param(
        "unsafe_skip_read_index_heartbeat",
        {"check_quorum": False},  # else a partitioned leader steps down too soon to matter
        60,
        "not linearizable",
        id="read-heartbeat",
    ),
    pytest.param("unsafe_read_before_term_commit", {}, 80, "not linearizable", id="read-term"),
    pytest.param(
        "unsafe_commit_previous_term_entries",
        {**CHURN, "max_entries_per_message": 1},  # old entries travel without the no-op
        120,
        "completeness",
        id="figure-8",
        marks=pytest.mark.slow,
    ),
]


def first_failure(options: SimOptions, bound: int) -> RunResult | None:
    for seed in range(bound):
        result = run_seed(seed, options)
        if not result.ok:
            return result
    return None


@pytest.mark.parametrize(("switch", "faults", "bound", "expected"), CASES)
def test_simulator_catches_a_missing_mechanism(
    switch: str, faults: dict[str, object], bound: int, expected: str
) -> None:
    # Without leader-unreachable reports: the seeds and bounds below were found without
    # them (the "unreachable" profile and the default rates exercise those).
    faults = {"unreachable_report_rate": 0.0, "unreachable_seen": 0.0, **faults}
    safe = SimOptions(steps=600, **faults)  # type: ignore[arg-type]
    unsafe = replace(safe, unsafe={switch: True})
    failed = first_failure(unsafe, bound)
    assert failed is not None, f"no seed below {bound} failed with {switch}"
    assert expected in failed.failure
    assert "liveness" not in failed.failure
    control = run_seed(failed.seed, safe)
    assert control.ok, control.failure
