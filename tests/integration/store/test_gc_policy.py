"""The daemon's garbage-collector policy (keel_store.server.gc_policy) is in force.

A member freezes its heap once recovery is done, and again once writes have grown the
oldest generation past the refreeze size; each freeze is logged at debug level. After
the key space is deleted and compacted the member still serves, and a member restarted
on the same data directory (recovery from the WAL) freezes again.
"""

from __future__ import annotations

import json

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

KEYS = 30_000


def freezes(log_text: str) -> list[str]:
    msgs = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "keel_store.gc" and record["msg"].startswith("gc: froze"):
                msgs.append(record["msg"])
    return msgs


def test_member_freezes_after_start_and_after_growth(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(1, extra=["--log-level=debug"], fsync=False)
    member = cluster.members[0]
    assert len(freezes(member.log_path.read_text())) == 1, member.log_path.read_text()
    with grpc.insecure_channel(member.endpoint) as channel:
        kv = rpcgrpc.KVStub(channel)
        for start in range(0, KEYS, 100):
            ops = [
                rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%08d" % i, value=b"v" * 64))
                for i in range(start, start + 100)
            ]
            kv.Txn(rpcpb.TxnRequest(success=ops), timeout=10)
        # 30k keys are well over 50k tracked objects: at least one refreeze.
        assert len(freezes(member.log_path.read_text())) >= 2
        rev = kv.DeleteRange(rpcpb.DeleteRangeRequest(key=b"k/", range_end=b"k0")).header.revision
        kv.Compact(rpcpb.CompactionRequest(revision=rev), timeout=10)
        assert kv.Range(rpcpb.RangeRequest(key=b"k/", range_end=b"k0")).count == 0
    member.kill()
    before = len(freezes(member.log_path.read_text()))
    member.start()
    cluster.wait_ready(member)
    assert len(freezes(member.log_path.read_text())) > before
