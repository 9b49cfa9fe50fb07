"""Request checks done before a request is proposed, as etcd's ``v3rpc/key.go`` does.

They need no state, so they run on the member that received the request and reject
bad input with etcd's exact errors before it costs a Raft round trip.
"""

from __future__ import annotations

from keel_store.mvcc import errors
from keel_store.pb import rpcpb

DEFAULT_MAX_TXN_OPS = 128
"""etcd's ``--max-txn-ops`` default."""
DEFAULT_MAX_REQUEST_BYTES = 1_572_864
"""etcd's ``--max-request-bytes`` default: 1.5 MiB."""
GRPC_OVERHEAD_BYTES = 512 * 1024
"""What etcd allows a gRPC message beyond ``--max-request-bytes`` (its framing)."""


def check_range(req: rpcpb.RangeRequest) -> None:
    """KV.Range: a key is required."""
    if not req.key:
        raise errors.EMPTY_KEY


def check_put(req: rpcpb.PutRequest) -> None:
    """KV.Put: a key; no value with ``ignore_value``; no lease with ``ignore_lease``."""
    if not req.key:
        raise errors.EMPTY_KEY
    if req.ignore_value and req.value:
        raise errors.VALUE_PROVIDED
    if req.ignore_lease and req.lease:
        raise errors.LEASE_PROVIDED


def check_delete_range(req: rpcpb.DeleteRangeRequest) -> None:
    """KV.DeleteRange: a key is required."""
    if not req.key:
        raise errors.EMPTY_KEY


Interval = tuple[bytes, bytes]
"""A deleted key interval as etcd's ``checkIntervals`` sees it: ``[begin, end)`` with
``end`` taken literally (see :func:`_deleted`)."""


def _deleted(req: rpcpb.DeleteRangeRequest) -> Interval:
    """The interval etcd's ``checkIntervals`` builds for a delete: ``[key, range_end)``,
    or the point ``[key, key + "\\0")`` without a range end. A range end of ``"\\0"`` is
    taken literally there (``adt.NewStringAffineInterval``), so "every key from ``key``
    on" overlaps nothing in this check (an etcd 3.4 quirk kept for compatibility)."""
    if req.range_end:
        return req.key, req.range_end
    return req.key, req.key + b"\0"


def _hits(dels: list[Interval], key: bytes) -> bool:
    """Whether the point ``key`` overlaps one of ``dels`` (an interval whose end is not
    after its begin overlaps nothing)."""
    return any(begin <= key < end for begin, end in dels)


def _intervals(ops: list[rpcpb.RequestOp]) -> tuple[set[bytes], list[Interval]]:
    """Put keys and deleted intervals of one branch, checked as etcd 3.4's
    ``checkIntervals`` (``v3rpc/key.go``) step for step; raise on a key written twice.

    This level's deletes are collected first; then each nested txn's puts (then
    branch, else branch) are checked against the puts collected so far (a key in both
    branches of one txn is fine) and the deletes collected so far, whereupon that txn's
    deletes join them; last, this level's puts are checked against all of those.
    """
    dels = [_deleted(op.request_delete_range) for op in ops if op.HasField("request_delete_range")]
    puts: set[bytes] = set()
    for op in ops:
        if not op.HasField("request_txn"):
            continue
        puts_then, dels_then = _intervals(list(op.request_txn.success))
        puts_else, dels_else = _intervals(list(op.request_txn.failure))
        for key in puts_then:
            if key in puts or _hits(dels, key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _hits(dels, key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if not op.HasField("request_put"):
            continue
        key = op.request_put.key
        if key in puts or _hits(dels, key):
            raise errors.DUPLICATE_KEY
        puts.add(key)
    return puts, dels


def _check_op(op: rpcpb.RequestOp, max_ops: int) -> None:
    """etcd's ``checkRequestOp``: an op without a request is ``key not found``."""
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range(op.request_range)
    elif which == "request_put":
        check_put(op.request_put)
    elif which == "request_delete_range":
        check_delete_range(op.request_delete_range)
    elif which == "request_txn":
        _check_txn(op.request_txn, max_ops)
    else:
        raise errors.KEY_NOT_FOUND


def _check_txn(req: rpcpb.TxnRequest, max_ops: int) -> None:
    """etcd's ``checkTxnRequest``: the longest of the three lists within ``max_ops``,
    compares with keys, then every op, a nested txn allowed what its parent's longest
    list left (``maxTxnOps - opc``)."""
    longest = max(len(req.compare), len(req.success), len(req.failure))
    if longest > max_ops:
        raise errors.TOO_MANY_OPS
    for cmp in req.compare:
        if not cmp.key:
            raise errors.EMPTY_KEY
    for op in req.success:
        _check_op(op, max_ops - longest)
    for op in req.failure:
        _check_op(op, max_ops - longest)


def check_txn(req: rpcpb.TxnRequest, max_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """KV.Txn, as etcd's ``kvServer.Txn``: ``checkTxnRequest`` (sizes, keys, ops, nested
    txns), then ``checkIntervals`` on each branch (no key written twice)."""
    _check_txn(req, max_ops)
    _intervals(list(req.success))
    _intervals(list(req.failure))
