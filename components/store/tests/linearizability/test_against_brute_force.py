"""Random small histories: the checker must agree with an exhaustive search."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel_store.linearizability import Kind, Operation, check
from keel_store.linearizability.model import step

VALUES = ["a", "b"]
KEYS = ["x", "x", "x", "y"]
"""Mostly one key, so operations interact; sometimes two, to exercise the split."""


def brute_force(history: list[Operation]) -> bool:
    """Try every order that respects real time, with every subset of unknown operations.

    An operation of unknown outcome either took effect (it is in the order) or did not.
    """
    history = [o for o in history if not (o.kind is Kind.GET and o.ret is None)]
    for key in {o.key for o in history}:
        ops = [o for o in history if o.key == key]
        known = [o for o in ops if o.ret is not None]
        unknown = [o for o in ops if o.ret is None]
        if not any(
            _some_order_is_legal(known + list(chosen))
            for r in range(len(unknown) + 1)
            for chosen in itertools.combinations(unknown, r)
        ):
            return False
    return True


def _some_order_is_legal(ops: list[Operation]) -> bool:
    for order in itertools.permutations(ops):
        # Real time: if a returned before b was called, a comes first.
        if any(
            later.ret is not None and later.ret < earlier.call
            for pos, earlier in enumerate(order)
            for later in order[pos + 1 :]
        ):
            continue
        value = None
        for o in order:
            legal, value = step(value, o)
            if not legal:
                break
        else:
            return True
    return False


@st.composite
def random_operation(draw: st.DrawFn, client: int) -> Operation:
    kind = draw(st.sampled_from(list(Kind)))
    call = draw(st.integers(0, 10))
    ret = draw(st.one_of(st.none(), st.integers(call, call + 6)))
    value = draw(st.sampled_from(VALUES)) if kind in (Kind.PUT, Kind.CAS) else None
    expected = draw(st.sampled_from([None, *VALUES])) if kind is Kind.CAS else None
    if kind is Kind.GET:
        output = draw(st.sampled_from([None, *VALUES]))
    elif kind is Kind.CAS:
        output = draw(st.booleans())
    elif kind is Kind.DELETE:
        output = draw(st.sampled_from([None, True, False]))
    else:
        output = None
    return Operation(client, call, ret, kind, draw(st.sampled_from(KEYS)), value, expected, output)


@st.composite
def random_history(draw: st.DrawFn) -> list[Operation]:
    size = draw(st.integers(0, 6))
    return [draw(random_operation(client)) for client in range(size)]


@st.composite
def plausible_history(draw: st.DrawFn) -> list[Operation]:
    """Run random operations on a real register at random instants inside their intervals,
    record the true outputs, then perhaps corrupt one: mostly legal, sometimes just not."""
    ops = draw(random_history())
    points = [draw(st.integers(o.call, o.ret if o.ret is not None else 20)) for o in ops]
    applied = [draw(st.booleans()) if o.ret is None else True for o in ops]
    state: dict[str, object] = {}
    result = list(ops)
    for i in sorted(range(len(ops)), key=lambda i: points[i]):
        o = ops[i]
        if not applied[i]:
            continue
        before = state.get(o.key)
        if o.kind is Kind.GET:
            output: object = before
        elif o.kind is Kind.PUT:
            state[o.key], output = o.value, None
        elif o.kind is Kind.DELETE:
            state.pop(o.key, None)
            output = before is not None
        else:
            output = before == o.expected
            if output:
                state[o.key] = o.value
        result[i] = Operation(o.client, o.call, o.ret, o.kind, o.key, o.value, o.expected, output)
    if result and draw(st.booleans()):
        victim = draw(st.integers(0, len(result) - 1))
        result[victim] = draw(random_operation(result[victim].client))
    return result


FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(random_history())
def test_random_histories_agree_with_brute_force(history):
    assert check(history).ok is brute_force(history)


@FAST
@given(plausible_history())
def test_plausible_histories_agree_with_brute_force(history):
    assert check(history).ok is brute_force(history)


@settings(max_examples=100, deadline=None)
@given(plausible_history(), st.permutations(range(6)))
def test_order_of_the_input_does_not_matter(history, shuffle):
    order = [i for i in shuffle if i < len(history)]
    assert check([history[i] for i in order]).ok is check(history).ok
