"""Client operations as the simulator records them, and the linearizability verdict.

The checker itself lives in :mod:`keel_store.linearizability`; this module converts the
simulator's records to its input.
"""

from __future__ import annotations

from dataclasses import dataclass

from keel_store.linearizability import Kind, Operation, check
from keel_store.sim.kv import ABSENT


@dataclass(slots=True)
class SimOp:
    """One client operation; ``ret`` stays None while pending or when its outcome is unknown."""

    op_id: int
    client: int
    kind: str
    """get, put, delete or cas."""
    key: str
    call: int
    value: str = ABSENT
    expected: str = ABSENT
    ret: int | None = None
    output: str | bool | None = None
    node: int = 0
    """The node the client sent it to."""
    deadline: int = 0

    def describe(self) -> str:
        """One line for failure reports."""
        end = "unknown" if self.ret is None else f"{self.ret} -> {self.output!r}"
        return (
            f"op {self.op_id} client {self.client} {self.kind}({self.key!r}, value={self.value!r},"
            f" expected={self.expected!r}) via node {self.node} [{self.call}, {end}]"
        )


_KINDS = {"get": Kind.GET, "put": Kind.PUT, "delete": Kind.DELETE, "cas": Kind.CAS}


def to_operations(ops: list[SimOp]) -> list[Operation]:
    """The history in the checker's terms (empty string: absent)."""
    return [
        Operation(
            client=op.client,
            call=op.call,
            ret=op.ret,
            kind=_KINDS[op.kind],
            key=op.key,
            value=op.value or None,
            expected=op.expected or None,
            output=op.output,
        )
        for op in ops
    ]


def check_linearizable(ops: list[SimOp], timeout: float = 60.0) -> tuple[bool | None, str]:
    """(verdict, explanation); verdict None if the checker ran out of ``timeout`` seconds."""
    result = check(to_operations(ops), timeout=timeout)
    return result.ok, result.explanation
