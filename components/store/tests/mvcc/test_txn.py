"""Txn: compares, branches, nesting, atomicity and etcd's request checks."""

from __future__ import annotations

import pytest

from keel_store.mvcc import errors, validate
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

C = rpcpb.Compare


def op_put(key: bytes, value: bytes = b"v", **kw) -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=key, value=value, **kw))


def op_get(key: bytes, **kw) -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_range=rpcpb.RangeRequest(key=key, **kw))


def op_del(key: bytes, end: bytes = b"") -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_delete_range=rpcpb.DeleteRangeRequest(key=key, range_end=end))


def test_create_if_absent_idiom() -> None:
    sm = StateMachine()
    txn = rpcpb.TxnRequest(
        compare=[C(key=b"lock", target=C.CREATE, result=C.EQUAL, create_revision=0)],
        success=[op_put(b"lock", b"me")],
        failure=[op_get(b"lock")],
    )
    first = sm.txn(txn)
    assert first.succeeded
    assert first.header.revision == 2
    second = sm.txn(txn)
    assert not second.succeeded
    assert second.responses[0].response_range.kvs[0].value == b"me"
    assert second.header.revision == 2, "a read-only txn does not bump the revision"


@pytest.mark.parametrize(
    ("target", "field", "value", "result", "expected"),
    [
        (C.VALUE, "value", b"b", C.EQUAL, True),
        (C.VALUE, "value", b"a", C.GREATER, True),
        (C.VALUE, "value", b"c", C.LESS, True),
        (C.VALUE, "value", b"b", C.NOT_EQUAL, False),
        (C.VERSION, "version", 2, C.EQUAL, True),
        (C.CREATE, "create_revision", 2, C.EQUAL, True),
        (C.MOD, "mod_revision", 3, C.LESS, False),
        (C.MOD, "mod_revision", 4, C.LESS, True),
        (C.LEASE, "lease", 0, C.EQUAL, True),
    ],
)
def test_compare_targets(target, field, value, result, expected) -> None:
    sm = StateMachine()
    sm.put(rpcpb.PutRequest(key=b"k", value=b"a"))
    sm.put(rpcpb.PutRequest(key=b"k", value=b"b"))
    cmp = C(key=b"k", target=target, result=result, **{field: value})
    assert sm.txn(rpcpb.TxnRequest(compare=[cmp])).succeeded is expected


def test_value_compare_on_missing_key_always_fails() -> None:
    sm = StateMachine()
    cmp = C(key=b"nope", target=C.VALUE, result=C.NOT_EQUAL, value=b"x")
    assert not sm.txn(rpcpb.TxnRequest(compare=[cmp])).succeeded


def test_compare_over_a_range() -> None:
    sm = StateMachine()
    sm.put(rpcpb.PutRequest(key=b"a1", value=b"x"))
    sm.put(rpcpb.PutRequest(key=b"a2", value=b"x"))
    cmp = C(key=b"a", range_end=b"b", target=C.VALUE, result=C.EQUAL, value=b"x")
    assert sm.txn(rpcpb.TxnRequest(compare=[cmp])).succeeded
    sm.put(rpcpb.PutRequest(key=b"a3", value=b"y"))
    assert not sm.txn(rpcpb.TxnRequest(compare=[cmp])).succeeded


def test_all_writes_share_one_revision_and_reads_see_earlier_writes() -> None:
    sm = StateMachine()
    sm.put(rpcpb.PutRequest(key=b"old", value=b"1"))
    resp = sm.txn(
        rpcpb.TxnRequest(
            success=[
                op_put(b"x", b"1"),
                op_del(b"old"),
                op_get(b"x"),
                op_put(b"y", b"2"),
            ]
        )
    )
    assert resp.header.revision == 3
    got = resp.responses[2].response_range
    assert got.kvs[0].value == b"1"
    assert got.header.revision == 3
    assert resp.responses[1].response_delete_range.deleted == 1
    assert sm.range(rpcpb.RangeRequest(key=b"y")).kvs[0].mod_revision == 3


def test_nested_txn() -> None:
    sm = StateMachine()
    inner = rpcpb.TxnRequest(
        compare=[C(key=b"a", target=C.VERSION, result=C.EQUAL, version=0)],
        success=[op_put(b"inner-ok")],
        failure=[op_put(b"inner-failed")],
    )
    sm.put(rpcpb.PutRequest(key=b"a", value=b"1"))
    resp = sm.txn(rpcpb.TxnRequest(success=[op_put(b"outer"), rpcpb.RequestOp(request_txn=inner)]))
    assert resp.succeeded
    assert not resp.responses[1].response_txn.succeeded
    assert sm.range(rpcpb.RangeRequest(key=b"inner-failed")).kvs
    assert not sm.range(rpcpb.RangeRequest(key=b"inner-ok")).kvs


def test_failed_check_changes_nothing() -> None:
    sm = StateMachine()
    resp_before = sm.kv.revision
    txn = rpcpb.TxnRequest(success=[op_put(b"a"), op_put(b"b", lease=777)])
    with pytest.raises(errors.EtcdError) as exc:
        sm.txn(txn)
    assert exc.value == errors.LEASE_NOT_FOUND
    assert sm.kv.revision == resp_before
    assert not sm.range(rpcpb.RangeRequest(key=b"a")).kvs


def test_txn_range_at_future_revision_fails_whole_txn() -> None:
    sm = StateMachine()
    with pytest.raises(errors.EtcdError) as exc:
        sm.txn(rpcpb.TxnRequest(success=[op_put(b"a"), op_get(b"a", revision=50)]))
    assert exc.value == errors.FUTURE_REV
    assert sm.kv.revision == 1


def test_validation_duplicates_and_limits() -> None:
    with pytest.raises(errors.EtcdError) as exc:
        validate.check_txn(rpcpb.TxnRequest(success=[op_put(b"a"), op_put(b"a")]))
    assert exc.value.message == "etcdserver: duplicate key given in txn request"
    with pytest.raises(errors.EtcdError):
        validate.check_txn(rpcpb.TxnRequest(success=[op_del(b"a", b"c"), op_put(b"b")]))
    nested = rpcpb.TxnRequest(success=[op_put(b"a")])
    with pytest.raises(errors.EtcdError):
        validate.check_txn(
            rpcpb.TxnRequest(success=[op_put(b"a"), rpcpb.RequestOp(request_txn=nested)])
        )
    # The same key in success and failure is fine: only one branch runs.
    validate.check_txn(rpcpb.TxnRequest(success=[op_put(b"a")], failure=[op_put(b"a")]))
    with pytest.raises(errors.EtcdError) as exc:
        validate.check_txn(rpcpb.TxnRequest(success=[op_put(bytes([i])) for i in range(1, 130)]))
    assert exc.value == errors.TOO_MANY_OPS
    with pytest.raises(errors.EtcdError) as exc:
        validate.check_txn(rpcpb.TxnRequest(success=[op_put(b"")]))
    assert exc.value == errors.EMPTY_KEY
    with pytest.raises(errors.EtcdError) as exc:
        validate.check_put(rpcpb.PutRequest(key=b"k", value=b"v", ignore_value=True))
    assert exc.value == errors.VALUE_PROVIDED
