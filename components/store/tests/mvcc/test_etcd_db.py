"""The state machine in etcd's bbolt layout and back (keel_store.mvcc.etcd_db)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel_store.bbolt import BoltError, Bucket, read_db, write_db
from keel_store.mvcc import errors, snapshot
from keel_store.mvcc.etcd_db import (
    EtcdDBError,
    decode_lease,
    encode_lease,
    from_database,
    key_bucket,
    revision_key,
    to_buckets,
)
from keel_store.mvcc.store import StateMachine
from keel_store.pb import authpb, mvccpb, rpcpb


def _through_bbolt(sm: StateMachine) -> StateMachine:
    return from_database(read_db(write_db(to_buckets(sm))))


def _everything(sm: StateMachine) -> list[tuple[int, list[bytes]]]:
    """Every readable revision with the key space at it (serialized)."""
    out = []
    for rev in range(max(sm.kv.compact_revision, 1), sm.kv.revision + 1):
        resp = sm.range(rpcpb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
        out.append((rev, [kv.SerializeToString(deterministic=True) for kv in resp.kvs]))
    return out


def _sample() -> StateMachine:
    sm = StateMachine()
    sm.lease_grant(rpcpb.LeaseGrantRequest(ID=0x55, TTL=300))
    for i in range(40):
        sm.put(rpcpb.PutRequest(key=b"k%02d" % i, value=b"v%d" % i, lease=0x55 if i % 7 else 0))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k10", range_end=b"k15"))
    put = rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"t1", value=b"x"))
    put2 = rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"t2", value=b"y"))
    dele = rpcpb.RequestOp(request_delete_range=rpcpb.DeleteRangeRequest(key=b"k20"))
    sm.txn(rpcpb.TxnRequest(success=[put, put2, dele]))
    sm.compact(rpcpb.CompactionRequest(revision=30))
    sm.put(rpcpb.PutRequest(key=b"k03", value=b"again"))
    sm.auth.apply(rpcpb.AuthUserAddRequest(name="root", password="$2a$10$hash"))
    sm.auth.apply(rpcpb.AuthRoleAddRequest(name="reader"))
    perm = authpb.Permission(permType=authpb.Permission.READ, key=b"k", range_end=b"l")
    sm.auth.apply(rpcpb.AuthRoleGrantPermissionRequest(name="reader", perm=perm))
    sm.auth.apply(rpcpb.AuthUserGrantRoleRequest(user="root", role="root"))
    sm.auth.apply(rpcpb.AuthEnableRequest())
    sm.alarms.add((7, rpcpb.NOSPACE))
    sm.applied_index = 99
    return sm


def test_round_trip_keeps_history_leases_auth_alarms_and_hash() -> None:
    sm = _sample()
    back = _through_bbolt(sm)
    assert (back.kv.revision, back.kv.compact_revision) == (sm.kv.revision, 30)
    assert _everything(back) == _everything(sm)
    assert {i: (x.ttl, x.keys) for i, x in back.leases.items()} == {
        i: (x.ttl, x.keys) for i, x in sm.leases.items()
    }
    assert back.auth.to_json() == sm.auth.to_json()
    assert back.alarms == sm.alarms
    assert snapshot.hash_kv(back, back.kv.revision) == snapshot.hash_kv(sm, sm.kv.revision)
    with pytest.raises(errors.EtcdError):
        back.range(rpcpb.RangeRequest(key=b"k", revision=29))
    # watches from a kept revision replay the same events
    assert [(c.revision, c.events()) for c in back.kv.changes_since(31)] == [
        (c.revision, c.events()) for c in sm.kv.changes_since(31)
    ]


def test_buckets_and_keys_are_etcds() -> None:
    root = to_buckets(_sample())
    assert set(root.buckets) == {
        b"key",
        b"meta",
        b"lease",
        b"members",
        b"members_removed",
        b"cluster",
        b"auth",
        b"authUsers",
        b"authRoles",
        b"alarm",
    }
    meta = root.buckets[b"meta"].items
    assert meta[b"consistent_index"] == (99).to_bytes(8, "big")
    assert meta[b"finishedCompactRev"] == revision_key(30, 0) == meta[b"scheduledCompactRev"]
    assert root.buckets[b"auth"].items == {
        b"authEnabled": b"\x01",
        b"authRevision": (5).to_bytes(8, "big"),
    }
    keys = list(root.buckets[b"key"].items)
    assert keys == sorted(keys)
    assert revision_key(3, 1, tombstone=True) == bytes.fromhex("0000000000000003") + b"_" + (
        bytes.fromhex("0000000000000001") + b"t"
    )
    assert encode_lease(0x55, 300) == bytes([0x08, 0x55, 0x10, 0xAC, 0x02])


@given(st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**62), st.integers(0, 2**40))
def test_lease_encoding_round_trip(lease_id: int, ttl: int, remaining: int) -> None:
    assert decode_lease(encode_lease(lease_id, ttl, remaining)) == (lease_id, ttl, remaining)


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "del", "compact"]),
        st.sampled_from([b"a", b"b", b"c", b"d"]),
        st.binary(max_size=5),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_any_history_survives_the_round_trip(script: list[tuple[str, bytes, bytes]]) -> None:
    sm = StateMachine()
    for op, key, value in script:
        if op == "put":
            sm.put(rpcpb.PutRequest(key=key, value=value))
        elif op == "del":
            sm.delete_range(rpcpb.DeleteRangeRequest(key=key, range_end=b"\0"))
        elif sm.kv.revision > sm.kv.compact_revision:
            sm.compact(rpcpb.CompactionRequest(revision=sm.kv.revision))
    back = _through_bbolt(sm)
    assert (back.kv.revision, back.kv.compact_revision) == (sm.kv.revision, sm.kv.compact_revision)
    assert _everything(back) == _everything(sm)
    assert snapshot.hash_kv(back, back.kv.revision) == snapshot.hash_kv(sm, sm.kv.revision)


def test_scheduled_compaction_is_finished_on_load() -> None:
    sm = _sample()
    root = to_buckets(sm)
    root.buckets[b"meta"].items[b"finishedCompactRev"] = revision_key(20, 0)
    back = from_database(read_db(write_db(root)))
    assert back.kv.compact_revision == 30


def test_a_scheduled_compaction_finished_on_load_drops_the_old_versions() -> None:
    """etcd had scheduled a compaction and not run it: the versions it covers go on
    load (the change log is not rebuilt yet then: the compaction walks the keys)."""
    sm = StateMachine()
    for i in range(6):
        sm.put(rpcpb.PutRequest(key=b"a", value=b"%d" % i))
        sm.put(rpcpb.PutRequest(key=b"b%d" % i, value=b"x"))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"b0"))
    root = to_buckets(sm)
    root.buckets[b"meta"].items[b"scheduledCompactRev"] = revision_key(10, 0)
    back = from_database(read_db(write_db(root)))
    sm.compact(rpcpb.CompactionRequest(revision=10))
    assert back.kv.compact_revision == 10
    assert [(k, h.revs) for k, h in back.kv.histories()] == [
        (k, h.revs) for k, h in sm.kv.histories()
    ]
    assert back.kv.size == sm.kv.size


def test_foreign_rows_are_refused_with_the_place() -> None:
    root = Bucket()
    root.bucket(b"key").items[b"not-a-revision"] = b""
    with pytest.raises(EtcdDBError, match=r"bucket key: .* is not a revision key"):
        from_database(read_db(write_db(root)))
    root = Bucket()
    root.bucket(b"key").items[b"\x80" + revision_key(2, 0)[1:]] = mvccpb.KeyValue(
        key=b"k"
    ).SerializeToString()
    with pytest.raises(EtcdDBError, match=r"bucket key: .* holds a revision out of range"):
        from_database(read_db(write_db(root)))
    root = Bucket()
    root.bucket(b"key").items[revision_key(2, 0)] = b"\xff\xff"
    with pytest.raises(EtcdDBError, match="bucket key, revision 2/0: bad KeyValue"):
        from_database(read_db(write_db(root)))


_FUZZ_BASE = write_db(to_buckets(_sample()))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(3 * 4096, len(_FUZZ_BASE) - 1), st.integers(1, 255)), max_size=6)
)
def test_damaged_rows_fail_only_with_layout_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_BASE)
    for offset, mask in flips:
        data[offset] ^= mask
    with contextlib.suppress(BoltError, EtcdDBError):
        from_database(read_db(bytes(data)))


@pytest.mark.parametrize("length", [1, 5, 127, 128, 300, 16_383, 16_384, 32_768])
def test_a_tombstone_row_is_a_keyvalue_of_the_key_alone(length: int) -> None:
    """A deletion's value in the key bucket, encoded by hand: the bytes protobuf gives
    for ``KeyValue(key=key)``, whatever the length of the key's varint."""
    key = bytes(i % 251 for i in range(length))
    sm = StateMachine()
    sm.put(rpcpb.PutRequest(key=key, value=b"v"))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=key))
    rows = key_bucket(sm, sm.kv.revision)
    assert [live for *_, live in rows] == [False, False]
    _, _, bolt_key, value, _ = rows[1]
    assert bolt_key.endswith(b"t")
    assert value == mvccpb.KeyValue(key=key).SerializeToString()
    assert mvccpb.KeyValue.FromString(value) == mvccpb.KeyValue(key=key)
