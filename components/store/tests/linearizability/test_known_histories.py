"""Hand-written histories whose verdict is known, including the classic anomalies."""

from __future__ import annotations

import pytest

from keel_store.linearizability import (
    HistoryError,
    Kind,
    Operation,
    Recorder,
    check,
)

GET, PUT, DELETE, CAS = Kind.GET, Kind.PUT, Kind.DELETE, Kind.CAS


def op(client, call, ret, kind, key="k", *, value=None, expected=None, output=None):
    return Operation(client, call, ret, kind, key, value, expected, output)


def test_empty_history_is_linearizable():
    assert check([]).ok is True


def test_sequential_put_then_get():
    assert check([op(1, 0, 1, PUT, value="a"), op(2, 2, 3, GET, output="a")]).ok is True


def test_read_of_absent_key_before_any_write():
    assert check([op(1, 0, 1, GET, output=None), op(1, 2, 3, PUT, value="a")]).ok is True


def test_stale_read_is_a_violation():
    # write a, write b, then a read that returns a (Jepsen's etcd 0.4 finding).
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 3, PUT, value="b"),
        op(3, 4, 5, GET, output="a"),
    ]
    result = check(history)
    assert result.ok is False
    assert result.key == "k"
    assert "read 'a' but the key held 'b'" in result.explanation
    assert history[2] in result.operations


def test_read_concurrent_with_write_may_see_either_value():
    for seen in ("a", "b"):
        history = [
            op(1, 0, 1, PUT, value="a"),
            op(2, 2, 6, PUT, value="b"),
            op(3, 3, 5, GET, output=seen),
        ]
        assert check(history).ok is True, seen


def test_concurrent_writes_may_take_effect_in_either_order():
    for last in ("a", "b"):
        history = [
            op(1, 0, 5, PUT, value="a"),
            op(2, 0, 5, PUT, value="b"),
            op(3, 6, 7, GET, output=last),
        ]
        assert check(history).ok is True, last


def test_reads_may_not_go_back_in_time():
    # Two reads during one write: once the new value was seen, the old one may not be.
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 10, PUT, value="b"),
        op(3, 3, 4, GET, output="b"),
        op(4, 5, 6, GET, output="a"),
    ]
    assert check(history).ok is False


def test_lost_write_is_a_violation():
    # An acknowledged write vanishes: later reads see the key absent.
    history = [op(1, 0, 1, PUT, value="a"), op(2, 2, 3, GET, output=None)]
    result = check(history)
    assert result.ok is False
    assert "read absent but the key held 'a'" in result.explanation


def test_read_of_a_value_never_written_is_a_violation():
    assert check([op(1, 0, 1, PUT, value="a"), op(2, 0, 1, GET, output="z")]).ok is False


def test_two_cas_from_the_same_value_cannot_both_succeed():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 5, CAS, expected="a", value="b", output=True),
        op(3, 2, 5, CAS, expected="a", value="c", output=True),
    ]
    result = check(history)
    assert result.ok is False
    assert "succeeded expecting 'a'" in result.explanation


def test_one_cas_wins_and_the_other_fails():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 5, CAS, expected="a", value="b", output=True),
        op(3, 2, 5, CAS, expected="a", value="c", output=False),
        op(4, 6, 7, GET, output="b"),
    ]
    assert check(history).ok is True


def test_put_if_absent_twice_is_a_violation():
    history = [
        op(1, 0, 3, CAS, expected=None, value="x", output=True),
        op(2, 1, 4, CAS, expected=None, value="y", output=True),
    ]
    assert check(history).ok is False


def test_failed_cas_needs_a_different_value():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 3, CAS, expected="a", value="b", output=False),
    ]
    result = check(history)
    assert result.ok is False
    assert "failed although the key held the expected 'a'" in result.explanation


def test_delete_then_read_absent_and_existed_flag():
    good = [
        op(1, 0, 1, PUT, value="a"),
        op(1, 2, 3, DELETE, output=True),
        op(1, 4, 5, DELETE, output=False),
        op(2, 6, 7, GET, output=None),
    ]
    assert check(good).ok is True
    bad = [op(1, 0, 1, PUT, value="a"), op(1, 2, 3, DELETE, output=False)]
    assert check(bad).ok is False


def test_unknown_write_may_have_taken_effect():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, None, PUT, value="b"),
        op(3, 10, 11, GET, output="b"),
    ]
    assert check(history).ok is True


def test_unknown_write_may_never_have_taken_effect():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, None, PUT, value="b"),
        op(3, 10, 11, GET, output="a"),
    ]
    assert check(history).ok is True


def test_unknown_write_cannot_take_effect_before_its_call():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(3, 2, 3, GET, output="b"),
        op(2, 5, None, PUT, value="b"),
    ]
    assert check(history).ok is False


def test_unknown_write_takes_effect_once():
    # b appears, is overwritten by c, and cannot come back: the write happened once.
    history = [
        op(2, 0, None, PUT, value="b"),
        op(3, 1, 2, GET, output="b"),
        op(1, 3, 4, PUT, value="c"),
        op(3, 5, 6, GET, output="b"),
    ]
    assert check(history).ok is False


def test_unknown_cas_took_effect_only_if_it_could():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, None, CAS, expected="z", value="b"),
        op(3, 5, 6, GET, output="b"),
    ]
    assert check(history).ok is False
    history[1] = op(2, 2, None, CAS, expected="a", value="b")
    assert check(history).ok is True


def test_unknown_read_is_ignored():
    history = [op(1, 0, 1, PUT, value="a"), op(2, 2, None, GET, output="nonsense")]
    assert check(history).ok is True


def test_keys_are_checked_independently():
    history = [
        op(1, 0, 1, PUT, "x", value="a"),
        op(2, 2, 3, PUT, "y", value="b"),
        op(3, 4, 5, GET, "x", output="a"),
        op(3, 6, 7, GET, "y", output="a"),
    ]
    result = check(history)
    assert result.ok is False
    assert result.key == "y"


def test_equal_times_count_as_overlapping():
    history = [op(1, 0, 5, PUT, value="a"), op(2, 5, 6, GET, output=None)]
    assert check(history).ok is True


def test_explanation_names_the_rivals():
    history = [
        op(1, 0, 1, PUT, value="a"),
        op(2, 2, 9, PUT, value="b"),
        op(3, 3, 4, GET, output="c"),
    ]
    result = check(history)
    assert result.ok is False
    assert "get('k') = 'c'" in result.explanation
    assert "put('k', 'b')" in result.explanation


def test_a_violation_on_another_key_beats_a_timeout():
    slow = [op(1, 2 * t, 2 * t + 1, PUT, "big", value=t) for t in range(5000)]
    stale = [op(1, 0, 1, PUT, "small", value="a"), op(2, 2, 3, GET, "small", output=None)]
    result = check(slow + stale, timeout=0)
    assert result.ok is False
    assert result.key == "small"


def test_timeout_gives_no_verdict():
    history = [op(1, 2 * t, 2 * t + 1, PUT, value=t) for t in range(5000)]
    result = check(history, timeout=0)
    assert result.ok is None
    assert result.key == "k"
    assert check(history).ok is True


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (op(1, 5, 4, PUT, value="a"), "ret 4 is before call 5"),
        (op(1, 0, 1, PUT), "value is None"),
        (op(1, 0, 1, CAS, expected="a", value="b", output="yes"), "must be True or False"),
        (op(1, 0, 1, DELETE, output="gone"), "must be True, False or None"),
    ],
)
def test_malformed_history_names_the_operation(bad, message):
    good = op(1, 0, 1, PUT, value="a")
    with pytest.raises(HistoryError, match=r"history\[1\] \(\w+\).*" + message):
        check([good, bad])


def test_recorder_marks_pending_operations_unknown():
    now = [0.0]

    def clock():
        now[0] += 1
        return now[0]

    recorder = Recorder(clock)
    put = recorder.invoke(1, PUT, "k", value="a")
    recorder.complete(put)
    recorder.invoke(2, PUT, "k", value="b")  # never completes
    get = recorder.invoke(3, GET, "k")
    recorder.complete(get, "b")
    history = recorder.history()
    assert [o.ret for o in history] == [2.0, None, 5.0]
    assert check(history).ok is True
    with pytest.raises(HistoryError, match="completed twice"):
        recorder.complete(get, "b")
