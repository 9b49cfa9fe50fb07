"""The sequential specification of one key: what each operation does to its value.

The state is the key's value (``None``: absent). An operation with an unknown outcome is
legal in every state: if it took effect it did so as its kind says; if it did not, the
search places it after everything else, where its effect is invisible.
"""

from __future__ import annotations

from .history import Kind, Operation, Value


def step(state: Value, op: Operation) -> tuple[bool, Value]:
    """Apply ``op`` to ``state``: whether its recorded output is possible, and the new state."""
    kind = op.kind
    if kind is Kind.GET:
        return (op.ret is None or op.output == state), state
    if kind is Kind.PUT:
        return True, op.value
    if kind is Kind.DELETE:
        legal = op.ret is None or op.output is None or op.output == (state is not None)
        return legal, None
    # CAS
    holds = state == op.expected
    if op.ret is None:
        return True, (op.value if holds else state)
    if op.output:
        return holds, op.value
    return not holds, state


def why_not(state: Value, op: Operation) -> str:
    """Why ``op`` cannot take effect when its key holds ``state`` (for ``step`` failures)."""
    held = "absent" if state is None else repr(state)
    if op.kind is Kind.GET:
        read = "absent" if op.output is None else repr(op.output)
        return f"it read {read} but the key held {held}"
    if op.kind is Kind.DELETE:
        return f"it reported existed={op.output!r} but the key was {held}"
    expected = "absent" if op.expected is None else repr(op.expected)
    if op.output:
        return f"it succeeded expecting {expected} but the key held {held}"
    return f"it failed although the key held the expected {held}"
