"""etcd's Lock and Election services (v3lock, v3election), side by side with etcd.

The same calls go to keel-store and to Debian's etcd 3.4.23, over gRPC and over the
JSON gateway (``/v3/lock/*``, ``/v3/election/*``), and the answers are compared with
the cluster and member IDs, terms and lease IDs taken out: two clients contending for
a lock (the second gets it once the first unlocks, or once the first's lease is
revoked), a lock given up by its client (deadline, disconnect) leaving no key behind,
an election with two candidates (leader, proclaim by the leader and by a non-leader,
observe, resign handing over), and the permission errors with auth on.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from keel_store.pb import electiongrpc, electionpb, lockgrpc, lockpb, rpcgrpc, rpcpb

from .conftest import etcdctl
from .test_watch_stream import HttpStream, host_port, post

pytestmark = [pytest.mark.host, pytest.mark.timeout(240)]

SERVERS = ["keel", "etcd"]
VOLATILE = ("cluster_id", "member_id", "raft_term")
BLOCKED = 0.6
"""How long a call that must wait is given to (wrongly) return."""


class Names:
    """Lease IDs (as numbers, strings and the hex in keys) replaced by labels."""

    def __init__(self) -> None:
        self.leases: dict[int, str] = {}

    def add(self, lease: int, label: str) -> int:
        self.leases[lease] = label
        return lease

    def text(self, value: str) -> str:
        for lease, label in self.leases.items():
            value = value.replace(f"{lease:x}", label).replace(str(lease), label)
        return value

    def clean(self, x: Any) -> Any:
        """An answer (message, dict or list) without what differs between two clusters."""
        if hasattr(x, "DESCRIPTOR"):
            x = json_format.MessageToDict(x, preserving_proto_field_name=True)
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if k in VOLATILE:
                    continue
                text = k in ("key", "value", "name") and isinstance(v, str)
                out[k] = self.clean(base64.b64decode(v).decode() if text else v)
            return out
        if isinstance(x, list):
            return [self.clean(v) for v in x]
        if isinstance(x, str):
            return self.text(x)
        return x


def error(exc: grpc.RpcError) -> tuple[str, str]:
    code = exc.code().name  # type: ignore[attr-defined]
    if code == "DEADLINE_EXCEEDED":
        # The client's own timer ("Deadline Exceeded") or the server's status sent at
        # the same moment ("context deadline exceeded", grpc-go's and keel-store's):
        # which arrives first is a race on a loaded machine, for either server.
        return (code, "deadline exceeded")
    return (code, exc.details())  # type: ignore[attr-defined]


class Grpc:
    """Stubs for one cluster's first member."""

    def __init__(self, cluster: Any, names: Names) -> None:
        self.channel = grpc.insecure_channel(cluster.members[0].endpoint)
        self.kv = rpcgrpc.KVStub(self.channel)
        self.lease = rpcgrpc.LeaseStub(self.channel)
        self.lock = lockgrpc.LockStub(self.channel)
        self.election = electiongrpc.ElectionStub(self.channel)
        self.names = names

    def grant(self, label: str, ttl: int = 60) -> int:
        resp = self.lease.LeaseGrant(rpcpb.LeaseGrantRequest(TTL=ttl), timeout=10)
        return self.names.add(resp.ID, label)

    def keys(self, prefix: str) -> list[str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        resp = self.kv.Range(
            rpcpb.RangeRequest(key=prefix.encode(), range_end=end.encode()), timeout=10
        )
        return sorted(self.names.text(kv.key.decode()) for kv in resp.kvs)

    def call(self, method: Any, request: Any, **kw: Any) -> Any:
        """The answer, or the error as (code, message)."""
        try:
            return self.names.clean(method(request, timeout=kw.pop("timeout", 10), **kw))
        except grpc.RpcError as exc:
            return error(exc)


def still_waiting(future: Any) -> bool:
    time.sleep(BLOCKED)
    return not future.done()


def answer(names: Names, future: Any) -> Any:
    try:
        return names.clean(future.result(timeout=10))
    except grpc.RpcError as exc:
        return error(exc)


# --- Lock over gRPC ---------------------------------------------------------------------------


def lock_session(cluster: Any) -> list[Any]:
    names = Names()
    c = Grpc(cluster, names)
    got: list[Any] = []
    a, b, d = c.grant("A"), c.grant("B"), c.grant("D")
    first = c.lock.Lock(lockpb.LockRequest(name=b"job", lease=a), timeout=10)
    got.append(names.clean(first))
    got.append(c.call(c.lock.Lock, lockpb.LockRequest(name=b"job", lease=a)))  # A again
    second = c.lock.Lock.future(lockpb.LockRequest(name=b"job", lease=b), timeout=20)
    got.append(("B waits", still_waiting(second)))
    got.append(c.call(c.lock.Unlock, lockpb.UnlockRequest(key=first.key)))
    got.append(("B", answer(names, second)))
    third = c.lock.Lock.future(lockpb.LockRequest(name=b"job", lease=d), timeout=20)
    got.append(("D waits", still_waiting(third)))
    c.lease.LeaseRevoke(rpcpb.LeaseRevokeRequest(ID=b), timeout=10)  # B's key goes with it
    got.append(("D", answer(names, third)))
    # A lock whose deadline passes while it waits deletes its key; its lease stays.
    got.append(c.call(c.lock.Lock, lockpb.LockRequest(name=b"job", lease=a), timeout=1))
    time.sleep(0.3)
    got.append(("keys", c.keys("job/")))
    got.append(c.call(c.lock.Lock, lockpb.LockRequest(name=b"job", lease=12345)))
    got.append(c.call(c.lock.Unlock, lockpb.UnlockRequest(key=b"")))
    got.append(c.call(c.lock.Unlock, lockpb.UnlockRequest(key=b"job/none")))
    # No lease: the service grants one of 60 s (and leaves it).
    own = c.lock.Lock(lockpb.LockRequest(name=b"solo"), timeout=10)
    lease = int(own.key[len(b"solo/") :], 16)
    ttl = c.lease.LeaseTimeToLive(rpcpb.LeaseTimeToLiveRequest(ID=lease, keys=True), timeout=10)
    got.append(("own lease", ttl.grantedTTL, [k.decode() == own.key.decode() for k in ttl.keys]))
    c.channel.close()
    return got


def test_grpc_lock_contention_matches_etcd(make_cluster: Any) -> None:
    answers = {name: lock_session(make_cluster(1, binary=name)) for name in SERVERS}
    got = answers["keel"]
    assert got[2] == ("B waits", True), got
    assert got[4][0] == "B"
    assert got[4][1]["key"] == "job/B", got
    assert got[5] == ("D waits", True), got
    assert got[6][1]["key"] == "job/D", got
    assert got[7] == ("DEADLINE_EXCEEDED", "deadline exceeded"), got
    assert got[8] == ("keys", ["job/D"]), got
    assert got[9] == ("UNKNOWN", "etcdserver: requested lease not found")
    assert got[10] == ("UNKNOWN", "etcdserver: key is not provided")
    etcd = answers["etcd"]
    if etcd[7] == ("UNKNOWN", "context deadline exceeded"):
        # etcd 3.4's v3lock returns its context's error as is, which grpc-go sends as
        # UNKNOWN; on a loaded machine that status can beat the client's own timer (seen
        # once in CI, 2026-12-07). keel-store's answer above is checked as before.
        etcd[7] = ("DEADLINE_EXCEEDED", "deadline exceeded")
    assert answers["keel"] == etcd


# --- Election over gRPC -----------------------------------------------------------------------


def observe(c: Grpc, name: bytes) -> tuple[Any, queue.Queue[Any]]:
    """An Observe call read by a thread into a queue."""
    call = c.election.Observe(electionpb.LeaderRequest(name=name), timeout=60)
    seen: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for resp in call:
                seen.put(c.names.clean(resp))
        except grpc.RpcError as exc:
            seen.put(error(exc))

    threading.Thread(target=read, daemon=True).start()
    return call, seen


def drain(seen: queue.Queue[Any], count: int) -> list[Any]:
    out = []
    for _ in range(count):
        try:
            out.append(seen.get(timeout=5))
        except queue.Empty:
            break
    return out


def election_session(cluster: Any) -> list[Any]:
    names = Names()
    c = Grpc(cluster, names)
    got: list[Any] = []
    a, b = c.grant("A"), c.grant("B")
    got.append(c.call(c.election.Leader, electionpb.LeaderRequest(name=b"pick")))
    watcher, seen = observe(c, b"pick")
    time.sleep(0.3)
    won = c.election.Campaign(
        electionpb.CampaignRequest(name=b"pick", lease=a, value=b"a1"), timeout=10
    )
    got.append(names.clean(won))
    other = c.election.Campaign.future(
        electionpb.CampaignRequest(name=b"pick", lease=b, value=b"b1"), timeout=20
    )
    got.append(("B waits", still_waiting(other)))
    got.append(c.call(c.election.Leader, electionpb.LeaderRequest(name=b"pick")))
    got.append(
        c.call(c.election.Proclaim, electionpb.ProclaimRequest(leader=won.leader, value=b"a2"))
    )
    # Not the leader: B's key (its create revision is not the leader's), a wrong revision.
    b_key = electionpb.LeaderKey(name=b"pick", key=b"pick/%x" % b, rev=won.leader.rev, lease=b)
    got.append(c.call(c.election.Proclaim, electionpb.ProclaimRequest(leader=b_key, value=b"bx")))
    stale = electionpb.LeaderKey()
    stale.CopyFrom(won.leader)
    stale.rev += 100
    got.append(c.call(c.election.Proclaim, electionpb.ProclaimRequest(leader=stale, value=b"ax")))
    got.append(c.call(c.election.Proclaim, electionpb.ProclaimRequest(value=b"ax")))
    got.append(c.call(c.election.Resign, electionpb.ResignRequest(leader=stale)))  # no-op
    got.append(("B still waits", not other.done()))
    got.append(c.call(c.election.Resign, electionpb.ResignRequest(leader=won.leader)))
    got.append(("B", answer(names, other)))
    got.append(c.call(c.election.Leader, electionpb.LeaderRequest(name=b"pick")))
    got.append(("observed", drain(seen, 4)))
    watcher.cancel()
    got.append(c.call(c.election.Resign, electionpb.ResignRequest()))
    # Campaigning again with the same lease and a new value proclaims it at once.
    got.append(
        c.call(c.election.Campaign, electionpb.CampaignRequest(name=b"pick", lease=b, value=b"b2"))
    )
    got.append(c.call(c.election.Leader, electionpb.LeaderRequest(name=b"pick")))
    c.channel.close()
    return got


def test_grpc_election_matches_etcd(make_cluster: Any) -> None:
    answers = {name: election_session(make_cluster(1, binary=name)) for name in SERVERS}
    got = answers["keel"]
    assert got[0] == ("UNKNOWN", "election: no leader")
    assert got[1]["leader"]["key"] == "pick/A", got
    assert got[2] == ("B waits", True), got
    assert got[3]["kv"]["value"] == "a1"
    assert got[5] == ("UNKNOWN", "election: not leader"), got
    assert got[6] == ("UNKNOWN", "election: not leader"), got
    assert got[7] == ("UNKNOWN", '"leader" field must be provided'), got
    assert got[9] == ("B still waits", True), got
    assert got[11][1]["leader"]["key"] == "pick/B", got
    assert got[12]["kv"]["value"] == "b1", got
    observed = [r["kv"]["value"] for r in got[13][1]]
    assert observed == ["a1", "a2", "b1"], got[13]
    assert answers["keel"] == answers["etcd"]


def test_grpc_campaign_given_up_resigns(make_cluster: Any) -> None:
    """A Campaign (and a Lock) cancelled by its client while waiting leaves no key."""
    answers = {}
    for name in SERVERS:
        names = Names()
        c = Grpc(make_cluster(1, binary=name), names)
        a, b = c.grant("A"), c.grant("B")
        c.election.Campaign(electionpb.CampaignRequest(name=b"e", lease=a, value=b"x"), timeout=10)
        c.lock.Lock(lockpb.LockRequest(name=b"l", lease=a), timeout=10)
        waiting = [
            c.election.Campaign.future(electionpb.CampaignRequest(name=b"e", lease=b), timeout=20),
            c.lock.Lock.future(lockpb.LockRequest(name=b"l", lease=b), timeout=20),
        ]
        time.sleep(BLOCKED)
        before = (c.keys("e/"), c.keys("l/"))
        for future in waiting:
            future.cancel()
        time.sleep(0.5)
        answers[name] = (before, c.keys("e/"), c.keys("l/"))
        c.channel.close()
    assert answers["keel"] == ((["e/A", "e/B"], ["l/A", "l/B"]), ["e/A"], ["l/A"]), answers
    assert answers["keel"] == answers["etcd"]


# --- the gateway ------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def call(cluster: Any, names: Names, path: str, doc: dict[str, Any]) -> Any:
    status, lines = post(cluster, path, json.dumps(doc).encode())
    return (status, [names.clean(json.loads(line)) for line in lines])


def blocking_post(cluster: Any, path: str, doc: dict[str, Any]) -> socket.socket:
    """A POST whose answer is read later (:func:`read_answer`)."""
    sock = socket.create_connection(host_port(cluster), timeout=10)
    data = json.dumps(doc).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def waiting(sock: socket.socket) -> bool:
    sock.settimeout(BLOCKED)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return True


def read_answer(sock: socket.socket, names: Names) -> Any:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))[15:]
    )
    while len(body) < length:
        body += sock.recv(65536)
    sock.close()
    return (int(head.split(b" ")[1]), names.clean(json.loads(body)))


def gateway_session(cluster: Any) -> list[Any]:
    names = Names()
    got: list[Any] = []

    def grant(label: str) -> str:
        _, lines = post(cluster, "/v3/lease/grant", b'{"TTL": 60}')
        lease = json.loads(lines[0])["ID"]
        names.add(int(lease), label)
        return lease

    a, b = grant("A"), grant("B")
    got.append(call(cluster, names, "/v3/lock/lock", {"name": b64("gw"), "lease": a}))
    key = b64(f"gw/{int(a):x}")
    second = blocking_post(cluster, "/v3/lock/lock", {"name": b64("gw"), "lease": b})
    got.append(("B waits", waiting(second)))
    got.append(call(cluster, names, "/v3/lock/unlock", {"key": key}))
    got.append(("B", read_answer(second, names)))
    # A client that leaves while its lock waits: its key is deleted.
    gone = blocking_post(cluster, "/v3/lock/lock", {"name": b64("gw"), "lease": a})
    time.sleep(BLOCKED)
    gone.close()
    time.sleep(0.5)
    got.append(call(cluster, names, "/v3/kv/range", {"key": b64("gw/"), "range_end": b64("gw0")}))

    observer = HttpStream(cluster, "/v3/election/observe", body=[{"name": b64("vote")}])
    got.append(call(cluster, names, "/v3/election/leader", {"name": b64("vote")}))
    status, won = call(
        cluster,
        names,
        "/v3/election/campaign",
        {"name": b64("vote"), "lease": a, "value": b64("a1")},
    )
    got.append((status, won))
    leader = {
        "name": b64("vote"),
        "key": b64(f"vote/{int(a):x}"),
        "rev": won[0]["leader"]["rev"],
        "lease": a,
    }
    rival = blocking_post(
        cluster, "/v3/election/campaign", {"name": b64("vote"), "lease": b, "value": b64("b1")}
    )
    got.append(("B waits", waiting(rival)))
    got.append(
        call(cluster, names, "/v3/election/proclaim", {"leader": leader, "value": b64("a2")})
    )
    wrong = {**leader, "rev": str(int(leader["rev"]) + 50)}
    got.append(call(cluster, names, "/v3/election/proclaim", {"leader": wrong, "value": b64("x")}))
    got.append(call(cluster, names, "/v3/election/proclaim", {"value": b64("x")}))
    got.append(call(cluster, names, "/v3/election/leader", {"name": b64("vote")}))
    got.append(call(cluster, names, "/v3/election/resign", {"leader": leader}))
    got.append(("B", read_answer(rival, names)))
    results = [names.clean(r) for r in observer.read(3)]
    got.append(("observed", observer.status, results))
    observer.close()
    got.append(call(cluster, names, "/v3/election/resign", {}))
    got.append(call(cluster, names, "/v3/lock/lock", {"name": "not base64!"}))
    return got


def test_gateway_lock_and_election_match_etcd(make_cluster: Any) -> None:
    answers = {name: gateway_session(make_cluster(1, binary=name)) for name in SERVERS}
    got = answers["keel"]
    assert got[0][0] == 200, got
    assert got[0][1][0]["key"] == "gw/A", got
    assert got[1] == ("B waits", True), got
    assert got[3][1][1]["key"] == "gw/B", got
    assert [kv["key"] for kv in got[4][1][0]["kvs"]] == ["gw/B"], got
    assert got[5][0] == 500, got
    assert got[5][1][0]["error"] == "election: no leader", got
    assert got[7] == ("B waits", True), got
    assert got[9][1][0]["error"] == "election: not leader", got
    observed = got[14]
    assert observed[1] == 200
    assert [r["result"]["kv"]["value"] for r in observed[2]] == ["a1", "a2", "b1"], got
    assert answers["keel"] == answers["etcd"]


# --- auth -------------------------------------------------------------------------------------


def auth_session(cluster: Any) -> Iterator[Any]:
    ep = cluster.endpoints
    for args in (
        ("user", "add", "root:pw"),
        ("user", "add", "bob:pw"),
        ("role", "add", "locker"),
        ("role", "grant-permission", "locker", "--prefix=true", "readwrite", "mine/"),
        ("user", "grant-role", "bob", "locker"),
        ("auth", "enable"),
    ):
        etcdctl(ep, *args)
    names = Names()
    c = Grpc(cluster, names)
    token = (
        rpcgrpc.AuthStub(c.channel)
        .Authenticate(rpcpb.AuthenticateRequest(name="bob", password="pw"), timeout=10)
        .token
    )
    bob = (("token", token),)
    mine = c.lock.Lock(lockpb.LockRequest(name=b"mine"), metadata=bob, timeout=10)
    names.add(int(mine.key[len(b"mine/") :], 16), "OWN")  # the lease the service granted
    yield names.clean(mine)
    yield c.call(c.lock.Lock, lockpb.LockRequest(name=b"theirs"), metadata=bob)
    yield c.call(c.lock.Lock, lockpb.LockRequest(name=b"mine"))
    yield c.call(c.election.Leader, electionpb.LeaderRequest(name=b"theirs"), metadata=bob)
    yield c.call(c.election.Leader, electionpb.LeaderRequest(name=b"mine"), metadata=bob)
    yield c.call(
        c.election.Campaign, electionpb.CampaignRequest(name=b"theirs", value=b"v"), metadata=bob
    )
    c.channel.close()


def test_lock_and_election_permissions_as_etcd(make_cluster: Any) -> None:
    answers = {}
    for name in SERVERS:
        answers[name] = list(auth_session(make_cluster(1, binary=name)))
    got = answers["keel"]
    assert got[0]["key"] == "mine/OWN", got
    assert got[1] == ("UNKNOWN", "etcdserver: permission denied"), got
    assert got[2] == ("UNKNOWN", "etcdserver: user name is empty"), got
    assert got[3] == ("UNKNOWN", "etcdserver: permission denied"), got
    assert answers["keel"] == answers["etcd"]
