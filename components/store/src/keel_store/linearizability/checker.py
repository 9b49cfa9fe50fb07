"""Wing & Gong's search with Lowe's memoisation, one key at a time (as porcupine does).

The history of one key becomes a doubly linked list of call and return events in time
order. The search walks it from the head: at a call it tries to make that operation take
effect now (the model says whether its output is possible); if so and the pair
(set of operations taken effect, key value) has not been seen before, it lifts the
operation out of the list, pushes it and restarts at the head. Reaching a return means
that operation had to take effect before it and could not: the search pops the last
choice and tries the next call after it. The seen-set is what keeps the search from
re-exploring the same (set, value) through another order, which makes ordinary histories
close to linear instead of factorial.

Keys are independent (every operation touches one key), so a history is linearizable
if and only if each key's sub-history is; each is checked on its own.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from .history import Kind, Operation, Value, validate
from .model import step, why_not

_CLOCK_EVERY = 2048
"""Iterations between two looks at the clock when a timeout is set."""
_SHOWN = 6
"""How many operations of the longest legal prefix an explanation shows."""


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict on a history.

    ``ok`` is True (linearizable), False (a violation on ``key``, described by
    ``explanation`` with the ``operations`` involved) or None (the timeout struck before
    a verdict; ``key`` is the one being checked).
    """

    ok: bool | None
    key: Hashable | None = None
    explanation: str = ""
    operations: tuple[Operation, ...] = ()


class _Timeout(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Stuck:
    """The deepest point the search reached on a key that is not linearizable."""

    prefix: tuple[int, ...]
    """Operations (indices) that took effect, in order."""
    value: Value
    """The key's value after them."""
    blocked: int
    """The operation whose return came before it could take effect."""


def check(history: Iterable[Operation], timeout: float | None = None) -> Result:
    """Decide whether ``history`` is linearizable for a key-value store.

    ``timeout`` (seconds, wall clock) bounds the whole check; when it strikes the result
    has ``ok=None``. Every key starts absent. Raises
    :class:`~keel_store.linearizability.history.HistoryError` for a malformed history.
    """
    ops = validate(history)
    deadline = None if timeout is None else time.monotonic() + timeout
    by_key: dict[Hashable, list[Operation]] = {}
    for op in ops:
        # A read whose reply never came constrains nothing: leave it out.
        if op.kind is Kind.GET and op.ret is None:
            continue
        by_key.setdefault(op.key, []).append(op)
    undecided: list[Hashable] = []
    for key, key_ops in by_key.items():
        try:
            stuck = _search(key_ops, deadline)
        except _Timeout:
            # Go on: a violation found on another key is still a definite answer.
            undecided.append(key)
            continue
        if stuck is not None:
            return _explain(key, key_ops, stuck)
    if undecided:
        keys = ", ".join(repr(k) for k in undecided[:5])
        more = f" and {len(undecided) - 5} more" if len(undecided) > 5 else ""
        return Result(None, undecided[0], f"timed out after {timeout}s on key(s) {keys}{more}")
    return Result(True)


def _search(ops: list[Operation], deadline: float | None) -> _Stuck | None:
    """Search one key's operations; None if linearizable, else where the search got stuck."""
    n = len(ops)
    # Events sorted by time; at equal times calls come first, so operations that touch
    # the same instant count as concurrent (never a false alarm from a coarse clock).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()
    m = len(events)
    end = m + 1
    # Node 0 is the head, node m+1 the end; node k (1..m) is events[k-1].
    nxt = [*range(1, m + 2), end]
    prv = [0, *range(0, m + 1)]
    node_op = [-1] * (m + 2)
    node_call = [False] * (m + 2)
    ret_node = [-1] * n
    for k, (_, is_ret, i) in enumerate(events, start=1):
        node_op[k] = i
        node_call[k] = not is_ret
        if is_ret:
            ret_node[i] = k
    completed = sum(1 for op in ops if op.ret is not None)

    # A read (or a failed cas) changes nothing: if it can take effect now, some order
    # that works (if any does) has it take effect now. So at every step the search first
    # looks for such an operation and takes it without making it a choice point, which
    # keeps the search narrow when many clients overlap.
    read_only = [
        op.ret is not None and (op.kind is Kind.GET or (op.kind is Kind.CAS and not op.output))
        for op in ops
    ]
    seen: set[tuple[int, Value]] = set()
    stack: list[tuple[int, Value, bool]] = []  # (call node lifted, value before, forced)
    linearized = 0
    done = 0
    value: Value = None
    best: _Stuck | None = None
    iterations = 0
    node = nxt[0]
    reads_first = True
    # Operations of unknown outcome need not take effect (they can go last, unseen), so
    # the search is over once every completed operation has.
    while done < completed:
        iterations += 1
        if deadline is not None and iterations % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            raise _Timeout
        assert node != end, "an unlinearized completed operation's return is in the list"
        i = node_op[node]
        failed = False
        if node_call[node]:
            if reads_first and not read_only[i]:
                node = nxt[node]
                continue
            legal, after = step(value, ops[i])
            if legal:
                bits = linearized | (1 << i)
                if (bits, after) not in seen:
                    seen.add((bits, after))
                    stack.append((node, value, reads_first))
                    linearized, value = bits, after
                    # Lift the call and its return out of the list.
                    nxt[prv[node]] = nxt[node]
                    prv[nxt[node]] = prv[node]
                    r = ret_node[i]
                    if r >= 0:
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        done += 1
                    node = nxt[0]
                    reads_first = True
                    continue
                # A forced read into a state already explored: this state fails too.
                failed = reads_first
            if not failed:
                node = nxt[node]
                continue
        elif reads_first:
            reads_first = False
            node = nxt[0]
            continue
        # A return: operation i had to take effect by now and could not.
        elif best is None or len(stack) > len(best.prefix):
            best = _Stuck(tuple(node_op[c] for c, _, _ in stack), value, i)
        # Back to the last choice, undoing forced steps on the way.
        while True:
            if not stack:
                assert best is not None
                return best
            node, value, forced = stack.pop()
            i = node_op[node]
            linearized &= ~(1 << i)
            r = ret_node[i]
            if r >= 0:
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                done -= 1
            nxt[prv[node]] = node
            prv[nxt[node]] = node
            if not forced:
                break
        node = nxt[node]
        reads_first = False
    return None


def _explain(key: Hashable, ops: list[Operation], stuck: _Stuck) -> Result:
    """Describe the deepest legal prefix and why nothing could extend it."""
    blocked = ops[stuck.blocked]
    assert blocked.ret is not None
    held = "absent" if stuck.value is None else repr(stuck.value)
    taken = set(stuck.prefix)
    # Operations that could have taken effect before the blocked one had to return.
    rivals = [
        i
        for i, op in enumerate(ops)
        if i not in taken and i != stuck.blocked and op.call <= blocked.ret
    ]
    lines = [f"key {key!r} is not linearizable."]
    if stuck.prefix:
        shown = stuck.prefix[-_SHOWN:]
        skipped = len(stuck.prefix) - len(shown)
        head = f" (the first {skipped} not shown)" if skipped else ""
        lines.append(f"The longest legal order takes {len(stuck.prefix)} operations{head}:")
        lines.extend(f"  {ops[i].describe()}" for i in shown)
        lines.append(f"after which the key is {held}.")
    else:
        lines.append("No operation can take effect first; the key starts absent.")
    legal_now, _ = step(stuck.value, blocked)
    if legal_now:
        lines.append(f"Then {blocked.describe()} must take effect; every order from there fails.")
    else:
        lines.append(
            f"Then {blocked.describe()} cannot take effect: {why_not(stuck.value, blocked)}."
        )
    if rivals:
        lines.append("Operations that could have come first:")
        for i in rivals:
            ok, _ = step(stuck.value, ops[i])
            note = "" if ok else f" ({why_not(stuck.value, ops[i])})"
            lines.append(f"  {ops[i].describe()}{note}")
    involved = [*stuck.prefix[-_SHOWN:], stuck.blocked, *rivals]
    return Result(False, key, "\n".join(lines), tuple(ops[i] for i in involved))
