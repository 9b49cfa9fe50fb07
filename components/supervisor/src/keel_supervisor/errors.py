"""The supervisor's error, in a module of its own: the CLI's client needs it, and
:mod:`keel_supervisor.model` (pydantic) would cost every ``keel run`` a third of a second."""

from __future__ import annotations

from keel_core.errors import KeelError


class SupervisorError(KeelError):
    """A request the supervisor cannot carry out; the message says what to do instead."""
