"""``snapshot.save_chunks``: the bytes of ``save`` in bounded chunks, whatever the
histories look like."""

from __future__ import annotations

import random

import pytest

from keel_store.mvcc import snapshot
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb


def _state(seed: int) -> StateMachine:
    rng = random.Random(seed)
    sm = StateMachine()
    lease = sm.lease_grant(rpcpb.LeaseGrantRequest(ID=7, TTL=60)).ID
    for i in range(400):
        key = b"k%03d" % rng.randrange(150)
        if rng.random() < 0.15:
            sm.delete_range(rpcpb.DeleteRangeRequest(key=key))
        else:
            value = rng.randbytes(rng.choice((0, 10, 300, 5000)))
            sm.put(rpcpb.PutRequest(key=key, value=value, lease=lease if i % 7 == 0 else 0))
    sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision - 100))
    return sm


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [1, 1000, 64 << 10, snapshot.CHUNK])
def test_chunks_join_to_save_and_restore(seed: int, chunk: int) -> None:
    sm = _state(seed)
    whole = snapshot.save(sm)
    chunks = list(snapshot.save_chunks(sm, chunk))
    assert b"".join(chunks) == whole
    assert snapshot.save(snapshot.restore(whole)) == whole
    # A chunk ends after the key history that filled it: at most one history more.
    longest = max(
        8 + len(key) + sum(16 + (kv.ByteSize() if kv else 0) for kv in history.kvs)
        for key, history in sm.kv.histories()
    )
    assert all(len(c) <= chunk - 1 + longest for c in chunks[1:])
    if chunk < len(whole) // 4:
        assert len(chunks) > 1
