"""The JSON gateway (/v3/..., /health, /version): same answers as etcd's, via plain HTTP
on the client port, as etcd serves them, and on --listen-metrics-urls."""

from __future__ import annotations

import base64
import http.client
import json

import pytest

from .conftest import free_port

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]

CALLS = [
    ("POST", "/v3/kv/put", {"key": "Zm9v", "value": "YmFy"}),
    ("POST", "/v3/kv/put", {"key": "Zm9v", "value": "YmF6", "prev_kv": True}),
    ("POST", "/v3/kv/range", {"key": "Zm9v"}),
    ("POST", "/v3/kv/range", {"key": "Zm9v", "revision": "99"}),
    ("POST", "/v3beta/kv/range", {"key": "Zm9v", "revision": "2"}),
    (
        "POST",
        "/v3/kv/txn",
        {
            "compare": [{"key": "Zm9v", "target": "MOD", "result": "LESS", "mod_revision": "10"}],
            "success": [{"request_put": {"key": "YQ==", "value": "Yg=="}}],
        },
    ),
    ("POST", "/v3/kv/deleterange", {"key": "YQ==", "prev_kv": True}),
    ("POST", "/v3/kv/put", {"key": ""}),
    ("POST", "/v3/kv/compaction", {"revision": "3"}),
    ("POST", "/v3/kv/range", {"key": "Zm9v", "revision": "2"}),
    ("POST", "/v3/lease/grant", {"TTL": 1}),
    ("POST", "/v3/lease/timetolive", {"ID": "12345"}),
    ("GET", "/health", None),
    ("GET", "/version", None),
]


def clean(x: object) -> object:
    if isinstance(x, dict):
        return {
            k: clean(v)
            for k, v in x.items()
            if k not in ("cluster_id", "member_id", "raft_term", "ID")
        }
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def call(port: int, method: str, path: str, body: object) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=None if body is None else json.dumps(body))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, clean(json.loads(data))


def watch_lines(port: int, start: int, count: int) -> list[object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST",
        "/v3/watch",
        body=json.dumps({"create_request": {"key": "Zm9v", "start_revision": str(start)}}),
    )
    resp = conn.getresponse()
    lines = [clean(json.loads(resp.readline())) for _ in range(count)]
    conn.close()
    return lines


def test_gateway_matches_etcd(make_cluster) -> None:
    """On the client port (etcd's cmux: gRPC and HTTP/1.1 on one socket) and the metrics URL."""
    gw_port, etcd_gw_port = free_port(), free_port()
    keel = make_cluster(1, extra=[f"--listen-metrics-urls=http://127.0.0.1:{gw_port}"])
    keel_port = int(keel.members[0].client_url.rsplit(":", 1)[1])
    etcd = make_cluster(
        1, binary="etcd", extra=[f"--listen-metrics-urls=http://127.0.0.1:{etcd_gw_port}"]
    )
    etcd_port = int(etcd.members[0].client_url.rsplit(":", 1)[1])
    for method, path, body in CALLS:
        ours = call(keel_port, method, path, body)
        theirs = call(etcd_port, method, path, body)
        assert ours == theirs, f"{method} {path} {body}"
    assert watch_lines(keel_port, 3, 2) == watch_lines(etcd_port, 3, 2)
    # The metrics URL serves /metrics and /health only, not the JSON API (before
    # 2026-12-06 keel-store served the whole gateway there, unguarded by --cors and
    # --host-whitelist).
    for method, path, body in [
        ("GET", "/metrics", None),
        ("GET", "/health", None),
        ("POST", "/health", None),
        ("GET", "/version", None),
        ("GET", "/debug/vars", None),
        ("POST", "/v3/kv/range", {"key": "Zm9v"}),
        ("POST", "/v3/watch", {"create_request": {"key": "Zm9v"}}),
        ("POST", "/v3/maintenance/snapshot", {}),
    ]:
        ours = _raw(gw_port, method, path, body)
        theirs = _raw(etcd_gw_port, method, path, body)
        if path == "/metrics":
            ours, theirs = ours[:2], theirs[:2]  # the values differ
        assert ours == theirs, f"{method} {path} on the metrics URL"


def _raw(
    port: int, method: str, path: str, body: object, data: bytes | None = None
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if data is None and body is not None:
        data = json.dumps(body).encode()
    conn.request(method, path, body=data)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type", ""), data


def test_gateway_off_as_etcd(make_cluster) -> None:
    """--enable-grpc-gateway=false: /v3/... is not found, /health and /version stay."""
    flags = ["--enable-grpc-gateway=false"]
    keel = make_cluster(1, extra=flags)
    etcd = make_cluster(1, binary="etcd", extra=flags)
    ports = [int(c.members[0].client_url.rsplit(":", 1)[1]) for c in (keel, etcd)]
    for method, path, body in [CALLS[2], ("POST", "/v3/watch", {}), CALLS[-2], CALLS[-1]]:
        ours, theirs = (_raw(port, method, path, body) for port in ports)
        assert ours == theirs, f"{method} {path}"
    assert _raw(ports[0], *CALLS[2])[:2] == (404, "text/plain; charset=utf-8")


def _put_body(size: int) -> bytes:
    value = base64.b64encode(b"x" * size).decode()
    return json.dumps({"key": "Zm9v", "value": value}).encode()


def test_oversize_requests_as_etcd(make_cluster) -> None:
    """Over --max-request-bytes: etcd's error; over gRPC's limit (+512 KiB): gRPC's
    ResourceExhausted, 429, as etcd's gateway gets it from its own gRPC server."""
    ports = [
        int(make_cluster(1, binary=b).members[0].client_url.rsplit(":", 1)[1])
        for b in ("keel", "etcd")
    ]
    for size in (1_600_000, 3_000_000):
        body = _put_body(size)
        ours, theirs = (_raw(p, "POST", "/v3/kv/put", None, body) for p in ports)
        assert ours[0] == theirs[0], size
        assert json.loads(ours[2]) == json.loads(theirs[2]), size
    assert theirs[0] == 429
    # A body larger than keel-store reads (3x the limit): the same status and code; the
    # size in the message is the body's, not the decoded message's.
    body = _put_body(7_000_000)
    ours, theirs = (_raw(p, "POST", "/v3/kv/put", None, body) for p in ports)
    assert (ours[0], json.loads(ours[2])["code"]) == (theirs[0], json.loads(theirs[2])["code"])
    assert ours[0] == 429


def test_json_python_refuses_to_parse_is_answered(make_cluster) -> None:
    """An integer of 5,000 digits (over Python's 4,300-digit limit): 400 code 3 from
    both. Nesting 5,000 deep (in a field etcd ignores): etcd takes the put, keel-store
    answers 400 (Python's json is recursive). Both used to drop the connection."""
    ports = [
        int(make_cluster(1, binary=b).members[0].client_url.rsplit(":", 1)[1])
        for b in ("keel", "etcd")
    ]
    data = b'{"key": "Zm9v", "lease": ' + b"9" * 5000 + b"}"
    ours, theirs = (_raw(p, "POST", "/v3/kv/put", None, data) for p in ports)
    assert (ours[0], json.loads(ours[2])["code"]) == (theirs[0], json.loads(theirs[2])["code"])
    assert ours[0] == 400
    deep = b'{"key": "Zm9v", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    ours = _raw(ports[0], "POST", "/v3/kv/put", None, deep)
    assert (ours[0], json.loads(ours[2])["code"]) == (400, 3)
