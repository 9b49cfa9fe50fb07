"""Catch-up batches of 1,000 revisions, fragment splitting, sub revisions in snapshots."""

from __future__ import annotations

from keel_store.mvcc import snapshot
from keel_store.mvcc.keyspace import Event
from keel_store.mvcc.store import StateMachine
from keel_store.mvcc.watch import REPLAY_BATCH_REVISIONS, Watcher, WatchHub
from keel_store.pb import mvccpb, rpcpb
from keel_store.server.watch_fragments import fragments


def test_replay_is_batched_by_revisions_never_splitting_one() -> None:
    sm = StateMachine()
    hub = WatchHub(sm.kv)
    for i in range(REPLAY_BATCH_REVISIONS + 5):
        ops = [
            rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%d/%d" % (i, j), value=b"v"))
            for j in range(2)
        ]
        sm.txn(rpcpb.TxnRequest(success=ops))
    sm.put(rpcpb.PutRequest(key=b"elsewhere", value=b"v"))
    batches: list[list[Event]] = []
    hub.watch(Watcher(1, b"k/", b"k0", lambda _w, events: batches.append(events)), 1)
    assert [len(b) for b in batches] == [2 * REPLAY_BATCH_REVISIONS, 10]
    revisions = [e.kv.mod_revision for b in batches for e in b]
    assert revisions == sorted(revisions)
    assert batches[0][-1].kv.mod_revision != batches[1][0].kv.mod_revision


def response(sizes: list[int]) -> rpcpb.WatchResponse:
    resp = rpcpb.WatchResponse(watch_id=7)
    resp.header.revision = 99
    for i, size in enumerate(sizes):
        resp.events.add().kv.CopyFrom(mvccpb.KeyValue(key=b"k%03d" % i, value=b"x" * size))
    return resp


def test_fragments_stay_under_the_limit_and_keep_every_event() -> None:
    resp = response([300] * 10 + [5000] + [10] * 50)
    parts = fragments(resp, 1000)
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(p.watch_id == 7 and p.header.revision == 99 for p in parts)
    for part in parts:
        assert part.ByteSize() < 1000 or len(part.events) == 1  # one big event goes alone
    joined = [e.kv.key for p in parts for e in p.events]
    assert joined == [e.kv.key for e in resp.events]
    assert [len(p.events) for p in parts][:4] == [3, 3, 3, 1]


def test_small_or_single_event_responses_are_not_fragmented() -> None:
    small = response([10, 10])
    assert fragments(small, 1000) == [small]
    single = response([5000])
    assert fragments(single, 1000) == [single]
    assert not single.fragment


def test_snapshot_keeps_sub_revisions_and_event_order() -> None:
    sm = StateMachine()
    ops = [rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=k, value=b"v")) for k in (b"z", b"m")]
    sm.txn(rpcpb.TxnRequest(success=ops))
    before = snapshot.hash_kv(sm, sm.kv.revision)
    restored = snapshot.restore(snapshot.save(sm))
    changes, *_ = restored.kv.changes_since(2)
    assert [e.kv.key for e in changes.events()] == [b"z", b"m"]  # the txn's order, not key order
    assert snapshot.hash_kv(restored, restored.kv.revision) == before
    # A version-1 snapshot (no sub revisions) still restores.
    v1 = snapshot.save(sm).replace(snapshot.MAGIC, snapshot.MAGIC_V1, 1)
    head_end = v1.index(b"\n", len(snapshot.MAGIC_V1)) + 1
    body, out, pos = v1[head_end:], bytearray(v1[:head_end]), 0
    while pos < len(body):
        klen = int.from_bytes(body[pos : pos + 4], "big")
        count = int.from_bytes(body[pos + 4 + klen : pos + 8 + klen], "big")
        out += body[pos : pos + 8 + klen]
        pos += 8 + klen
        for _ in range(count):
            rev, _sub, length = snapshot._ENTRY.unpack_from(body, pos)
            out += snapshot._ENTRY_V1.pack(rev, length)
            pos += snapshot._ENTRY.size
            out += body[pos : pos + max(length, 0)]
            pos += max(length, 0)
    old = snapshot.restore(bytes(out))
    assert old.kv.get(b"m") is not None
    assert old.kv.get(b"m").value == b"v"  # type: ignore[union-attr]
