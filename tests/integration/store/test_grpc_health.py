"""gRPC's health service on the client port (Kubernetes ``grpc:`` probes,
grpc-health-probe), as etcd 3.4 serves it: compared with Debian's etcd."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from keel_store.pb import healthgrpc, healthpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]


def probe(endpoint: str) -> list[Any]:
    """Check and Watch for the server ("") and for a name it does not know."""
    out: list[Any] = []
    with grpc.insecure_channel(endpoint) as channel:
        health = healthgrpc.HealthStub(channel)
        for service in ("", "etcdserverpb.KV", "nope"):
            try:
                resp = health.Check(healthpb.HealthCheckRequest(service=service), timeout=5)
                out.append(("check", service, resp.status))
            except grpc.RpcError as exc:
                out.append(("check", service, exc.code(), exc.details()))
        for service in ("", "nope"):
            stream = health.Watch(healthpb.HealthCheckRequest(service=service), timeout=5)
            out.append(("watch", service, next(stream).status))
            stream.cancel()
    return out


def test_health_service_as_etcd(make_cluster: Any) -> None:
    ours = probe(make_cluster(1).endpoints)
    theirs = probe(make_cluster(1, binary="etcd").endpoints)
    assert ours == theirs
    serving, unknown = healthpb.HealthCheckResponse.SERVING, grpc.StatusCode.NOT_FOUND
    assert ours == [
        ("check", "", serving),
        ("check", "etcdserverpb.KV", unknown, "unknown service"),
        ("check", "nope", unknown, "unknown service"),
        ("watch", "", serving),
        ("watch", "nope", healthpb.HealthCheckResponse.SERVICE_UNKNOWN),
    ]
