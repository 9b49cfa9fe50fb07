"""Which Raft entries may take long to apply (``commands.may_take_long``)."""

from __future__ import annotations

from keel_store.mvcc import commands
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb


def test_which_entries_may_take_long_to_apply() -> None:
    """Ranged deletes and reads (also inside txns, also nested), compactions and lease
    revocations may; puts, single-key deletes, txns on named keys and corrupt entries do
    not. The leader sends held commit notices before applying the first kind."""

    def entry(kind: Kind, req: object) -> bytes:
        return commands.encode(kind, 7, req)  # type: ignore[arg-type]

    ranged = rpcpb.DeleteRangeRequest(key=b"a", range_end=b"b")
    single = rpcpb.DeleteRangeRequest(key=b"a")
    put = rpcpb.PutRequest(key=b"k", value=b"v")

    def txn(*ops: rpcpb.RequestOp, failure: tuple[rpcpb.RequestOp, ...] = ()) -> bytes:
        return entry(Kind.TXN, rpcpb.TxnRequest(success=ops, failure=failure))

    nested = rpcpb.RequestOp(
        request_txn=rpcpb.TxnRequest(success=[rpcpb.RequestOp(request_delete_range=ranged)])
    )
    long_ones = [
        entry(Kind.DELETE_RANGE, ranged),
        entry(Kind.COMPACT, rpcpb.CompactionRequest(revision=5)),
        entry(Kind.LEASE_REVOKE, rpcpb.LeaseRevokeRequest(ID=1)),
        entry(Kind.RANGE, rpcpb.RangeRequest(key=b"a", range_end=b"\0")),
        txn(rpcpb.RequestOp(request_put=put), rpcpb.RequestOp(request_delete_range=ranged)),
        txn(failure=(rpcpb.RequestOp(request_range=rpcpb.RangeRequest(key=b"a", range_end=b"z")),)),
        txn(nested),
    ]
    short_ones = [
        b"",
        entry(Kind.PUT, put),
        entry(Kind.DELETE_RANGE, single),
        entry(Kind.RANGE, rpcpb.RangeRequest(key=b"a")),
        txn(rpcpb.RequestOp(request_put=put), rpcpb.RequestOp(request_delete_range=single)),
        entry(Kind.LEASE_GRANT, rpcpb.LeaseGrantRequest(TTL=5)),
        bytes([Kind.TXN]) + b"\0" * 8 + b"\xff\xff",  # corrupt: apply logs and skips it
    ]
    assert [commands.may_take_long(d) for d in long_ones] == [True] * len(long_ones)
    assert [commands.may_take_long(d) for d in short_ones] == [False] * len(short_ones)
