"""One seed, one run: the simulator replays exactly."""

import re

import pytest

from keel_store.sim import SimOptions, run_seed
from keel_store.sim.options import SimOptions as Options


def test_same_seed_same_run() -> None:
    a = run_seed(7, SimOptions(steps=300), verbose=True)
    b = run_seed(7, SimOptions(steps=300), verbose=True)
    assert a.ok
    assert b.ok
    assert a.log == b.log
    assert (a.committed, a.messages, a.completed_ops) == (b.committed, b.messages, b.completed_ops)


def test_different_seeds_differ() -> None:
    runs = {run_seed(s, SimOptions(steps=300)).messages for s in range(4)}
    assert len(runs) > 1


def test_runs_exercise_the_faults_they_claim() -> None:
    results = [run_seed(s, Options()) for s in range(20)]
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok]
    assert sum(r.crashes for r in results) > 10
    assert sum(r.elections for r in results) > 40
    assert sum(r.unknown_ops for r in results) > 0
    assert all(r.acked_writes > 0 for r in results)
    assert sum(r.snapshots_sent for r in results) > 0
    assert sum(r.membership_changes for r in results) > 0
    assert sum(r.transfers for r in results) > 0
    assert sum(r.unreachable_reports for r in results) > 10
    assert all(r.linearizable for r in results)


def test_many_leader_unreachable_reports_keep_every_invariant() -> None:
    """Leader crashes seen by every follower (early campaigns), many wrong reports."""
    options = Options(crash_rate=0.02, restart_rate=0.2, unreachable_report_rate=0.05)
    options.unreachable_seen = 1.0
    results = [run_seed(s, options) for s in range(12)]
    assert all(r.ok for r in results), [r.failure for r in results if not r.ok]
    assert sum(r.unreachable_reports for r in results) > 200


def test_options_from_the_command_line_are_checked() -> None:
    options = Options()
    options.set("drop_rate=0.5")
    options.set("pre_vote=false")
    assert options.drop_rate == 0.5
    assert options.pre_vote is False


@pytest.mark.parametrize("bad", ["nosuch=1", "drop_rate", "pre_vote=maybe", "nodes=x"])
def test_bad_option_names_the_assignment(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        Options().set(bad)
