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


def _in(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def _intervals(ops: list[rpcpb.RequestOp]) -> tuple[list[tuple[bytes, bytes]], set[bytes]]:
    """Deleted intervals and put keys of one branch; raise on a key written twice."""
    dels: list[tuple[bytes, bytes]] = []
    puts: set[bytes] = set()
    nested: list[tuple[list[tuple[bytes, bytes]], set[bytes]]] = []
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_delete_range":
            dels.append((op.request_delete_range.key, op.request_delete_range.range_end))
        elif which == "request_put":
            key = op.request_put.key
            if key in puts:
                raise errors.DUPLICATE_KEY
            puts.add(key)
        elif which == "request_txn":
            sub = op.request_txn
            for branch in (list(sub.success), list(sub.failure)):
                nested.append(_intervals(branch))
    for sub_dels, sub_puts in nested:
        if puts & sub_puts:
            raise errors.DUPLICATE_KEY
        for key in sub_puts:
            if any(_in(key, s, e) for s, e in dels):
                raise errors.DUPLICATE_KEY
        for key in puts:
            if any(_in(key, s, e) for s, e in sub_dels):
                raise errors.DUPLICATE_KEY
    for key in puts:
        if any(_in(key, s, e) for s, e in dels):
            raise errors.DUPLICATE_KEY
    for sub_dels, sub_puts in nested:
        dels.extend(sub_dels)
        puts |= sub_puts
    return dels, puts


def _check_ops(ops: list[rpcpb.RequestOp], max_ops: int) -> None:
    for op in ops:
        which = op.WhichOneof("request")
        if which == "request_range":
            check_range(op.request_range)
        elif which == "request_put":
            check_put(op.request_put)
        elif which == "request_delete_range":
            check_delete_range(op.request_delete_range)
        elif which == "request_txn":
            check_txn(op.request_txn, max_ops)


def check_txn(req: rpcpb.TxnRequest, max_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """KV.Txn: at most ``max_ops`` per list, valid ops, no key written twice per branch."""
    if len(req.compare) > max_ops or len(req.success) > max_ops or len(req.failure) > max_ops:
        raise errors.TOO_MANY_OPS
    _check_ops(list(req.success), max_ops)
    _check_ops(list(req.failure), max_ops)
    _intervals(list(req.success))
    _intervals(list(req.failure))
