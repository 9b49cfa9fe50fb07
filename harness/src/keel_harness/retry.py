"""One polling helper behind every ``wait_*`` of the harness (the NixOS driver's ``retry``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from keel_harness.errors import RetryTimeout

T = TypeVar("T")


def retry(
    check: Callable[[bool], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``check(last_try)`` until it returns something other than ``None`` or ``False``.

    ``last_try`` is true on the final attempt so the check can gather a diagnostic (and
    raise its own, more precise error). Exceptions from ``check`` propagate at once: a
    check returns ``None`` to mean "not yet" and raises to mean "never". Raises
    :class:`RetryTimeout` naming ``what`` when ``timeout`` seconds pass.
    """
    deadline = clock() + timeout
    while True:
        last = clock() + interval >= deadline
        result = check(last)
        if result is not None and result is not False:
            return result
        if last:
            raise RetryTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        sleep(max(0.0, min(interval, deadline - clock())))
