"""Restart decisions, back-off and health states (unit)."""

from __future__ import annotations

import itertools

import pytest

from keel_supervisor import policy


@pytest.mark.parametrize(
    "case",
    [
        ("no", 0, 1, 0, False, False),
        ("on-failure", 0, 0, 0, False, False),
        ("on-failure", 0, 137, 50, False, True),
        ("on-failure", 2, 1, 1, False, True),
        ("on-failure", 2, 1, 2, False, False),
        ("always", 0, 0, 9, False, True),
        ("unless-stopped", 0, 0, 0, False, True),
        ("always", 0, 0, 0, True, False),
    ],
)
def test_should_restart(case: tuple[str, int, int, int, bool, bool]) -> None:
    name, retries, code, restarts, stopped, expected = case
    assert policy.should_restart(name, retries, code, restarts, stopped=stopped) is expected


def test_start_at_boot() -> None:
    assert policy.start_at_boot("always", stopped=True, last_exit=0)
    assert not policy.start_at_boot("unless-stopped", stopped=True, last_exit=0)
    assert policy.start_at_boot("unless-stopped", stopped=False, last_exit=None)
    assert policy.start_at_boot("on-failure", stopped=False, last_exit=255)
    assert not policy.start_at_boot("on-failure", stopped=False, last_exit=0)
    assert not policy.start_at_boot("no", stopped=False, last_exit=1)


def test_backoff_doubles_and_caps() -> None:
    waits = [policy.backoff(n) for n in range(12)]
    assert waits[:3] == [0.1, 0.2, 0.4]
    assert all(b >= a for a, b in itertools.pairwise(waits))
    assert waits[-1] == policy.BACKOFF_MAX


def test_health_tracker_counts_failures_after_start_period() -> None:
    tracker = policy.HealthTracker(retries=2, start_period=5.0, started=100.0)
    assert tracker.record(False, 101.0) == "starting"  # within the start period
    assert tracker.record(True, 102.0) == "healthy"
    assert tracker.record(False, 103.0) == "healthy"
    assert tracker.record(False, 104.0) == "unhealthy"
    assert tracker.record(True, 105.0) == "healthy"
    assert tracker.failing_streak == 0
