"""A snapshot lists the keys in the key space's insertion order (the order its objects
were made in: a walk in key order was twice as slow), a restore keeps that order and
sorts its index, and members that applied the same changes write the same bytes."""

from __future__ import annotations

import random

from keel_store.mvcc import snapshot
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

R = rpcpb.RangeRequest


def _keys(rng: random.Random, n: int) -> list[bytes]:
    keys = [b"key-%04d" % i for i in range(n)]
    rng.shuffle(keys)
    return keys


def _apply(sm: StateMachine, rng: random.Random, keys: list[bytes], steps: int) -> None:
    for _ in range(steps):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.15:
            sm.delete_range(rpcpb.DeleteRangeRequest(key=key))
        elif roll < 0.2 and sm.kv.revision > sm.kv.compact_revision + 10:
            sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision - 5))
        else:
            sm.put(rpcpb.PutRequest(key=key, value=rng.randbytes(rng.randrange(50))))


def test_keys_are_listed_in_insertion_order_and_restored_sorted() -> None:
    sm = StateMachine()
    keys = _keys(random.Random(1), 300)
    for key in keys:
        sm.put(rpcpb.PutRequest(key=key, value=b"v-" + key))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=keys[7]))
    data = snapshot.save(sm)
    assert [data.index(key) for key in keys] == sorted(data.index(key) for key in keys)
    restored = snapshot.restore(data)
    assert [k for k, _ in restored.kv.histories()] == sorted(keys)
    assert list(restored.kv._live) == sorted(set(keys) - {keys[7]})
    got = restored.range(R(key=b"key-", range_end=b"key.", limit=5))
    assert [kv.key for kv in got.kvs] == sorted(set(keys) - {keys[7]})[:5]
    assert got.count == 299
    assert snapshot.save(restored) == data  # the order survives the restore


def test_a_restored_member_writes_the_bytes_of_the_member_it_came_from() -> None:
    """Deleted keys compacted away and put again move to the end of the order: a
    member restored from a snapshot, then given the same changes as the member that
    took it, lists them in the same place."""
    rng = random.Random(2)
    keys = _keys(rng, 60)
    leader = StateMachine()
    _apply(leader, rng, keys, 500)
    follower = snapshot.restore(snapshot.save(leader))
    seed = rng.random()
    for sm in (leader, follower):
        _apply(sm, random.Random(seed), keys, 500)
    assert snapshot.save(follower) == snapshot.save(leader)
    assert [k for k, _ in follower.kv.histories()] == sorted(k for k, _ in leader.kv.histories())
