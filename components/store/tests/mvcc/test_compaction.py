"""Compaction visits the keys written since the last one (found in the change log),
not the whole key space, and leaves exactly what a walk over every key would."""

from __future__ import annotations

import bisect
import random
import types

import pytest

from keel_store.mvcc import keyspace, snapshot
from keel_store.mvcc.keyspace import BUSY_EVERY, ENTRY_OVERHEAD, KeySpace
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

from .test_live_keys import _random_write

History = tuple[list[int], list[object], list[int]]


def _histories(kv: KeySpace) -> dict[bytes, History]:
    return {k: (list(h.revs), list(h.kvs), list(h.subs)) for k, h in kv.histories()}


def _walk_every_key(before: dict[bytes, History], revision: int) -> dict[bytes, History]:
    """What compacting to ``revision`` leaves, by a walk over every key's history."""
    out = {}
    for key, (revs, kvs, subs) in before.items():
        i = bisect.bisect_right(revs, revision) - 1
        drop = 0 if i < 0 else i + 1 if kvs[i] is None else i
        if revs[drop:]:
            out[key] = (revs[drop:], kvs[drop:], subs[drop:])
    return out


def _size(kv: KeySpace) -> int:
    return sum(
        len(k) + ENTRY_OVERHEAD + (len(v.value) if v is not None else 0)
        for k, h in kv.histories()
        for v in h.kvs
    )


def _load(sm: StateMachine, keys: int) -> None:
    for start in range(0, keys, 100):
        ops = [
            rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%06d" % i, value=b"v"))
            for i in range(start, min(keys, start + 100))
        ]
        sm.txn(rpcpb.TxnRequest(success=ops))


@pytest.mark.parametrize("seed", range(8))
def test_compaction_leaves_what_a_walk_over_every_key_leaves(seed: int) -> None:
    """Random puts, ranged deletes, txns and compactions, with snapshot restores (after
    which the change log lacks what came before, until a watcher asks) in between:
    after each compaction the histories, the size and the key count are what a walk
    over every key gives."""
    rng = random.Random(seed)
    sm = StateMachine()
    compactions = 0
    for step in range(800):
        if rng.random() < 0.08 and sm.kv.revision > sm.kv.compact_revision + 1:
            revision = rng.randint(sm.kv.compact_revision + 1, sm.kv.revision)
            expected = _walk_every_key(_histories(sm.kv), revision)
            sm.compact(rpcpb.CompactionRequest(revision=revision))
            compactions += 1
            assert _histories(sm.kv) == expected
            assert sm.kv.size == _size(sm.kv)
            assert sm.kv.key_count == len(expected)
        else:
            _random_write(sm, rng)
        if step % 250 == 249:
            sm = snapshot.restore(snapshot.save(sm))
    assert compactions > 30


def test_a_compaction_visits_the_keys_updated_since_the_last_one_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20,000 keys created: the first compaction visits none of them (each has one
    version); after 100 updates and 10 deletes, the next one visits those 110 keys.
    A walk over every key took 0.1 s per 200k keys, on every member at once."""
    sm = StateMachine()
    _load(sm, 20_000)
    visited: list[int] = []

    def bisect_right(a: list[int], x: int, *args: int) -> int:
        visited.append(x)
        return bisect.bisect_right(a, x, *args)

    counting = types.SimpleNamespace(bisect_right=bisect_right, bisect_left=bisect.bisect_left)
    monkeypatch.setattr(keyspace, "bisect", counting)
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision))
    assert len(visited) <= 2, len(visited)  # the log's bounds
    for i in range(100):
        sm.put(rpcpb.PutRequest(key=b"k/%06d" % (i * 150), value=b"w"))
    for i in range(10):
        sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/%06d" % (i * 150 + 1)))
    sm.put(rpcpb.PutRequest(key=b"new", value=b"n"))  # created: one version
    visited.clear()
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision))
    assert len(visited) <= 110 + 2, len(visited)  # a key each, and the log's bounds
    assert sm.kv.key_count == 20_000 - 10 + 1
    assert sm.range(rpcpb.RangeRequest(key=b"k/000150")).kvs[0].value == b"w"


def test_a_long_compaction_calls_busy_also_after_a_restore() -> None:
    keys = 3 * BUSY_EVERY + 10
    sm = StateMachine()
    _load(sm, keys)
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0"))
    restored = snapshot.restore(snapshot.save(sm))  # its keys walked: nothing logged
    for copy in (sm, restored):
        calls: list[None] = []
        copy.kv.busy = lambda calls=calls: calls.append(None)
        copy.compact(rpcpb.CompactionRequest(revision=copy.kv.revision))
        assert len(calls) == 3
        assert copy.kv.key_count == 0


def test_a_first_compaction_of_many_versions_walks_the_keys() -> None:
    """More versions in the log than keys (the first compaction of a busy store): the
    walk over the keys is cheaper and leaves the same."""
    sm = StateMachine()
    for _ in range(3):
        _load(sm, 500)
    expected = _walk_every_key(_histories(sm.kv), sm.kv.revision - 2)
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision - 2))
    assert _histories(sm.kv) == expected
    assert sm.kv.size == _size(sm.kv)
