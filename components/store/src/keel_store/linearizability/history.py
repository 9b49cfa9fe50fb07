"""The input of the checker: key-value operations with their call and return times.

See :mod:`keel_store.linearizability` for the format in prose.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace

Value = Hashable | None
"""A key's value; ``None`` means the key is absent."""


class Kind(enum.StrEnum):
    """What an operation does to its key."""

    GET = "get"
    """Read the key; ``output`` is the value read (``None``: absent)."""
    PUT = "put"
    """Write ``value``; no output."""
    DELETE = "delete"
    """Remove the key; ``output`` is whether it existed (``None``: not observed)."""
    CAS = "cas"
    """Write ``value`` if the key holds ``expected`` (``None``: absent, i.e. put-if-absent);
    ``output`` is whether it did (a bool)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, as the client saw it.

    ``call`` and ``ret`` are readings of one clock shared by all clients (any unit).
    ``ret`` is ``None`` when the outcome is unknown (no reply, a timeout, a crashed
    client): the operation may or may not have taken effect, at any point after ``call``,
    and its ``output`` is ignored.
    """

    client: int
    call: float
    ret: float | None
    kind: Kind
    key: Hashable
    value: Value = None
    """PUT and CAS: the value written."""
    expected: Value = None
    """CAS: the value the key must hold (``None``: absent)."""
    output: Value = None
    """GET: the value read; CAS: a bool, whether it succeeded; DELETE: whether the key
    existed, or ``None`` if the client did not observe it; PUT: unused."""

    @property
    def known(self) -> bool:
        """Whether the client saw the outcome (a reply arrived)."""
        return self.ret is not None

    def describe(self) -> str:
        """A one-line human form, e.g. ``client 3: cas('k', 'a' -> 'b') = True  [10, 12]``."""
        if self.kind is Kind.GET:
            text = f"get({self.key!r})"
        elif self.kind is Kind.PUT:
            text = f"put({self.key!r}, {self.value!r})"
        elif self.kind is Kind.DELETE:
            text = f"delete({self.key!r})"
        else:
            text = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        if self.ret is None:
            outcome, end = " = unknown", "..."
        else:
            shows_output = self.kind in (Kind.GET, Kind.CAS) or self.output is not None
            outcome, end = (f" = {self.output!r}" if shows_output else ""), f"{self.ret:g}"
        return f"client {self.client}: {text}{outcome}  [{self.call:g}, {end}]"


class HistoryError(ValueError):
    """A history the checker cannot read; the message names the operation and field."""


def validate(history: Iterable[Operation]) -> list[Operation]:
    """Return the history as a list after checking each operation is well formed.

    Raises :class:`HistoryError` naming the operation's position and the bad field, so a
    broken recorder is told apart from a linearizability violation.
    """
    ops = list(history)
    for position, op in enumerate(ops):
        if not isinstance(op, Operation):
            raise HistoryError(f"history[{position}]: {op!r} is not an Operation")
        where = f"history[{position}] ({op.kind})"
        if not isinstance(op.kind, Kind):
            raise HistoryError(f"{where}: kind {op.kind!r} is not a Kind")
        if op.ret is not None and op.ret < op.call:
            raise HistoryError(f"{where}: ret {op.ret!r} is before call {op.call!r}")
        if op.kind in (Kind.PUT, Kind.CAS) and op.value is None:
            raise HistoryError(f"{where}: value is None; use DELETE to remove a key")
        if op.kind is Kind.CAS and op.known and not isinstance(op.output, bool):
            raise HistoryError(f"{where}: output {op.output!r} must be True or False")
        if op.kind is Kind.DELETE and op.output is not None and not isinstance(op.output, bool):
            raise HistoryError(f"{where}: output {op.output!r} must be True, False or None")
    return ops


class Recorder:
    """Builds a history while clients run: ``invoke`` before a request, ``complete`` after.

    Operations never completed are reported with an unknown outcome. The clock is
    injectable so a simulator can record in its own virtual time.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ops: dict[int, Operation] = {}
        self._ids = itertools.count()

    def invoke(
        self,
        client: int,
        kind: Kind,
        key: Hashable,
        value: Value = None,
        expected: Value = None,
    ) -> int:
        """Record that ``client`` sent a request; returns the handle for ``complete``."""
        handle = next(self._ids)
        self._ops[handle] = Operation(client, self._clock(), None, kind, key, value, expected)
        return handle

    def complete(self, handle: int, output: Value = None) -> None:
        """Record the reply to ``handle`` with what it returned (see :class:`Operation`)."""
        op = self._ops[handle]
        if op.ret is not None:
            raise HistoryError(f"{op.describe()}: completed twice")
        self._ops[handle] = replace(op, ret=self._clock(), output=output)

    def history(self) -> list[Operation]:
        """Every operation so far, in invocation order; pending ones have ``ret=None``."""
        return list(self._ops.values())
