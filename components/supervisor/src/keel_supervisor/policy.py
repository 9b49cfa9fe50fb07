"""Restart decisions and back-off, kept free of I/O so that they are easy to test.

docker's rules: ``no`` never restarts; ``on-failure[:N]`` restarts after a non-zero exit,
at most N times when N is given; ``always`` and ``unless-stopped`` restart after any
exit. A container stopped by its user is never restarted by the monitor. When the
supervisor itself starts (after a reboot, say), ``always`` containers come back even if
their user had stopped them, ``unless-stopped`` ones only if they were not stopped.
"""

from __future__ import annotations

BACKOFF_START = 0.1
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
"""A container that ran this many seconds resets its back-off (docker does the same)."""


def should_restart(
    policy: str, max_retries: int, exit_code: int, restarts: int, *, stopped: bool
) -> bool:
    """Whether the monitor starts the container again after it ended with ``exit_code``.

    ``policy`` is the policy's name, ``restarts`` how many restarts happened already.
    """
    if stopped or policy == "no":
        return False
    if policy == "on-failure":
        if exit_code == 0:
            return False
        return max_retries == 0 or restarts < max_retries
    return True


def start_at_boot(policy: str, *, stopped: bool, last_exit: int | None) -> bool:
    """Whether the supervisor starts a container that is not running when it starts."""
    if policy == "always":
        return True
    if policy == "unless-stopped":
        return not stopped
    if policy == "on-failure":
        return not stopped and last_exit not in (None, 0)
    return False


def backoff(attempt: int) -> float:
    """Seconds to wait before restart number ``attempt`` (0-based): 0.1, 0.2, 0.4 ... 30."""
    return float(min(BACKOFF_MAX, BACKOFF_START * (2 ** max(0, attempt))))


class HealthTracker:
    """Turns check results into docker's health states: starting, healthy, unhealthy."""

    def __init__(self, retries: int, start_period: float, started: float) -> None:
        self.retries = retries
        self.start_period = start_period
        self.started = started
        self.status = "starting"
        self.failing_streak = 0

    def record(self, ok: bool, now: float) -> str:
        """Account for one check run at ``now``; returns the new status."""
        if ok:
            self.failing_streak = 0
            self.status = "healthy"
        elif now - self.started < self.start_period and self.status == "starting":
            pass  # failures while starting up do not count
        else:
            self.failing_streak += 1
            if self.failing_streak >= self.retries:
                self.status = "unhealthy"
        return self.status
