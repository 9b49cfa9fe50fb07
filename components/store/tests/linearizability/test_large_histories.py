"""Histories of the size real-process tests produce: thousands of operations per key."""

from __future__ import annotations

import random

import pytest

from keel_store.linearizability import Kind, Operation, check


def register_history(
    seed: int, ops: int, clients: int = 5, keys: int = 1, unknown: float = 0.0
) -> list[Operation]:
    """Clients run operations against one true register per key; each takes effect at a
    random instant inside its interval. Some replies are lost (``unknown`` share)."""
    rng = random.Random(seed)
    free_at = [0.0] * clients
    planned = []
    for n in range(ops):
        client = rng.randrange(clients)
        call = free_at[client] + rng.random()
        ret = call + rng.random() * 3
        free_at[client] = ret
        kind = rng.choice([Kind.GET, Kind.GET, Kind.PUT, Kind.CAS, Kind.DELETE])
        key = f"key{rng.randrange(keys)}"
        value = f"v{n}" if kind in (Kind.PUT, Kind.CAS) else None
        expected = rng.choice([None, f"v{max(0, n - rng.randrange(1, 6))}"])
        planned.append((rng.uniform(call, ret), client, call, ret, kind, key, value, expected))
    planned.sort()
    state: dict[str, object] = {}
    history = []
    for _, client, call, ret, kind, key, value, expected in planned:
        before = state.get(key)
        if kind is Kind.GET:
            output: object = before
        elif kind is Kind.PUT:
            state[key], output = value, None
        elif kind is Kind.DELETE:
            state.pop(key, None)
            output = before is not None
        else:
            output = before == expected
            if output:
                state[key] = value
        lost = kind is not Kind.GET and rng.random() < unknown
        history.append(
            Operation(client, call, None if lost else ret, kind, key, value, expected, output)
        )
    return history, state


@pytest.mark.parametrize("seed", range(3))
def test_thousands_of_operations_on_one_key_are_linearizable(seed):
    history, _ = register_history(seed, 4000)
    assert check(history, timeout=120).ok is True


def test_many_keys_with_lost_replies_are_linearizable():
    history, _ = register_history(7, 6000, clients=8, keys=20, unknown=0.05)
    assert check(history, timeout=120).ok is True


def test_a_read_of_a_value_never_written_is_found_in_a_long_history():
    history, _ = register_history(11, 4000)
    reads = [i for i, o in enumerate(history) if o.kind is Kind.GET]
    victim = reads[len(reads) // 2]
    o = history[victim]
    history[victim] = Operation(o.client, o.call, o.ret, o.kind, o.key, output="never")
    result = check(history, timeout=120)
    assert result.ok is False
    assert history[victim] in result.operations
    assert "read 'never'" in result.explanation


def test_a_stale_read_at_the_end_of_a_long_history_is_found():
    history, final = register_history(12, 4000)
    end = max(o.ret for o in history if o.ret is not None)

    def read_at_end(output):
        return [*history, Operation(99, end + 1, end + 2, Kind.GET, "key0", output=output)]

    assert check(read_at_end(final.get("key0"))).ok is True
    older = next(o.value for o in reversed(history) if o.value not in (None, final.get("key0")))
    result = check(read_at_end(older))
    assert result.ok is False
    assert result.key == "key0"


def test_twenty_overlapping_clients_on_one_key():
    # About fifteen operations in flight at any time: without taking reads greedily the
    # search space explodes and this times out.
    history, _ = register_history(5, 2000, clients=20)
    assert check(history, timeout=120).ok is True
