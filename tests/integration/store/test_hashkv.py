"""``etcdctl endpoint hashkv``: keel-store and etcd give the same hash for the same history.

The history covers what changes etcd's bbolt layout: txns writing keys out of order
(sub revisions), multi-key deletes (tombstones), lease revocation, and compaction
(versions at or below the compact revision are hashed only while still live).
"""

from __future__ import annotations

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]


def put(key: str, value: str) -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=key.encode(), value=value.encode()))


def history(endpoint: str) -> list[str]:
    """Write the same history, hashing at several revisions on the way."""
    hashes: list[str] = []

    def hashkv(*revs: int) -> None:
        for rev in revs:
            r = etcdctl(endpoint, "endpoint", "hashkv", f"--rev={rev}", check=False)
            text = r.stdout.strip() or r.stderr.strip().splitlines()[-1]
            hashes.append(f"rev {rev}: {text.split(', ', 1)[-1]}")

    with grpc.insecure_channel(endpoint) as channel:
        kv, lease = rpcgrpc.KVStub(channel), rpcgrpc.LeaseStub(channel)
        kv.Put(rpcpb.PutRequest(key=b"a", value=b"1"), timeout=10)  # 2
        kv.Txn(rpcpb.TxnRequest(success=[put("z", "1"), put("n", "1"), put("m", "1")]))  # 3
        kv.Put(rpcpb.PutRequest(key=b"a", value=b"2", prev_kv=True), timeout=10)  # 4
        lease.LeaseGrant(rpcpb.LeaseGrantRequest(ID=0x77, TTL=600), timeout=10)
        for key in (b"l2", b"l1"):
            kv.Put(rpcpb.PutRequest(key=key, value=b"x", lease=0x77), timeout=10)  # 5, 6
        kv.DeleteRange(rpcpb.DeleteRangeRequest(key=b"m", range_end=b"z"), timeout=10)  # 7
        lease.LeaseRevoke(rpcpb.LeaseRevokeRequest(ID=0x77), timeout=10)  # 8
        kv.Put(rpcpb.PutRequest(key=b"m", value=b"again"), timeout=10)  # 9
        hashkv(0, 3, 6, 8, 9)
        kv.Compact(rpcpb.CompactionRequest(revision=6, physical=True), timeout=10)
        kv.Put(rpcpb.PutRequest(key=b"z", value=b"2"), timeout=10)  # 10
        hashkv(0, 6, 7, 9)
        kv.Compact(rpcpb.CompactionRequest(revision=10, physical=True), timeout=10)
        hashkv(0, 10)
    return hashes


def test_hashkv_same_as_etcd(make_cluster) -> None:  # type: ignore[no-untyped-def]
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours, theirs = history(keel.members[0].endpoint), history(etcd.members[0].endpoint)
    assert "compacted" in theirs[6], theirs  # rev 6 after compacting at 6
    assert len({h for h in theirs if "compacted" not in h}) > 5, theirs
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref


def test_hashkv_agrees_across_members_and_restarts(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3)
    a = cluster.members[0].endpoint
    history(a)
    member = cluster.members[2]
    member.kill()
    member.start()
    cluster.wait_ready(member)
    etcdctl(a, "put", "after", "restart")
    out = etcdctl(cluster.endpoints, "endpoint", "hashkv").stdout.splitlines()
    assert len(out) == 3
    assert len({line.split(", ")[1] for line in out}) == 1, out
