"""Write unavailability after kill -9 of the leader: keel-store against etcd, same flags.

Both 3-member clusters run with the default flags (heartbeat 100 ms, election timeout
1000 ms). After each SIGKILL of the leader, a client puts through the surviving
members in turn, with 1 s timeouts, until one succeeds (as ``nox -s bench -- store``
does); the victim is restarted before the next round, so later rounds also cover
peers whose connections were replaced by a restart. Only a comparison is asserted,
never an absolute time: keel-store's median window must be under half of etcd's
shortest (issue 6's target, 1 s against etcd's 2 s). etcd cannot beat its election
timeout; keel-store's followers see the leader's connections close and elect a new
leader within a few heartbeats. Before that change keel-store failed this test
(medians 1.5-1.9 s against etcd's 1.0-2.0 s minimums).
"""

from __future__ import annotations

import statistics
import time

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

ROUNDS = 3


def _window(cluster, victim) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    others = [m for m in cluster.members if m is not victim]
    channels = [grpc.insecure_channel(m.endpoint) for m in others]
    try:
        stubs = [rpcgrpc.KVStub(c) for c in channels]
        for stub in stubs:  # connected and served before the kill
            stub.Put(rpcpb.PutRequest(key=b"fo/warm", value=b"v"), timeout=10)
        victim.kill()
        start = time.perf_counter()
        errors: list[str] = []
        i = 0
        while True:
            try:
                stubs[i % len(stubs)].Put(rpcpb.PutRequest(key=b"fo/x", value=b"v"), timeout=1.0)
                return time.perf_counter() - start, errors
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name} {exc.details()}")  # type: ignore[attr-defined]
                i += 1
                assert time.perf_counter() - start < 30, errors
    finally:
        for c in channels:
            c.close()


def _windows(make_cluster, binary: str) -> list[float]:  # type: ignore[no-untyped-def]
    cluster = make_cluster(3, binary)
    windows = []
    for _ in range(ROUNDS):
        victim = cluster.leader()
        window, errors = _window(cluster, victim)
        print(f"{binary}: {window:.3f} s after kill -9 of {victim.name}; errors {errors}")
        windows.append(window)
        victim.start()
        for member in cluster.members:
            cluster.wait_ready(member)
        time.sleep(1.0)  # the restarted member catches up
    cluster.stop()
    return windows


def test_leader_kill_unavailability_is_shorter_than_etcds(make_cluster) -> None:
    etcd = _windows(make_cluster, "etcd")
    keel = _windows(make_cluster, "keel")
    print(f"etcd windows {etcd}, keel windows {keel}")
    assert statistics.median(keel) < min(etcd) / 2, (keel, etcd)
