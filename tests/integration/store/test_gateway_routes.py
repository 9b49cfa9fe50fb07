"""Every route of etcd 3.4's JSON gateway, side by side with Debian's etcd.

The same raw HTTP/1.1 requests go to keel-store and to etcd; status line, headers and
body must be equal once what must differ is taken out (:func:`normalise`): cluster and
member IDs, terms, revisions of the member list, hashes, sizes, lease IDs, tokens.

For each route: a normal request, no body, ``{}``, text that is not JSON, ``[]``,
``null``, a JSON value with text after it, an unknown field, GET instead of POST, a
trailing slash and the ``/v3beta/`` alias; then bodies of the wrong JSON types (int64
as number and as string, a fraction, an exponent, bad base64, an unknown enum name),
unknown and unclean paths, and a bad ``Authorization`` token, with auth off and on.
"""

from __future__ import annotations

import json
import re
import resource
import socket
from pathlib import Path
from typing import Any

import pytest

from keel_store.client import Client

from .conftest import Cluster

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

UNARY = {
    "kv/range": '{"key":"Zm9v"}',
    "kv/put": '{"key":"Zm9v","value":"YmFy"}',
    "kv/deleterange": '{"key":"bm9uZQ=="}',
    "kv/txn": '{"compare":[{"key":"Zm9v","target":"VERSION","result":"GREATER","version":"0"}]}',
    "kv/compaction": '{"revision":"1"}',
    "lease/grant": '{"TTL":"60","ID":"4242"}',
    "lease/timetolive": '{"ID":"4242","keys":true}',
    "kv/lease/timetolive": '{"ID":"4242"}',
    "lease/leases": "{}",
    "kv/lease/leases": "{}",
    "lease/revoke": '{"ID":"4242"}',
    "kv/lease/revoke": '{"ID":"4242"}',
    "cluster/member/list": "{}",
    "cluster/member/add": '{"peerURLs":["not a url"]}',
    "cluster/member/remove": '{"ID":"1"}',
    "cluster/member/update": '{"ID":"1","peerURLs":["http://127.0.0.1:1"]}',
    "cluster/member/promote": '{"ID":"1"}',
    "maintenance/alarm": '{"action":"GET"}',
    "maintenance/status": "{}",
    "maintenance/defragment": "{}",
    "maintenance/hash": "{}",
    "maintenance/transfer-leadership": '{"targetID":"1"}',
    "auth/user/add": '{"name":"u","password":"p"}',
    "auth/user/get": '{"name":"u"}',
    "auth/user/list": "{}",
    "auth/user/changepw": '{"name":"u","password":"q"}',
    "auth/role/add": '{"name":"r"}',
    "auth/role/get": '{"role":"r"}',
    "auth/role/list": "{}",
    "auth/role/grant": '{"name":"r","perm":{"permType":"READWRITE","key":"YQ=="}}',
    "auth/user/grant": '{"user":"u","role":"r"}',
    "auth/role/revoke": '{"role":"r","key":"YQ=="}',
    "auth/user/revoke": '{"name":"u","role":"r"}',
    "auth/role/delete": '{"role":"r"}',
    "auth/user/delete": '{"name":"u"}',
    "auth/authenticate": '{"name":"root","password":"x"}',
    "auth/disable": "{}",
}
"""The unary routes, each with a request that works (or fails as etcd's does)."""
STREAMS = ["watch", "lease/keepalive", "maintenance/snapshot"]

VOLATILE = {
    "cluster_id",
    "member_id",
    "raft_term",
    "hash",
    "dbSize",
    "dbSizeInUse",
    "raftIndex",
    "raftAppliedIndex",
    "raftTerm",
    "leader",
    "token",
    "peerURLs",
    "clientURLs",
    "TTL",
}
"""Fields whose values differ between any two clusters: left out of the comparison."""
IDS = {"ID", "memberID"}
"""Member and lease IDs: compared as "an ID or not"."""

EXACT = re.compile(
    r"etcdserver: .*|unknown value .* for enum .*|illegal base64 data at input byte \d+"
    r"|json: cannot unmarshal \S+( \S+)? into Go value of type"
    r" (map\[string\]json\.RawMessage|u?int(32|64)|\[\]uint8)"
)
"""Messages keel-store words as etcd does. Other InvalidArgument messages describe a
body Go's encoding/json and Python's json module both refuse, each in its own words
(same status, code and shape): they are compared as "a JSON decoding error"."""


def normalise(doc: Any, key: str = "") -> Any:
    """An answer without what must differ between two clusters."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            if k in VOLATILE:
                out[k] = "<volatile>"
            elif k in IDS:
                out[k] = "<id>"
            else:
                out[k] = normalise(v, k)
        if {"error", "message", "code"} <= set(out) and out["code"] == 3:
            for k in ("error", "message"):
                if isinstance(out[k], str) and not EXACT.fullmatch(out[k]):
                    out[k] = "<json decoding error>"
        return out
    if isinstance(doc, list):
        return [normalise(v, key) for v in doc]
    return doc


def request(port: int, method: str, path: str, body: str | None, headers: dict[str, str]) -> bytes:
    """One raw HTTP/1.1 request on its own connection; the whole answer."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    data = b"" if body is None else body.encode()
    if body is not None:
        lines.append(f"Content-Length: {len(data)}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def parse(answer: bytes) -> tuple[str, list[str], Any]:
    """Status line, headers (sorted; no Date/Content-Length/Connection), body (JSON if
    it is JSON: a chunked body is joined, each line a JSON document)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    skip = ("date:", "content-length:", "connection:")
    headers = sorted(h for h in lines if not h.lower().startswith(skip))
    if any(h.lower() == "transfer-encoding: chunked" for h in headers):
        data = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                headers += sorted(t for t in rest.decode().split("\r\n") if t)  # trailers
                break
            data, body = data + rest[:n], rest[n + 2 :]
        body = data
    try:
        docs = [json.loads(line) for line in body.splitlines() if line.strip()]
    except ValueError:
        return status, headers, body
    return status, headers, normalise(docs[0] if len(docs) == 1 else docs)


def ports(cluster: Any) -> int:
    return int(cluster.members[0].client_url.rsplit(":", 1)[1])


KNOWN: dict[str, str] = {}
"""Routes whose answers differ in the service, not the gateway (gRPC answers the same):
left for a change of their own; their other variants are still compared."""
KNOWN_BAD_TOKEN = {
    "lease/timetolive": "etcd does not look at the token; keel-store refuses it (401)",
    "kv/lease/timetolive": "etcd does not look at the token; keel-store refuses it (401)",
    "cluster/member/add": "etcd checks the peer URLs first (400); keel-store the token (401)",
    "maintenance/alarm": "etcd answers 500, code 2 'auth: invalid auth token'; keel-store 401",
    "maintenance/defragment": "etcd answers 500, code 2 'auth: invalid auth token'; keel-store 401",
    "maintenance/hash": "etcd answers 500, code 2 'auth: invalid auth token'; keel-store 401",
    "maintenance/transfer-leadership": "etcd answers 500, code 2; keel-store 401",
}
"""With auth off, a bad token on these routes: the service differs (see KNOWN)."""


KNOWN_AUTH_ON = {
    "kv/compaction": "etcd 3.4 compacts without a token; keel-store asks for one",
    "lease/timetolive": "etcd 3.4 answers without a token; keel-store asks for one",
    "kv/lease/timetolive": "etcd 3.4 answers without a token; keel-store asks for one",
    "cluster/member/add": "etcd checks the peer URLs before the token",
    "maintenance/hash": "etcd answers 500, code 2 'auth: user name is empty'",
    # etcd 3.5's maintenance rules and errors (docs/store.md, Auth), 3.4 checked less:
    "maintenance/alarm": "a user is needed to list alarms; etcd 3.4 answers anyone",
    "maintenance/defragment": "root needed, 3.5's error; etcd 3.4: 500, 'auth: ...'",
    "maintenance/transfer-leadership": "root needed; etcd 3.4 moves the leader for anyone",
}
"""Auth on: service differences left for a change of their own (see KNOWN)."""


def known(path: str, headers: dict[str, str]) -> bool:
    """Whether the request is one of :data:`KNOWN` / :data:`KNOWN_BAD_TOKEN` (normal body)."""
    name = path.partition("?")[0].removeprefix("/v3/").removeprefix("/v3beta/")
    return name in KNOWN or (bool(headers) and name in KNOWN_BAD_TOKEN)


def compare(
    keel: int, etcd: int, cases: list[tuple[str, str, str | None, dict[str, str]]]
) -> list[str]:
    """Each case sent to both; the differences, described."""
    diffs = []
    for method, path, body, headers in cases:
        if known(path, headers):
            continue
        ours = parse(request(keel, method, path, body, headers))
        theirs = parse(request(etcd, method, path, body, headers))
        if ours != theirs:
            diffs.append(f"{method} {path} {body!r} {headers}:\n  keel {ours}\n  etcd {theirs}")
    return diffs


def route_cases(
    name: str, body: str, headers: dict[str, str]
) -> list[tuple[str, str, str | None, dict[str, str]]]:
    """Every variant of a request to one unary route (the first is the normal one)."""
    path = f"/v3/{name}"
    return [
        ("POST", path, body, headers),
        ("POST", path, None, headers),
        ("POST", path, "", headers),
        ("POST", path, "{}", headers),
        ("POST", path, "null", headers),
        ("POST", path, "[]", headers),
        ("POST", path, '"text"', headers),
        ("POST", path, "{not json", headers),
        ("POST", path, body + " and more", headers),
        (
            "POST",
            path,
            body[:-1] + ("," if body != "{}" else "") + '"no_such_field":{"a":[1]}}',
            headers,
        ),
        ("GET", path, None, headers),
        ("PUT", path, body, headers),
        ("POST", path + "/", body, headers),
        ("POST", f"/v3beta/{name}", body, headers),
        ("POST", path + "?x=1", body, headers),
    ]


TYPES = [
    ("kv/range", '{"key":"Zm9v","limit":5}'),
    ("kv/range", '{"key":"Zm9v","limit":"5"}'),
    ("kv/range", '{"key":"Zm9v","limit":"x"}'),
    ("kv/range", '{"key":"Zm9v","limit":1.5}'),
    ("kv/range", '{"key":"Zm9v","limit":1e2}'),
    ("kv/range", '{"key":"Zm9v","limit":"1e2"}'),
    ("kv/range", '{"key":"Zm9v","limit":true}'),
    ("kv/range", '{"key":"Zm9v","limit":null}'),
    ("kv/range", '{"key":"Zm9v","serializable":"true"}'),
    ("kv/range", '{"key":"!!!"}'),
    ("kv/range", '{"key":"Zm9"}'),
    ("kv/range", '{"key":"Zm9vYg"}'),
    ("kv/range", '{"key":"Zm-_"}'),
    ("kv/range", '{"key":"Zm9v\\n"}'),
    ("kv/range", '{"key":5}'),
    ("kv/range", '{"key":"Zm9v","sort_order":"NOPE"}'),
    ("kv/range", '{"key":"Zm9v","sort_order":"descend"}'),
    ("kv/range", '{"key":"Zm9v","sort_order":"DESCEND","sortTarget":"KEY"}'),
    ("kv/range", '{"key":"Zm9v","sort_order":1}'),
    ("kv/range", '{"key":"Zm9v","key":"YQ=="}'),
    ("kv/txn", '{"compare":[{"key":"Zm9v","target":"NOPE"}]}'),
    (
        "kv/txn",
        '{"compare":[{"key":"Zm9v","target":"VALUE","value":"YQ==","x":1}],"success":[{"request_put":{"key":"YQ==","value":"Yg==","x":2}}]}',
    ),
    ("auth/role/grant", '{"name":"r","perm":{"permType":"NOPE","key":"YQ=="}}'),
    ("maintenance/alarm", '{"action":"NOPE"}'),
    ("maintenance/alarm", '{"action":"GET","alarm":"NOPE"}'),
    ("lease/grant", '{"TTL":"x"}'),
    ("lease/grant", '{"ttl":5}'),
]
"""Bodies of the right shape with values of the wrong JSON types, or unknown names."""

PATHS = [
    ("POST", "/v3/nope", "{}"),
    ("POST", "/v3/kv/nope", "{}"),
    ("GET", "/v3/nope", None),
    ("POST", "/v3/", "{}"),
    ("POST", "/v3", "{}"),
    ("GET", "/v3", None),
    ("POST", "/v3beta/nope", "{}"),
    ("POST", "/v3/kv/range:x", "{}"),
    ("POST", "/v3/kv//range", '{"key":"Zm9v"}'),
    ("GET", "/v3/kv/../kv/range", None),
    ("POST", "/v3/kv/%72ange", '{"key":"Zm9v"}'),
    ("POST", "/V3/kv/range", "{}"),
    ("GET", "/v3/watch", None),
    ("POST", "/v3/watch/", "{}"),
    ("GET", "/v3/lease/keepalive", None),
    ("GET", "/v3/maintenance/snapshot", None),
    ("POST", "/version", ""),
    ("POST", "/health", ""),
    ("GET", "/health?x=1", None),
    ("GET", "/version/", None),
    ("GET", "/nope", None),
    ("GET", "/v2/keys", None),
    ("POST", "/debug/vars", ""),
    ("GET", "/debug/vars/", None),
    ("GET", "/debug", None),
]
"""Unknown routes and paths Go's mux cleans. ``/v3/maintenance/hashkv`` is not a route
of etcd 3.4 (its HashKV is registered on ``/v3/maintenance/hash``, after Hash, so
Hash wins): see :func:`test_hashkv_route`."""


def test_every_route_as_etcd(make_cluster) -> None:
    """Auth off: every route and variant, and a bad token on each, answered as etcd."""
    keel = ports(make_cluster(1))
    etcd = ports(make_cluster(1, binary="etcd"))
    cases = []
    for name, body in UNARY.items():
        cases += route_cases(name, body, {})
        cases.append(("POST", f"/v3/{name}", body, {"Authorization": "bad-token"}))
    cases += [("POST", f"/v3/{name}", body, {}) for name, body in TYPES]
    cases += [(method, path, body, {}) for method, path, body in PATHS]
    for name in STREAMS:
        cases += [("GET", f"/v3/{name}", None, {}), ("POST", f"/v3/{name}/", "{}", {})]
    diffs = compare(keel, etcd, cases)
    assert not diffs, f"{len(diffs)} of {len(cases)} answers differ:\n" + "\n".join(diffs)


def debug_vars(member: Any) -> tuple[str, list[str], dict[str, Any]]:
    port = int(member.client_url.rsplit(":", 1)[1])
    status, headers, body = parse(request(port, "GET", "/debug/vars", None, {}))
    # Go's server sends a body past its 2 KiB buffer chunked (etcd's, with memstats).
    headers = [h for h in headers if h.lower() != "transfer-encoding: chunked"]
    return status, headers, json.loads(body)  # one document on several lines


def test_debug_vars_as_etcd(make_cluster) -> None:
    """``GET /debug/vars``, three members each: the same status, headers and variables
    as etcd (but Go's ``memstats``), and ``raft.status`` as etcd's raft writes it: the
    leader's view of every member's progress, a follower's without any."""
    shapes = {}
    for binary in ("keel", "etcd"):
        cluster = make_cluster(3, binary=binary)
        with Client([m.endpoint for m in cluster.members], timeout=5) as client:
            revision = client.put("k", "v")
        leader = cluster.leader()
        ids = {st["Endpoint"]: st["Status"]["header"]["member_id"] for st in cluster.status()}
        pages = {}
        for m in cluster.members:
            status, headers, body = debug_vars(m)
            raft = body["raft.status"]
            assert raft["id"] == f"{ids[m.endpoint]:x}"
            assert raft["lead"] == f"{ids[leader.endpoint]:x}"
            assert raft["leadtransferee"] == "0"
            assert raft["applied"] <= raft["commit"]
            assert raft["term"] >= 1
            assert raft["vote"] in {f"{i:x}" for i in [0, *ids.values()]}
            if m is leader:
                assert raft["raftState"] == "StateLeader"
                assert set(raft["progress"]) == {f"{i:x}" for i in ids.values()}
                for pr in raft["progress"].values():
                    assert pr["state"] == "StateReplicate"
                    assert revision <= pr["match"] < pr["next"]
            else:
                assert (raft["raftState"], raft["progress"]) == ("StateFollower", {})
            assert isinstance(body["cmdline"], list)
            assert body["cmdline"]
            assert body["file_descriptor_limit"] > 0
            pages[m is leader] = (status, headers, sorted(body), sorted(raft))
        shapes[binary] = pages
    etcd = {
        k: (st, h, [n for n in names if n != "memstats"], r)
        for k, (st, h, names, r) in shapes["etcd"].items()
    }
    assert "memstats" in shapes["etcd"][True][2]
    assert shapes["keel"] == etcd


def test_open_files_limit_raised_as_etcd(tmp_path: Path) -> None:
    """Started with a soft limit on open files below the hard one (systemd's default
    is 1,024), etcd (Go's runtime) raises it to the hard limit, and so does keel-store
    (before 2026-12-07 it kept 1,024); ``/debug/vars`` reports the limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard <= 1024:
        pytest.skip(f"the hard limit on open files is {hard}: nothing to raise")
    for binary in ("keel", "etcd"):
        cluster = Cluster(tmp_path, 1, binary)
        member = cluster.members[0]
        member.argv = ["prlimit", f"--nofile=1024:{hard}", "--", *member.argv]  # execs
        try:
            cluster.start()
            assert member.proc is not None
            limits = Path(f"/proc/{member.proc.pid}/limits").read_text().splitlines()
            line = next(x for x in limits if x.startswith("Max open files"))
            assert line.split()[3:5] == [str(hard), str(hard)], f"{binary}: {line}"
            assert debug_vars(member)[2]["file_descriptor_limit"] == hard, binary
        finally:
            cluster.stop()


def test_hashkv_route(make_cluster) -> None:
    """etcd 3.4 has no /v3/maintenance/hashkv (404); keel-store keeps it (etcd 3.5's
    route) and answers HashKV there. /v3/maintenance/hash is Hash on both."""
    keel = ports(make_cluster(1))
    etcd = ports(make_cluster(1, binary="etcd"))
    theirs = parse(request(etcd, "POST", "/v3/maintenance/hashkv", "{}", {}))
    assert theirs[0] == "HTTP/1.1 404 Not Found"
    status, _, doc = parse(request(keel, "POST", "/v3/maintenance/hashkv", "{}", {}))
    assert status == "HTTP/1.1 200 OK"
    assert "hash" in doc


def test_routes_with_auth_on(make_cluster) -> None:
    """Auth on: no token, a bad token and root's token on every route, as etcd."""
    keel_cluster, etcd_cluster = make_cluster(1), make_cluster(1, binary="etcd")
    setup = [
        ("auth/user/add", '{"name":"root","password":"pw"}'),
        ("auth/user/grant", '{"user":"root","role":"root"}'),
        ("auth/enable", "{}"),
    ]
    tokens = []
    for port in (ports(keel_cluster), ports(etcd_cluster)):
        for name, body in setup:
            status, _, _ = parse(request(port, "POST", f"/v3/{name}", body, {}))
            assert status == "HTTP/1.1 200 OK", (port, name, status)
        raw = request(port, "POST", "/v3/auth/authenticate", '{"name":"root","password":"pw"}', {})
        tokens.append(json.loads(raw.partition(b"\r\n\r\n")[2])["token"])
    keel, etcd = ports(keel_cluster), ports(etcd_cluster)
    cases = []
    for name, body in UNARY.items():
        if name == "auth/disable" or name in KNOWN_AUTH_ON or name in KNOWN:
            continue
        cases.append(("POST", f"/v3/{name}", body, {}))
        cases.append(("POST", f"/v3/{name}", body, {"Authorization": "bad-token"}))
    diffs = compare(keel, etcd, cases)
    # Root's own token: each server's (the values differ, the answers must not).
    for name, body in UNARY.items():
        skip = ("auth/disable", "auth/user/delete", "auth/user/changepw", "auth/user/revoke")
        if name in skip or name in KNOWN_AUTH_ON or name in KNOWN:
            continue
        ours = parse(request(keel, "POST", f"/v3/{name}", body, {"Authorization": tokens[0]}))
        theirs = parse(request(etcd, "POST", f"/v3/{name}", body, {"Authorization": tokens[1]}))
        if ours != theirs:
            diffs.append(f"root POST /v3/{name} {body}:\n  keel {ours}\n  etcd {theirs}")
    assert not diffs, f"{len(diffs)} answers differ:\n" + "\n".join(diffs)
