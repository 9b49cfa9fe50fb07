"""KV semantics of the state machine, checked against etcd 3.4's documented behaviour."""

from __future__ import annotations

import pytest

from keel_store.mvcc import errors
from keel_store.mvcc.keyspace import prefix_end
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

R = rpcpb.RangeRequest


def put(sm: StateMachine, key: bytes, value: bytes = b"v", **kw) -> rpcpb.PutResponse:
    return sm.put(rpcpb.PutRequest(key=key, value=value, **kw))


def keys(resp: rpcpb.RangeResponse) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def test_empty_store_is_at_revision_1_and_first_put_makes_2() -> None:
    sm = StateMachine()
    assert sm.kv.revision == 1
    assert put(sm, b"foo").header.revision == 2


def test_versions_and_generations() -> None:
    sm = StateMachine()
    put(sm, b"foo", b"1")
    put(sm, b"foo", b"2")
    kv = sm.range(R(key=b"foo")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"2")
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"foo"))
    put(sm, b"foo", b"3")
    kv = sm.range(R(key=b"foo")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_noop_delete_and_reads_do_not_bump_revision() -> None:
    sm = StateMachine()
    put(sm, b"a")
    resp = sm.delete_range(rpcpb.DeleteRangeRequest(key=b"zzz"))
    assert (resp.deleted, resp.header.revision, sm.kv.revision) == (0, 2, 2)
    sm.range(R(key=b"a"))
    assert sm.kv.revision == 2


def test_range_end_forms() -> None:
    sm = StateMachine()
    for k in (b"a", b"ab", b"abc", b"b", b"c"):
        put(sm, k)
    assert keys(sm.range(R(key=b"ab"))) == [b"ab"]
    assert keys(sm.range(R(key=b"a", range_end=prefix_end(b"a")))) == [b"a", b"ab", b"abc"]
    assert keys(sm.range(R(key=b"b", range_end=b"\0"))) == [b"b", b"c"]
    assert keys(sm.range(R(key=b"\0", range_end=b"\0"))) == [b"a", b"ab", b"abc", b"b", b"c"]
    assert keys(sm.range(R(key=b"c", range_end=b"a"))) == []


def test_prefix_end() -> None:
    assert prefix_end(b"aa") == b"ab"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_limit_count_more_sort() -> None:
    sm = StateMachine()
    for k, v in ((b"k1", b"c"), (b"k2", b"a"), (b"k3", b"b")):
        put(sm, k, v)
    put(sm, b"k1", b"c2")
    whole = {"key": b"k", "range_end": prefix_end(b"k")}
    resp = sm.range(R(**whole, limit=2))
    assert (keys(resp), resp.count, resp.more) == ([b"k1", b"k2"], 3, True)
    resp = sm.range(R(**whole, limit=3))
    assert resp.more is False
    resp = sm.range(R(**whole, sort_target=R.VALUE, sort_order=R.DESCEND, limit=1))
    assert keys(resp) == [b"k1"]
    # A non-key target with order NONE sorts ascending (etcd's default).
    resp = sm.range(R(**whole, sort_target=R.MOD))
    assert keys(resp) == [b"k2", b"k3", b"k1"]
    resp = sm.range(R(**whole, sort_target=R.VERSION, sort_order=R.DESCEND))
    assert keys(resp)[0] == b"k1"
    resp = sm.range(R(**whole, count_only=True))
    assert (resp.count, len(resp.kvs)) == (3, 0)
    resp = sm.range(R(**whole, keys_only=True))
    assert [kv.value for kv in resp.kvs] == [b"", b"", b""]
    assert resp.kvs[0].mod_revision == 5


@pytest.mark.parametrize("by_key", [True, False], ids=["key-order", "sorted"])
def test_keys_only_keeps_every_field_but_the_value_and_the_store_intact(by_key: bool) -> None:
    """As etcd's ``Value = nil``: key, revisions, version and lease stay; the stored
    versions keep their values (the response holds copies)."""
    sm = StateMachine()
    sm.lease_grant(rpcpb.LeaseGrantRequest(ID=7, TTL=60))
    put(sm, b"k1", b"one")
    sm.put(rpcpb.PutRequest(key=b"k2", value=b"two", lease=7))
    put(sm, b"k1", b"uno")
    whole = {"key": b"k", "range_end": prefix_end(b"k")}
    order = {} if by_key else {"sort_target": R.MOD}
    full = sm.range(R(**whole, **order))
    bare = sm.range(R(**whole, **order, keys_only=True))
    assert len(bare.kvs) == 2
    for kv, expected in zip(bare.kvs, full.kvs, strict=True):
        assert kv.value == b""
        assert kv.key == expected.key
        assert (kv.create_revision, kv.mod_revision) == (
            expected.create_revision,
            expected.mod_revision,
        )
        assert (kv.version, kv.lease) == (expected.version, expected.lease)
    assert {kv.key: kv.lease for kv in bare.kvs} == {b"k1": 0, b"k2": 7}
    assert [kv.value for kv in sm.range(R(**whole)).kvs] == [b"uno", b"two"]


def test_revision_filters() -> None:
    sm = StateMachine()
    for k in (b"a", b"b", b"c"):
        put(sm, k)  # revisions 2, 3, 4
    put(sm, b"a")  # mod 5, create 2
    whole = {"key": b"\0", "range_end": b"\0"}
    assert keys(sm.range(R(**whole, min_mod_revision=4))) == [b"a", b"c"]
    assert keys(sm.range(R(**whole, max_mod_revision=3))) == [b"b"]
    assert keys(sm.range(R(**whole, min_create_revision=3))) == [b"b", b"c"]
    assert keys(sm.range(R(**whole, max_create_revision=3))) == [b"a", b"b"]


def test_historical_reads_and_errors() -> None:
    sm = StateMachine()
    put(sm, b"k", b"1")
    put(sm, b"k", b"2")
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k"))
    assert sm.range(R(key=b"k", revision=2)).kvs[0].value == b"1"
    assert sm.range(R(key=b"k", revision=3)).kvs[0].value == b"2"
    assert sm.range(R(key=b"k", revision=3)).header.revision == 4, "current, as etcd"
    assert not sm.range(R(key=b"k", revision=4)).kvs
    with pytest.raises(errors.EtcdError) as exc:
        sm.range(R(key=b"k", revision=5))
    assert exc.value == errors.FUTURE_REV
    assert exc.value.message == "etcdserver: mvcc: required revision is a future revision"


def test_put_options() -> None:
    sm = StateMachine()
    with pytest.raises(errors.EtcdError) as exc:
        put(sm, b"k", b"", ignore_value=True)
    assert exc.value == errors.KEY_NOT_FOUND
    put(sm, b"k", b"1")
    resp = put(sm, b"k", b"2", prev_kv=True)
    assert resp.prev_kv.value == b"1"
    put(sm, b"k", b"", ignore_value=True)
    assert sm.range(R(key=b"k")).kvs[0].value == b"2"
    with pytest.raises(errors.EtcdError) as exc:
        put(sm, b"k", b"x", lease=42)
    assert exc.value == errors.LEASE_NOT_FOUND
    assert sm.kv.revision == 4, "a rejected put must not bump the revision"


def test_delete_prev_kvs() -> None:
    sm = StateMachine()
    put(sm, b"a", b"1")
    put(sm, b"b", b"2")
    resp = sm.delete_range(rpcpb.DeleteRangeRequest(key=b"a", range_end=b"c", prev_kv=True))
    assert resp.deleted == 2
    assert [kv.value for kv in resp.prev_kvs] == [b"1", b"2"]
    assert resp.header.revision == 4


def test_compaction() -> None:
    sm = StateMachine()
    put(sm, b"k", b"1")  # 2
    put(sm, b"k", b"2")  # 3
    put(sm, b"gone", b"x")  # 4
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"gone"))  # 5
    put(sm, b"k", b"3")  # 6
    sm.compact(rpcpb.CompactionRequest(revision=5))
    with pytest.raises(errors.EtcdError) as exc:
        sm.range(R(key=b"k", revision=4))
    assert exc.value == errors.COMPACTED
    assert sm.range(R(key=b"k", revision=5)).kvs[0].value == b"2"
    assert not sm.range(R(key=b"gone", revision=5)).kvs
    assert "gone" not in [k.decode() for k, _ in sm.kv.histories()]
    with pytest.raises(errors.EtcdError) as exc:
        sm.compact(rpcpb.CompactionRequest(revision=5))
    assert exc.value == errors.COMPACTED
    with pytest.raises(errors.EtcdError) as exc:
        sm.compact(rpcpb.CompactionRequest(revision=99))
    assert exc.value == errors.FUTURE_REV
    assert sm.kv.revision == 6, "compaction is not a write"


@pytest.mark.parametrize(
    ("key", "end"),
    [
        (b"b", b""),  # one key
        (b"aa", b""),  # absent (the next key is live)
        (b"c", b""),  # deleted already
        (b"b", b"d"),
        (b"a", b"c"),
        (b"b", b"b"),  # end == key: nothing
        (b"d", b"b"),  # end < key: nothing
        (b"b", b"\0"),  # from b on
        (b"\0", b"\0"),  # everything
        (b"e", b"\0"),  # past the last key
    ],
)
def test_delete_range_deletes_what_range_reads(key: bytes, end: bytes) -> None:
    """The delete walks the key space by position; it must select exactly the live keys
    a range read of ``[key, end)`` returns, tombstones skipped."""
    sm = StateMachine()
    for k in (b"a", b"b", b"ba", b"c", b"cc", b"d"):
        sm.put(rpcpb.PutRequest(key=k, value=b"v-" + k))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"c"))
    live = [kv.key for kv in sm.range(rpcpb.RangeRequest(key=key, range_end=end)).kvs]
    before = sm.kv.revision
    resp = sm.delete_range(rpcpb.DeleteRangeRequest(key=key, range_end=end, prev_kv=True))
    assert [kv.key for kv in resp.prev_kvs] == live
    assert resp.deleted == len(live)
    assert sm.kv.revision == before + (1 if live else 0)
    assert sm.range(rpcpb.RangeRequest(key=key, range_end=end)).kvs == []
    left = [kv.key for kv in sm.range(rpcpb.RangeRequest(key=b"\0", range_end=b"\0")).kvs]
    assert left == [k for k in (b"a", b"b", b"ba", b"cc", b"d") if k not in live]
