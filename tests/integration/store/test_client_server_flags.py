"""etcd's client-server flags on real processes, keel-store next to etcd 3.4 itself:
--host-whitelist and --cors on the client URLs' HTTP side, --grpc-keepalive-* with
etcdctl (grpc-go's client) on the gRPC side."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ETCDCTL, TLSFiles, etcdctl, free_port

pytestmark = [pytest.mark.host, pytest.mark.timeout(120)]

CORS = "http://a.com:1,https://b.org:443"  # etcd 3.4 wants host:port in --cors


def request(
    endpoint: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def cors(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


ALLOWED = {
    "access-control-allow-methods": "POST, GET, OPTIONS, PUT, DELETE",
    "access-control-allow-headers": "accept, content-type, authorization",
}


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_host_whitelist_and_cors_on_the_client_port(make_cluster, binary: str) -> None:  # type: ignore[no-untyped-def]
    metrics = f"http://127.0.0.1:{free_port()}"
    cluster = make_cluster(
        1,
        binary,
        extra=[
            f"--cors={CORS}",
            "--host-whitelist=localhost,example.com",
            f"--listen-metrics-urls={metrics}",
        ],
    )
    url = cluster.members[0].endpoint
    port = url.rsplit(":", 1)[1]
    # a Host not listed: 421 and etcd's explanation, whatever the path or method
    for method, path in (("GET", "/version"), ("OPTIONS", "/v3/kv/range"), ("GET", "/health")):
        status, headers, body = request(url, method, path, {"Host": f"127.0.0.1:{port}"})
        assert status == 421, (method, path)
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert b"the Host header was unrecognized" in body
        assert b'--host-whitelist "127.0.0.1"' in body
    # listed (with or without the port): served, CORS headers for an allowed origin only
    status, headers, body = request(
        url, "GET", "/version", {"Host": f"example.com:{port}", "Origin": "http://a.com:1"}
    )
    assert status == 200
    assert b'"etcdcluster"' in body
    assert cors(headers) == {**ALLOWED, "access-control-allow-origin": "http://a.com:1"}
    status, headers, _ = request(url, "GET", "/version", {"Host": "localhost", "Origin": "x"})
    assert status == 200
    assert cors(headers) == {}
    # preflight: 200, no body, the headers for an allowed origin
    status, headers, body = request(
        url, "OPTIONS", "/v3/kv/put", {"Host": "localhost", "Origin": "https://b.org:443"}
    )
    assert (status, body) == (200, b"")
    assert cors(headers) == {**ALLOWED, "access-control-allow-origin": "https://b.org:443"}
    status, headers, body = request(
        url, "OPTIONS", "/v3/kv/put", {"Host": "localhost", "Origin": "http://c.net:80"}
    )
    assert (status, body, cors(headers)) == (200, b"", {})
    # the JSON gateway itself
    status, headers, body = request(
        url,
        "POST",
        "/v3/kv/range",
        {"Host": "localhost", "Origin": "http://a.com:1"},
        b'{"key":"YQ=="}',
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://a.com:1"
    # etcd's metrics listener has neither check
    status, headers, _ = request(metrics, "GET", "/health", {"Host": "elsewhere"})
    assert status == 200
    assert cors(headers) == {}
    # gRPC is not HTTP/1.1: unaffected
    etcdctl(url, "put", "k", "v")


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_default_cors_allows_every_origin(make_cluster, binary: str) -> None:  # type: ignore[no-untyped-def]
    url = make_cluster(1, binary).members[0].endpoint
    status, headers, _ = request(url, "GET", "/health", {"Origin": "http://x.org"})
    assert status == 200
    assert cors(headers) == {**ALLOWED, "access-control-allow-origin": "*"}
    status, headers, body = request(url, "OPTIONS", "/v3/kv/range", {})
    assert (status, body) == (200, b"")
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_host_whitelist_does_not_apply_over_https(
    make_cluster,  # type: ignore[no-untyped-def]
    binary: str,
    tmp_path: Path,
) -> None:
    tls = TLSFiles(tmp_path / "pki")
    url = make_cluster(1, binary, tls=tls, extra=["--host-whitelist=localhost"]).members[0].endpoint
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(tls.client_cert, tls.client_key)
    host, port = url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    try:
        conn.request("GET", "/version", headers={"Host": "elsewhere.example"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert b'"etcdserver"' in resp.read()
    finally:
        conn.close()


def test_etcdctl_watch_survives_keepalive_both_ways(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The server pings every second (answered by grpc-go's client) while etcdctl's
    own keepalive pings (every 10 s: grpc-go's floor for its 2 s default) come within
    the 5 s minimum: neither side ends the watch; the put 12 s later reaches it."""
    cluster = make_cluster(1, extra=["--grpc-keepalive-interval=1s", "--grpc-keepalive-timeout=1s"])
    member = cluster.members[0]
    watch = subprocess.Popen(
        [ETCDCTL, f"--endpoints={member.endpoint}", "watch", "wk"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"ETCDCTL_API": "3"},
    )
    try:
        time.sleep(12)
        etcdctl(member.endpoint, "put", "wk", "after-12s")
        time.sleep(1)
    finally:
        watch.terminate()
        out, err = watch.communicate(timeout=10)
    assert "after-12s" in out, err
    log = member.log_path.read_text()
    assert "too_many_pings" not in log
    assert "keepalive ping not answered" not in log
