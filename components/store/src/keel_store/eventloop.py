"""The event loop keel-store runs on: uvloop's, unless told otherwise.

Much of a request's CPU outside the store's own code is the event loop's (its Python
scheduling, transports and timers); uvloop implements the same asyncio API in C over
libuv. Measured on a 3-member cluster with sequential puts: the leader spends ~15-20%
less CPU per put (docs/store.md, "Fewer messages, a faster loop").

``KEEL_STORE_EVENT_LOOP=asyncio`` picks the standard library's loop (for debugging, or
where uvloop has no wheel); without uvloop installed the standard loop is used too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

_uvloop_new: Callable[[], asyncio.AbstractEventLoop] | None
try:
    from uvloop import new_event_loop as _uvloop_new
except ImportError:  # a dependency, but a platform may have no wheel for it
    _uvloop_new = None

log = logging.getLogger("keel_store.eventloop")

ENV = "KEEL_STORE_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")


class EventLoopChoiceError(ValueError):
    """``KEEL_STORE_EVENT_LOOP`` names no known loop."""


def loop_factory(environ: dict[str, str] | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """What :class:`asyncio.Runner` should build the daemon's loop with."""
    env = os.environ if environ is None else environ
    choice = env.get(ENV, "uvloop").strip().lower() or "uvloop"
    if choice not in CHOICES:
        raise EventLoopChoiceError(f"{ENV}={env[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "uvloop":
        if _uvloop_new is not None:
            return _uvloop_new
        log.warning("uvloop is not installed; running on asyncio's own event loop")
    return asyncio.new_event_loop
