"""Watch streams and the gateway's other streaming calls, side by side with etcd.

The same requests go to keel-store and to Debian's etcd, and the answers are compared:
a watch stream's creates (duplicate IDs, empty ranges), cancels and progress requests;
the stream outliving the client's half-close (over gRPC and over the gateway's HTTP
body); auth on the gateway's watch (no token, a bad token, a user without permission);
the gateway's `/v3/lease/keepalive` and `/v3/maintenance/snapshot` streams; bad bodies.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import queue
import socket
import time
from typing import Any

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

SERVERS = ["keel", "etcd"]
VOLATILE = ("cluster_id", "member_id", "raft_term")


def clean(x: Any) -> Any:
    """An answer without what differs between two clusters (IDs, terms)."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def host_port(cluster: Any) -> tuple[str, int]:
    host, port = cluster.members[0].client_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


class HttpStream:
    """One streaming POST over a raw socket: the body sent a chunk at a time, the
    answer read a line at a time (each line a JSON object)."""

    def __init__(
        self, cluster: Any, path: str, token: str | None = None, body: list[object] | None = None
    ) -> None:
        """``body``: the requests, sent at once with a ``Content-Length`` (as ``curl -d``);
        None: a chunked body, sent with :meth:`send` (etcd's Go server does not read
        a body it is already answering, so only keel-store serves that interactively)."""
        self.sock = socket.create_connection(host_port(cluster), timeout=10)
        auth = f"Authorization: {token}\r\n" if token else ""
        if body is None:
            framing = "Transfer-Encoding: chunked\r\n\r\n"
            data = b""
        else:
            data = b"".join(o if isinstance(o, bytes) else json.dumps(o).encode() for o in body)
            framing = f"Content-Length: {len(data)}\r\n\r\n"
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            f"Content-Type: application/json\r\n{framing}".encode()
            + data
        )
        self.buf = b""
        self.status: int | None = None
        self.lines: list[bytes] = []
        self.ended = False

    def send(self, obj: object) -> None:
        data = json.dumps(obj).encode()
        self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_body(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def _more(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self.ended = True
            return False
        self.buf += data
        return True

    def _parse(self) -> None:
        if self.status is None:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.buf = rest
        body = b""
        while True:
            size_line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                self.buf = b""
                break
            if len(rest) < size + 2:
                break
            body += rest[:size]
            self.buf = rest[size + 2 :]
        self._partial = getattr(self, "_partial", b"") + body
        *done, self._partial = self._partial.split(b"\n")
        self.lines.extend(line for line in done if line.strip())

    def read(self, count: int, timeout: float = 10) -> list[Any]:
        """The next ``count`` answers (fewer if the answer ends or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and not self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or not self._more(left):
                break
            self._parse()
        out, self.lines = self.lines[:count], self.lines[count:]
        return [json.loads(line) for line in out]

    def finished(self, timeout: float) -> bool:
        """Whether the answer ends (last chunk, or the connection closes) in ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or not self._more(left):
                break
            self._parse()
        return self.ended

    def close(self) -> None:
        self.sock.close()


def post(cluster: Any, path: str, body: bytes, token: str | None = None) -> tuple[int, list[bytes]]:
    """A whole POST with a finite answer: its status and its non-empty lines."""
    host, port = host_port(cluster)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("POST", path, body=body, headers={"Authorization": token} if token else {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, [line for line in data.split(b"\n") if line.strip()]


def watch_session(cluster: Any) -> list[Any]:
    """Creates, a duplicate ID, an empty range, progress and cancels in one body (as
    ``curl -d``); then keys change, after the body has ended."""
    body: list[object] = [
        {"create_request": {"key": b64("a")}},
        {"create_request": {"key": b64("b"), "watch_id": 5}},
        {"create_request": {"key": b64("c"), "watch_id": 5}},
        {"create_request": {"key": b64("b"), "range_end": b64("a")}},
        {"progress_request": {}},
        {"create_request": {"key": b64("c"), "prev_kv": True}},
        {"cancel_request": {"watch_id": 0}},
        {"cancel_request": {"watch_id": 77}},  # unknown: no answer
    ]
    s = HttpStream(cluster, "/v3/watch", body=body)
    try:
        got = s.read(7)
        etcdctl(cluster.endpoints, "put", "a", "1")  # watch 0 is gone
        etcdctl(cluster.endpoints, "put", "b", "2")  # watch 5 goes on after the body
        etcdctl(cluster.endpoints, "put", "c", "3")
        got += s.read(2, timeout=5)
        finished = s.finished(1)
    finally:
        s.close()
    return [clean(got), finished]


def test_gateway_watch_session_matches_etcd(make_cluster: Any) -> None:
    answers = {name: watch_session(make_cluster(1, binary=name)) for name in SERVERS}
    assert answers["keel"] == answers["etcd"]
    got, finished = answers["keel"]
    assert not finished  # the end of the body does not end a watch stream
    assert [r["result"].get("watch_id") for r in got] == [
        None,  # 0, the default, is left out of JSON
        "5",
        "-1",
        "-1",
        "-1",
        "1",
        None,
        "5",
        "1",
    ], got
    assert got[2]["result"]["cancel_reason"] == (
        "mvcc: duplicate watch ID provided on the WatchStream"
    )
    assert got[3]["result"]["cancel_reason"] == "mvcc: watcher range is empty"
    assert got[6]["result"]["canceled"] is True
    assert got[7]["result"]["events"][0]["kv"]["value"] == b64("2")
    assert got[8]["result"]["events"][0]["kv"]["value"] == b64("3")


def test_gateway_watch_reads_a_chunked_body_as_it_comes(keel1: Any) -> None:
    """Requests sent while the stream runs (keel-store only: see :class:`HttpStream`)."""
    s = HttpStream(keel1, "/v3/watch")
    try:
        s.send({"create_request": {"key": b64("a")}})
        assert s.read(1)[0]["result"]["created"] is True
        etcdctl(keel1.endpoints, "put", "a", "1")
        assert s.read(1)[0]["result"]["events"][0]["kv"]["value"] == b64("1")
        s.send({"cancel_request": {"watch_id": 0}})
        assert s.read(1)[0]["result"]["canceled"] is True
        s.send({"create_request": {"key": b64("a"), "watch_id": 9}})
        assert s.read(1)[0]["result"]["watch_id"] == "9"
        s.end_body()
        etcdctl(keel1.endpoints, "put", "a", "2")
        got = s.read(5, timeout=3)
        assert [r["result"]["watch_id"] for r in got] == ["9"]
        assert not s.finished(0.5)
    finally:
        s.close()


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, make_cluster: Any) -> Any:
    return make_cluster(1, binary=request.param)


def _auth_cluster(cluster: Any) -> dict[str, str]:
    ep = cluster.endpoints
    for args in (
        ("user", "add", "root:pw"),
        ("user", "add", "bob:pw"),
        ("role", "add", "pub-reader"),
        ("role", "grant-permission", "pub-reader", "read", "pub"),
        ("user", "grant-role", "bob", "pub-reader"),
        ("auth", "enable"),
    ):
        etcdctl(ep, *args)
    etcdctl(ep, "--user=root:pw", "put", "secret", "s1")
    _, lines = post(cluster, "/v3/auth/authenticate", b'{"name":"bob","password":"pw"}')
    return {"bob": json.loads(lines[0])["token"]}


def auth_watches(cluster: Any) -> list[Any]:
    """Watches over the gateway as nobody, with a bad token, as bob on a key he may not
    read and on one he may; then the keys change."""
    tokens = _auth_cluster(cluster)
    cases = [(None, "secret"), ("bogus", "pub"), (tokens["bob"], "secret"), (tokens["bob"], "pub")]
    streams = []
    got = []
    try:
        for token, key in cases:
            s = HttpStream(cluster, "/v3/watch", token, [{"create_request": {"key": b64(key)}}])
            streams.append(s)
            got.append(s.read(1))
        etcdctl(cluster.endpoints, "--user=root:pw", "put", "secret", "s2")
        etcdctl(cluster.endpoints, "--user=root:pw", "put", "pub", "p")
        for s in streams:
            got.append(s.read(1, timeout=2))
    finally:
        for s in streams:
            s.close()
    return clean(got)


def test_gateway_watch_checks_auth_as_etcd(make_cluster: Any) -> None:
    """Before, the gateway's watch skipped auth: anyone could watch any key."""
    answers = {name: auth_watches(make_cluster(1, binary=name)) for name in SERVERS}
    assert answers["keel"] == answers["etcd"]
    got = answers["keel"]
    reasons = [r[0]["result"].get("cancel_reason") for r in got[:4]]
    assert reasons == [
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        None,
    ]
    assert got[4:7] == [[], [], []]
    assert got[7][0]["result"]["events"][0]["kv"]["value"] == b64("p")
    assert b64("s2") not in json.dumps(got)


def test_gateway_keepalive_stream_matches_etcd(make_cluster: Any) -> None:
    answers = {}
    for name in SERVERS:
        cluster = make_cluster(1, binary=name)
        _, lines = post(cluster, "/v3/lease/grant", b'{"TTL": 30, "ID": 4660}')
        assert json.loads(lines[0])["ID"] == "4660"
        s = HttpStream(cluster, "/v3/lease/keepalive", body=[{"ID": "4660"}, {"ID": "1"}])
        try:
            got = s.read(2)
            # A keep-alive stream ends with the client's side, unlike a watch.
            assert s.finished(5), name
            answers[name] = (s.status, clean(got))
        finally:
            s.close()
    assert answers["keel"] == answers["etcd"]
    assert answers["keel"] == (
        200,
        [
            {"result": {"header": {"revision": "1"}, "ID": "4660", "TTL": "30"}},
            {"result": {"header": {"revision": "1"}, "ID": "1"}},
        ],
    )


def test_gateway_snapshot_stream(server: Any) -> None:
    """The database in parts, then its SHA-256, as etcdctl snapshot save gets it."""
    etcdctl(server.endpoints, "put", "k", "v")
    s = HttpStream(server, "/v3/maintenance/snapshot", body=[{}])
    try:
        assert s.finished(30)
        parts = s.read(10_000)
    finally:
        s.close()
    assert s.status == 200
    blobs = [base64.b64decode(p["result"]["blob"]) for p in parts]
    blob = b"".join(blobs)
    assert parts[-1]["result"].get("remaining_bytes") is None  # 0 on the last
    assert hashlib.sha256(blob[:-32]).digest() == blob[-32:]
    assert b"k" in blob[:-32]
    assert len(blob) > 4096
    # etcd's messages: no header; parts of 32 KiB with the bytes still to come, then
    # the SHA-256 in a message of its own.
    assert all(set(p["result"]) <= {"blob", "remaining_bytes"} for p in parts)
    assert len(blobs[-1]) == 32
    assert all(len(b) <= 32 * 1024 for b in blobs)
    left = len(blob) - 32
    for part, data in zip(parts[:-1], blobs[:-1], strict=True):
        left -= len(data)
        assert int(part["result"].get("remaining_bytes", 0)) == left


def bad_bodies(cluster: Any) -> list[Any]:
    out = []
    for path, body in (("/v3/watch", b"xx"), ("/v3/maintenance/snapshot", b"xx")):
        status, lines = post(cluster, path, body)
        doc = json.loads(lines[0])
        out.append((status, doc["code"], sorted(doc)))
    # A bad request after a good one ends the requests, not the watch.
    s = HttpStream(cluster, "/v3/watch", body=[{"create_request": {"key": b64("a")}}, b" xx"])
    try:
        created = s.read(1)
        etcdctl(cluster.endpoints, "put", "a", "1")
        out.append(clean(created + s.read(1)))
    finally:
        s.close()
    return out


def test_gateway_bad_bodies_as_etcd(make_cluster: Any) -> None:
    answers = {name: bad_bodies(make_cluster(1, binary=name)) for name in SERVERS}
    assert answers["keel"] == answers["etcd"]
    assert answers["keel"][:2] == [
        (500, 2, ["code", "error", "message"]),
        (400, 3, ["code", "error", "message"]),
    ]
    assert answers["keel"][2][1]["result"]["events"][0]["kv"]["value"] == b64("1")


def grpc_half_closed(cluster: Any) -> list[Any]:
    """A gRPC watch whose client sends its creates and closes its side at once."""
    requests = [
        rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"a")),
        rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"a", watch_id=3)),
        rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"b", watch_id=3)),
        rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"z", range_end=b"a")),
    ]
    out: queue.Queue[Any] = queue.Queue()
    with grpc.insecure_channel(cluster.endpoints) as channel:
        stream = rpcgrpc.WatchStub(channel).Watch(iter(requests), timeout=20)
        got = []
        for resp in stream:
            got.append(resp)
            if len(got) == 4:
                etcdctl(cluster.endpoints, "put", "a", "1")
            if len(got) == 6:
                stream.cancel()
                break
        out.put(got)
    got = [
        (r.watch_id, r.created, r.canceled, r.cancel_reason, [e.kv.value for e in r.events])
        for r in out.get()
    ]
    return got[:4] + sorted(got[4:])  # the two watches' events come in either order


def test_grpc_watch_outlives_the_clients_half_close(make_cluster: Any) -> None:
    """Before, keel-store ended the stream when the client closed its side, so these
    watches never saw the put."""
    answers = {name: grpc_half_closed(make_cluster(1, binary=name)) for name in SERVERS}
    assert answers["keel"] == answers["etcd"]
    assert answers["keel"] == [
        (0, True, False, "", []),
        (3, True, False, "", []),
        (-1, True, True, "mvcc: duplicate watch ID provided on the WatchStream", []),
        (-1, True, True, "mvcc: watcher range is empty", []),
        (0, False, False, "", [b"1"]),
        (3, False, False, "", [b"1"]),
    ]


def watchers(cluster: Any) -> float:
    """``etcd_debugging_mvcc_watcher_total`` from the member's /metrics."""
    host, port = host_port(cluster)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    line = next(x for x in text.splitlines() if x.startswith("etcd_debugging_mvcc_watcher_total"))
    return float(line.split()[-1])


def wait_watchers(cluster: Any, count: int) -> None:
    deadline = time.monotonic() + 10
    while watchers(cluster) != count:
        assert time.monotonic() < deadline, f"watchers: {watchers(cluster)}, wanted {count}"
        time.sleep(0.1)


def test_watches_end_when_the_client_goes_away(keel1: Any) -> None:
    """A gateway client that disconnects, mid-body or after it, and a gRPC client that
    half-closed then cancels, leave no watcher behind."""
    assert watchers(keel1) == 0
    body = [{"create_request": {"key": b64("a")}}, {"create_request": {"key": b64("b")}}]
    whole = HttpStream(keel1, "/v3/watch", body=body)
    chunked = HttpStream(keel1, "/v3/watch")
    chunked.send({"create_request": {"key": b64("c")}})
    assert len(whole.read(2)) == 1 + len(chunked.read(1))
    with grpc.insecure_channel(keel1.endpoints) as channel:
        create = rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"d"))
        stream = rpcgrpc.WatchStub(channel).Watch(iter([create]), timeout=20)
        assert next(stream).created
        wait_watchers(keel1, 4)
        stream.cancel()
        wait_watchers(keel1, 3)
    whole.close()
    wait_watchers(keel1, 1)
    chunked.close()  # its body never ended
    wait_watchers(keel1, 0)


def compacted_at_creation(cluster: Any) -> list[Any]:
    """A watch from a compacted revision with a chosen ID: its ID stays taken, and a
    cancel of it is answered (etcd keeps the ID on the stream)."""
    for value in ("1", "2", "3"):
        etcdctl(cluster.endpoints, "put", "k", value)
    etcdctl(cluster.endpoints, "compaction", "3")
    create = {"create_request": {"key": b64("k"), "start_revision": "1", "watch_id": 7}}
    body: list[object] = [create, create, {"cancel_request": {"watch_id": 7}}]
    s = HttpStream(cluster, "/v3/watch", body=body)
    try:
        return clean(s.read(4))
    finally:
        s.close()


def test_a_watch_compacted_at_creation_keeps_its_id(make_cluster: Any) -> None:
    """etcd tells the watch it was compacted from its store's sync loop (every 100 ms),
    so here the cancel comes first and etcd sends no compacted answer; keel-store sends
    it at once. The rest is the same: the second create is a duplicate, the cancel is
    answered (both were not before)."""
    answers = {name: compacted_at_creation(make_cluster(1, binary=name)) for name in SERVERS}
    ours = [r for r in answers["keel"] if "compact_revision" not in r["result"]]
    assert ours == answers["etcd"]
    got = [r["result"] for r in answers["keel"]]
    assert got[1]["compact_revision"] == "3"
    assert got[2]["cancel_reason"] == "mvcc: duplicate watch ID provided on the WatchStream"
    assert got[3] == {"header": {"revision": "4"}, "watch_id": "7", "canceled": True}
