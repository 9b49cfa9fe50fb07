"""Reads of the latest revision walk the live keys only (``KeySpace._live``), and agree
with reading every key's history at that revision, through random writes, ranged
deletes, txns, compactions and a snapshot restore."""

from __future__ import annotations

import random

import pytest

from keel_store.mvcc import keyspace, snapshot
from keel_store.mvcc.keyspace import KeyHistory, prefix_end
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

R = rpcpb.RangeRequest
KEYS = [b"k%02d" % i for i in range(40)]


def _oracle(sm: StateMachine, key: bytes, end: bytes, revision: int) -> list[rpcpb.KeyValue]:
    """Every key's history read at ``revision``: what a range must return."""
    out = []
    for k, history in sm.kv.histories():
        inside = k == key if not end else k >= key and (end == b"\0" or k < end)
        kv = history.at(revision) if inside else None
        if kv is not None:
            out.append(kv)
    return out


def _ranges(rng: random.Random) -> list[tuple[bytes, bytes]]:
    a, b = sorted(rng.sample(KEYS, 2))
    return [(a, b), (a, b""), (b"k", b"\0"), (a, b"\0"), (b"k1", prefix_end(b"k1")), (b, a)]


def _check(sm: StateMachine, rng: random.Random) -> None:
    kv = sm.kv
    for revision in {kv.revision, rng.randint(max(kv.compact_revision, 1), kv.revision)}:
        for key, end in _ranges(rng):
            want = _oracle(sm, key, end, revision)
            assert kv.range(key, end, revision) == want
            assert kv.count(key, end, revision) == len(want)
            for limit in (1, 3):
                assert kv.window(key, end, revision, limit) == (len(want), want[:limit])
                assert kv.window(key, end, revision, limit, True) == (len(want), want[-limit:])


def _random_write(sm: StateMachine, rng: random.Random) -> None:
    roll = rng.random()
    if roll < 0.55:
        sm.put(rpcpb.PutRequest(key=rng.choice(KEYS), value=b"%d" % rng.randrange(1000)))
    elif roll < 0.75:
        sm.delete_range(rpcpb.DeleteRangeRequest(key=rng.choice(KEYS)))
    elif roll < 0.85:
        a, b = sorted(rng.sample(KEYS, 2))
        sm.delete_range(rpcpb.DeleteRangeRequest(key=a, range_end=b))
    elif roll < 0.95:  # a txn: a delete, then puts outside its range, then a read
        a, b = sorted(rng.sample(KEYS[:20], 2))
        ops = [rpcpb.RequestOp(request_delete_range=rpcpb.DeleteRangeRequest(key=a, range_end=b))]
        ops += [
            rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=k, value=b"t"))
            for k in rng.sample(KEYS[20:], 2)
        ]
        ops.append(rpcpb.RequestOp(request_range=R(key=b"k", range_end=b"\0", limit=2)))
        resp = sm.txn(rpcpb.TxnRequest(success=ops))
        read = resp.responses[-1].response_range
        want = _oracle(sm, b"k", b"\0", sm.kv.revision)
        assert (read.count, list(read.kvs)) == (len(want), want[:2])
    elif sm.kv.revision > sm.kv.compact_revision + 5:
        sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision - rng.randrange(5)))


@pytest.mark.parametrize("seed", range(6))
def test_live_keys_agree_with_the_histories(seed: int) -> None:
    rng = random.Random(seed)
    sm = StateMachine()
    for step in range(600):
        _random_write(sm, rng)
        _check(sm, rng)
        if step % 200 == 199:  # a snapshot restore rebuilds the live keys
            restored = snapshot.restore(snapshot.save(sm))
            assert list(restored.kv._live) == list(sm.kv._live)
            sm = restored
            _check(sm, rng)


def test_range_options_read_the_same_through_both_paths() -> None:
    """Key order without revision filters takes the live-key path; a filter that keeps
    everything (``min_mod_revision=1``) takes the general one: same answers."""
    sm = StateMachine()
    for i in range(30):
        sm.put(rpcpb.PutRequest(key=b"k%02d" % i, value=b"v%d" % i))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k05", range_end=b"k15"))
    for options in (
        {},
        {"limit": 4},
        {"limit": 4, "sort_order": R.DESCEND},
        {"limit": 4, "sort_order": R.ASCEND},
        {"limit": 100, "sort_order": R.DESCEND},
        {"count_only": True},
        {"keys_only": True, "limit": 2},
    ):
        fast = sm.range(R(key=b"k", range_end=b"l", **options))
        general = sm.range(R(key=b"k", range_end=b"l", min_mod_revision=1, **options))
        assert fast == general, options
        assert fast.count == 20


def test_a_limited_read_of_the_latest_revision_skips_deleted_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``get --prefix --limit=1`` after deleting 5,000 keys reads no deleted key's history
    (it walked all of them, on the event loop: 0.2 s for 600k keys with three members),
    and counting at an older revision still reads them all."""
    sm = StateMachine()
    for i in range(5000):
        sm.put(rpcpb.PutRequest(key=b"big/%05d" % i, value=b"v"))
    sm.put(rpcpb.PutRequest(key=b"big/zz", value=b"live"))
    before = sm.kv.revision
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"big/0", range_end=b"big/9"))
    reads = 0
    at = KeyHistory.at

    def counted(self: KeyHistory, revision: int) -> rpcpb.KeyValue | None:
        nonlocal reads
        reads += 1
        return at(self, revision)

    monkeypatch.setattr(KeyHistory, "at", counted)
    resp = sm.range(R(key=b"big/", range_end=prefix_end(b"big/"), limit=1))
    assert (resp.count, [kv.value for kv in resp.kvs], resp.more) == (1, [b"live"], False)
    assert reads == 0
    old = sm.range(R(key=b"big/", range_end=prefix_end(b"big/"), limit=1, revision=before))
    assert (old.count, old.more) == (5001, True)
    assert reads == 5001
    assert keyspace.BUSY_EVERY < 5000  # the delete above was a paced one
