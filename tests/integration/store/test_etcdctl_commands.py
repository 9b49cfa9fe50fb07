"""Debian's etcdctl commands beyond test_etcdctl_single, on keel-store and on etcd 3.4.

Each test runs the same commands against keel-store and Debian's etcd (started side by
side on loopback) and compares what etcdctl prints and its exit status. Only what
differs by design is normalized: cluster, member and lease IDs, endpoints and peer
URLs, raft terms and indexes, database sizes, durations and log timestamps (see
:func:`normalize`); memory figures of ``check datascale``; the IDs of members added
while the test runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel_store.bbolt.reader import read_db
from keel_store.pb import rpcpb

from .conftest import ETCDCTL, Cluster, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

ALICE = ["--user=alice:alicepw"]
ROOT = ["--user=root:rootpw"]

# Ordinary commands in every output format. "{lease}" is the lease granted first.
FORMATS: list[list[str]] = [
    ["put", "foo", "bar", "-w", "fields"],
    ["put", "foo", "baz", "--prev-kv", "-w", "json"],
    ["put", "foo", "--ignore-value"],
    ["put", "missing", "--ignore-value"],
    ["put", "foo", "qux", "--ignore-lease"],
    ["put", "missing", "v", "--ignore-lease"],
    ["put", "\x01\xff", "binary"],
    ["put", "a/1", "x"],
    ["put", "a/2", "y"],
    # HashKV before a lease: a key's lease ID (different by design) is in the hash.
    ["endpoint", "hashkv", "--cluster"],
    ["endpoint", "hashkv", "-w", "table"],
    ["lease", "grant", "300"],
    ["put", "--lease={lease}", "a/3", "z"],
    ["get", "foo", "-w", "fields"],
    ["get", "foo", "-w", "table"],
    ["get", "foo", "--hex"],
    ["get", "foo", "-w", "json", "--hex"],
    ["get", "\x01\xff", "-w", "fields", "--hex"],
    ["get", "foo", "--print-value-only"],
    ["get", "foo", "--print-value-only", "-w", "json"],
    ["get", "--prefix", "a/", "--keys-only"],
    ["get", "--prefix", "a/", "--keys-only", "-w", "json"],
    ["get", "--prefix", "a/", "--limit=1", "-w", "table"],
    ["get", "", "--from-key", "-w", "fields"],
    ["get", "foo", "-w", "protobuf"],
    ["lease", "timetolive", "{lease}", "--keys"],
    ["lease", "timetolive", "{lease}", "--keys", "-w", "json"],
    ["lease", "keep-alive", "--once", "{lease}"],
    ["lease", "keep-alive", "--once", "-w", "json", "{lease}"],
    ["lease", "list"],
    ["lease", "list", "-w", "json"],
    ["lease", "timetolive", "abc"],
    ["lease", "keep-alive", "--once", "abc"],
    ["del", "--from-key", "a/2", "--prev-kv", "-w", "fields"],
    ["del", "--from-key", "zzz", "-w", "json"],
    ["put", "v", "1"],
    ["put", "v", "2"],
    ["compaction", "--physical", "3"],
    ["compaction", "--physical", "3"],
    ["compaction", "99"],
    ["get", "foo", "--rev=2"],
    ["version"],
    ["member", "list"],
    ["member", "list", "-w", "table"],
    ["member", "list", "-w", "fields"],
    ["member", "list", "-w", "json"],
    ["endpoint", "status", "-w", "fields"],
    ["endpoint", "status", "--cluster", "-w", "table"],
    ["endpoint", "health", "--cluster", "-w", "json"],
    ["defrag"],
    ["defrag", "--cluster"],
    ["alarm", "list", "-w", "json"],
    # Users and roles, in the forms test_auth.py does not use.
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["role", "get", "root"],
    ["user", "grant-role", "root", "root"],
    ["user", "get", "root", "--detail"],
    ["role", "add", "app"],
    ["role", "grant-permission", "app", "readwrite", "a/", "--prefix"],
    ["role", "grant-permission", "app", "read", "k", "--from-key"],
    ["role", "grant-permission", "app", "write", "x", "z"],
    ["role", "get", "app", "-w", "json"],
    ["role", "get", "app", "-w", "table"],
    ["role", "list", "-w", "fields"],
    ["user", "add", "alice", "--new-user-password=first"],
    ["user", "grant-role", "alice", "app"],
    ["user", "grant-role", "alice", "app"],
    ["user", "get", "alice", "--detail"],
    ["user", "get", "alice", "--detail", "-w", "json"],
    ["user", "list", "-w", "table"],
    ["user", "passwd", "alice", "--interactive=false"],
    ["role", "revoke-permission", "app", "x", "z"],
    ["role", "revoke-permission", "app", "x", "z"],
    ["role", "revoke-permission", "app", "k", "--from-key"],
    ["auth", "enable"],
    [*ALICE, "put", "a/9", "ok"],
    [*ALICE, "user", "get", "alice"],
    [*ALICE, "user", "get", "nosuch"],
    [*ALICE, "role", "get", "nosuch"],
    [*ALICE, "role", "get", "app"],
    [*ROOT, "user", "get", "nosuch"],
    [*ROOT, "role", "get", "nosuch"],
    [*ALICE, "auth", "disable"],
    [*ROOT, "auth", "disable"],
    ["auth", "disable"],
]
STDIN = {("user", "passwd"): "alicepw\n"}

# txn -i: compares on version, create and mod revision (etcdctl 3.4 cannot parse a
# lease compare: it panics on either server).
TXNS: list[tuple[list[str], str]] = [
    (["txn", "-i", "-w", "json"], 'version("t") = "0"\ncreate("t") = "0"\n\nput t 1\n\nget t\n\n'),
    (["txn", "-i"], 'version("t") > "5"\n\nput t 2\n\nget t\ndel t --prev-kv\n\n'),
    (["txn", "-i", "-w", "fields"], 'mod("t") < "1000"\n\nput t 3\nget t\n\nput u 1\n\n'),
    (["txn", "-i", "-w", "table"], 'create("t") != "0"\n\ndel t\n\n\n'),
    (["txn", "-i", "--hex"], 'value("nothing") = "1"\n\n\n\nget foo\n\n'),
]


class Subst:
    """What one server's answers carry by design: its IDs and addresses.

    Member ``i`` is called ``names[i]`` (default ``MEMBER<i>``), its client URL
    ``ENDPOINT-<name>`` and its peer URL ``PEER-<name>``, and with ``names`` its
    ``--name`` ``NAME-<name>``; ``hex[name]`` is its ID as etcdctl takes it.
    """

    def __init__(self, cluster: Cluster, names: list[str] | None = None) -> None:
        self.map: dict[str, str] = {}
        self.hex: dict[str, str] = {}
        for i, m in enumerate(cluster.members):
            name = names[i] if names else f"MEMBER{i}"
            st = json.loads(etcdctl(m.endpoint, "endpoint", "status", "-w", "json").stdout)
            header = st[0]["Status"]["header"]
            self.add(header["member_id"], name)
            self.add(header["cluster_id"], "CLUSTER")
            self.map[m.endpoint] = f"ENDPOINT-{name}"
            if names:
                self.map[m.name] = f"NAME-{name}"
            peer = next(a for a in m.argv if a.startswith("--initial-advertise-peer-urls="))
            self.map[peer.split("//", 1)[1]] = f"PEER-{name}"
        self.leases: list[str] = []

    def add(self, number: int, name: str) -> None:
        """``number`` in decimal and in hex (as etcdctl prints IDs) stands for ``name``."""
        self.map[str(number)] = name
        self.map[format(number, "x")] = name
        self.hex[name] = format(number, "x")

    def lease(self, hex_id: str) -> None:
        """A lease etcdctl printed (zero-padded hex) is called LEASE<n>."""
        self.leases.append(hex_id)
        self.add(int(hex_id, 16), f"LEASE{len(self.leases) - 1}")
        self.map[hex_id] = f"LEASE{len(self.leases) - 1}"


def normalize(text: str, subst: Subst) -> str:
    """``text`` with IDs, addresses, raft terms/indexes, sizes, times replaced."""
    for old in sorted(subst.map, key=len, reverse=True):
        text = re.sub(rf"(?<![0-9a-zA-Z]){re.escape(old)}(?![0-9a-zA-Z])", subst.map[old], text)
    text = re.sub(r'"ts":"[^"]*"', '"ts":"T"', text)
    # A lease's remaining TTL depends on when it is asked.
    text = re.sub(r'"ttl":\d+', '"ttl":N', re.sub(r"remaining\(\d+s\)", "remaining(N)", text))
    # Which endpoint the client's balancer picked; IDs printed %16x (space padded).
    text = re.sub(r'"target":"endpoint://client-[^"]*"', '"target":"T"', text)
    text = re.sub(r"Member +", "Member ", text)
    text = re.sub(r" cluster +", " cluster ", text)  # "added to cluster %16x"
    for field in ("raft_term", "raftTerm", "raftIndex", "raftAppliedIndex", "dbSize"):
        text = re.sub(rf'"{field}":\d+', f'"{field}":N', text)
    # Sizes differ by design (both are there: keel-store's in-use figure counts its
    # member records, so it is not 0 on an empty store, as it was before 2026-12-07).
    text = re.sub(r'"dbSizeInUse":\d+', '"dbSizeInUse":N', text)
    text = re.sub(r'"(RaftTerm|RaftIndex|RaftAppliedIndex|DBSize)" : \d+', r'"\1" : N', text)
    text = re.sub(r"\d+(\.\d+)?(ns|µs|ms|s)\b", "DURATION", text)
    # The table of endpoint status: DB SIZE, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX.
    text = re.sub(
        r"\|\s+[\d.]+ [kMG]?B \|(.*?)\|\s+\d+ \|\s+\d+ \|\s+\d+ \|",
        r"| SIZE |\1| N | N | N |",
        text,
    )
    # Tables are padded to their widest cell, which IDs of other lengths change.
    return re.sub(r" *\| *", "|", re.sub(r"-{3,}", "---", text))


def _protobuf(data: bytes) -> str:
    """A RangeResponse from ``-w protobuf`` without the header fields that differ."""
    msg = rpcpb.RangeResponse()
    msg.ParseFromString(data)
    msg.header.ClearField("cluster_id")
    msg.header.ClearField("member_id")
    msg.header.ClearField("raft_term")
    return str(msg)


def run_formats(cluster: Cluster) -> list[tuple[int, str, str]]:
    """FORMATS then TXNS on ``cluster``: (status, stdout, stderr), normalized."""
    ep = cluster.members[0].endpoint
    subst = Subst(cluster)
    out = []
    for cmd in FORMATS:
        args = [a.replace("{lease}", subst.leases[0] if subst.leases else "") for a in cmd]
        stdin = STDIN.get((args[0], args[1]) if len(args) > 1 else ("", ""))
        r = subprocess.run(
            [ETCDCTL, f"--endpoints={ep}", "--dial-timeout=3s", "--command-timeout=10s", *args],
            input=stdin.encode() if stdin else None,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if "protobuf" in args:
            stdout = _protobuf(r.stdout)
        else:
            stdout = r.stdout.decode("utf-8", "replace")
            if args[:2] == ["lease", "grant"] and (granted := re.match(r"lease (\w+) ", stdout)):
                subst.lease(granted.group(1))
        stderr = r.stderr.decode("utf-8", "replace")
        out.append((r.returncode, normalize(stdout, subst), normalize(stderr, subst)))
    for cmd, body in TXNS:
        r = etcdctl(ep, *cmd, input=body, check=False)
        out.append((r.returncode, normalize(r.stdout, subst), normalize(r.stderr, subst)))
    return out


def test_output_formats_users_and_roles_same_as_etcd(make_cluster) -> None:
    """-w fields/json/table/protobuf, --hex, --print-value-only, --keys-only (etcdctl
    3.4 has no --count-only), --ignore-value/--ignore-lease, del --from-key,
    compaction --physical, txn -i compares, leases, member/endpoint/defrag --cluster,
    users and roles (role get root before there is such a role; a user that may not
    read asking for a user or role that does not exist): same output and status."""
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours, theirs = run_formats(keel), run_formats(etcd)
    commands = [*FORMATS, *(cmd for cmd, _ in TXNS)]
    for cmd, mine, ref in zip(commands, ours, theirs, strict=True):
        assert mine == ref, f"etcdctl {' '.join(cmd)}"


# Auth changes that etcd counts in its auth revision, and ones it does not (refused,
# or changing nothing), then a snapshot.
SNAPSHOT_SCRIPT: list[list[str]] = [
    ["put", "k", "1"],
    ["put", "k", "2"],
    ["del", "k"],
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["user", "add", "root", "--new-user-password=again"],
    ["role", "add", "r"],
    ["role", "add", "r"],
    ["user", "grant-role", "root", "root"],
    ["user", "grant-role", "root", "root"],
    ["user", "grant-role", "root", "nosuch"],
    ["role", "revoke-permission", "r", "nothing"],
    ["auth", "disable"],
]


def snapshot_facts(cluster: Cluster, path: Path) -> dict[str, object]:
    """``snapshot status -w json`` (less hash and size) and the ``auth`` bucket's rows
    of a snapshot saved from ``cluster``."""
    ep = cluster.members[0].endpoint
    etcdctl(ep, "snapshot", "save", str(path))
    status = json.loads(etcdctl(ep, "snapshot", "status", str(path), "-w", "json").stdout)
    data = path.read_bytes()
    db = read_db(data[: len(data) - len(data) % 512])  # without the trailing SHA-256
    return {
        "revision": status["revision"],
        "totalKey": status["totalKey"],
        "auth": sorted((k.decode(), v.hex()) for k, v in db.root.buckets[b"auth"].items.items()),
        "buckets": {name.decode(): len(b.items) for name, b in db.root.buckets.items()},
    }


def test_snapshot_status_and_auth_rows_same_as_etcd(make_cluster, tmp_path) -> None:
    """snapshot save, then snapshot status: same revision and total key count as
    etcd's; the auth bucket holds the same authRevision (1 in a new store, moved only
    by changes) and an authEnabled row only once auth was enabled or disabled."""
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    facts: dict[str, list[dict[str, object]]] = {"keel": [], "etcd": []}
    for name, cluster in (("keel", keel), ("etcd", etcd)):
        ep = cluster.members[0].endpoint
        facts[name].append(snapshot_facts(cluster, tmp_path / f"{name}-new.db"))
        for cmd in SNAPSHOT_SCRIPT:
            etcdctl(ep, *cmd, check=False)
        facts[name].append(snapshot_facts(cluster, tmp_path / f"{name}-script.db"))
        etcdctl(ep, "auth", "enable")
        etcdctl(ep, *ROOT, "auth", "disable")
        facts[name].append(snapshot_facts(cluster, tmp_path / f"{name}-toggled.db"))
    steps = ("new", "script", "toggled")
    for step, mine, ref in zip(steps, facts["keel"], facts["etcd"], strict=True):
        assert mine == ref, f"{step}: {mine} != {ref}"


@pytest.fixture
def cluster_in(tmp_path: Path) -> Iterator[Callable[[str, str], Cluster]]:
    """``cluster_in(directory, kind)``: a started one-member cluster whose data and log
    are under ``tmp_path/directory`` (make_cluster puts every cluster of a kind in the
    same directories), killed at teardown."""
    made: list[Cluster] = []

    def make(directory: str, kind: str) -> Cluster:
        (tmp_path / directory).mkdir()
        cluster = Cluster(tmp_path / directory, 1, kind)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


def test_make_mirror_and_check_datascale_same_as_etcd(cluster_in) -> None:
    """make-mirror to a second cluster of the same kind copies the same keys (with and
    without --dest-prefix) and prints etcd's count (it prints every 30 s); meanwhile
    check datascale passes on the sources with etcd's output, less memory figures,
    and leaves no key behind."""
    mirrors: dict[str, list[subprocess.Popen[str]]] = {}
    dests: dict[str, list[Cluster]] = {}
    sources: dict[str, Cluster] = {}
    for kind in ("keel", "etcd"):
        src = sources[kind] = cluster_in(f"{kind}-source", kind)
        dests[kind] = [cluster_in(f"{kind}-dest{i}", kind) for i in range(2)]
        ep = src.members[0].endpoint
        for i in range(5):
            etcdctl(ep, "put", f"m/{i}", str(i))
        etcdctl(ep, "put", "other", "x")
        etcdctl(ep, "del", "m/0")
        etcdctl(dests[kind][1].members[0].endpoint, "put", "there", "before")
        mirrors[kind] = [
            subprocess.Popen(
                [ETCDCTL, f"--endpoints={ep}", "make-mirror", *flags, dst.members[0].endpoint],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for flags, dst in (
                (["--prefix=m/", "--dest-prefix=copy/"], dests[kind][0]),
                (["--prefix=m/", "--no-dest-prefix"], dests[kind][1]),
            )
        ]
    started = time.monotonic()
    time.sleep(2)
    datascale: dict[str, tuple[int, str, str, str]] = {}
    try:
        for src in sources.values():
            ep = src.members[0].endpoint
            etcdctl(ep, "put", "m/9", "nine")
            etcdctl(ep, "del", "m/1")
            etcdctl(ep, "txn", input="\nput m/7 seven\nput m/8 eight\nput n/1 no\n\n\n")
        for kind, src in sources.items():
            ep = src.members[0].endpoint
            r = etcdctl(ep, "check", "datascale", "--load=s", check=False, timeout=120)
            left = etcdctl(ep, "get", "--prefix", "/etcdctl-check-datascale/", "--keys-only")
            shape = re.sub(r"[\d.]+ MB", "X MB", r.stdout.splitlines()[-1] if r.stdout else "")
            datascale[kind] = (r.returncode, shape, r.stdout.splitlines()[0], left.stdout)
        time.sleep(max(0.0, 31 - (time.monotonic() - started)))
    finally:
        printed = {}
        for kind, procs in mirrors.items():
            for p in procs:
                p.send_signal(signal.SIGTERM)
            printed[kind] = [p.communicate(timeout=10)[0] for p in procs]
    assert datascale["keel"] == datascale["etcd"]
    assert datascale["keel"][0] == 0, datascale["keel"]
    assert "PASS" in datascale["keel"][1], datascale["keel"]
    assert printed["keel"] == printed["etcd"]
    assert printed["keel"][0].strip(), "make-mirror printed no count in 31 s"
    for i in range(2):
        got = {}
        for kind in ("keel", "etcd"):
            r = etcdctl(dests[kind][i].members[0].endpoint, "get", "--prefix", "", "-w", "json")
            doc = json.loads(r.stdout)
            got[kind] = (doc["header"]["revision"], doc.get("kvs"), doc.get("count"))
        assert got["keel"] == got["etcd"], f"destination {i}"


def unordered(text: str, subst: Subst) -> str:
    """``text`` normalized, with its records sorted: members come in ID order, and IDs
    differ by design (JSON lists and ``members``, ``fields`` member blocks, lines)."""
    try:
        doc = json.loads(text)
    except ValueError:
        text = normalize(text, subst)
        if '"ID" : ' in text:  # -w fields: the header, then a block per member
            head, *blocks = re.split(r'(?="ID" : )', text)
            return head + "".join(sorted(b.strip() + "\n" for b in blocks))
        return "\n".join(sorted(text.splitlines()))

    def each(items: list[object]) -> list[str]:
        return sorted(
            normalize(json.dumps(x, sort_keys=True, separators=(",", ":")), subst) for x in items
        )

    if isinstance(doc, list):
        return "\n".join(each(doc))
    if isinstance(doc, dict) and "members" in doc:
        doc["header"].pop("member_id", None)  # whichever member etcdctl asked
        members = each(doc.pop("members"))
        return "\n".join(
            [normalize(json.dumps(doc, sort_keys=True, separators=(",", ":")), subst), *members]
        )
    return normalize(text, subst)


def three_member_answers(cluster: Cluster) -> list[tuple[str, int, str, str]]:
    """What the three-member test runs on ``cluster``, normalized: the members are
    named by role (LEADER, TARGET of move-leader, OTHER), records sorted."""
    leader = cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    target, other = followers
    roles = {id(leader): "LEADER", id(target): "TARGET", id(other): "OTHER"}
    subst = Subst(cluster, [roles[id(m)] for m in cluster.members])
    out: list[tuple[str, int, str, str]] = []

    def run(label: str, ep: str, *args: str) -> str:
        r = etcdctl(ep, *args, check=False)
        text = unordered(r.stdout, subst)
        out.append((label, r.returncode, text, normalize(r.stderr, subst)))
        return str(r.stdout)

    eps = cluster.endpoints
    for args in (
        ["endpoint", "status", "--cluster", "-w", "table"],
        ["endpoint", "status", "--cluster", "-w", "json"],
        ["endpoint", "health", "--cluster", "-w", "json"],
        ["endpoint", "hashkv", "--cluster", "-w", "json"],
        ["defrag", "--cluster"],
        ["member", "list", "-w", "table"],
        ["member", "list", "-w", "fields"],
    ):
        run(" ".join(args), leader.endpoint, *args)
    # Both refuse a member add until every voting member has been connected for 5 s
    # (etcd's HealthInterval under --strict-reconfig-check): retry until then.
    deadline = time.monotonic() + 15
    while True:
        args = ["member", "add", "learner", "--learner", "--peer-urls=http://127.0.0.1:9"]
        added = etcdctl(eps, *args, check=False)
        if "unhealthy cluster" not in added.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    learner = re.search(r"Member +([0-9a-f]+) added", added.stdout)
    assert learner, (added.returncode, added.stdout, added.stderr)
    subst.add(int(learner.group(1), 16), "LEARNER")
    text = re.sub(  # ETCD_INITIAL_CLUSTER lists the members in ID order
        r'(?<=ETCD_INITIAL_CLUSTER=")[^"]*',
        lambda m: ",".join(sorted(m.group(0).split(","))),
        normalize(added.stdout, subst),
    )
    out.append(("member add --learner", added.returncode, text, ""))
    run("member list json", leader.endpoint, "member", "list", "-w", "json")
    run("move-leader to a learner", leader.endpoint, "move-leader", learner.group(1))
    run("move-leader to an unknown ID", leader.endpoint, "move-leader", "abcdef")
    run("move-leader from a follower", other.endpoint, "move-leader", subst.hex["TARGET"])
    run("move-leader", leader.endpoint, "move-leader", subst.hex["TARGET"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and cluster.leader() is not target:
        time.sleep(0.2)
    run("endpoint status after move-leader", eps, "endpoint", "status", "-w", "table")
    run("move-leader from the old leader", leader.endpoint, "move-leader", subst.hex["TARGET"])
    peer = next(k for k, v in subst.map.items() if v == "PEER-OTHER")
    update = ["member", "update"]
    run("member update", eps, *update, subst.hex["OTHER"], f"--peer-urls=http://{peer}")
    run("member update unknown", eps, *update, "1234", "--peer-urls=http://127.0.0.1:8")
    run("member update taken URL", eps, *update, subst.hex["TARGET"], f"--peer-urls=http://{peer}")
    run("member list", eps, "member", "list", "-w", "table")
    # Failures: the new leader moving leadership to a member that is down (both wait
    # for the client's deadline), then a member without a leader: endpoint status
    # says so, and a put that never reaches a leader ends at the request timeout.
    other.kill()
    short = ["--command-timeout=8s"]  # longer than the 7 s request timeout
    run("move-leader to a dead member", target.endpoint, *short, "move-leader", subst.hex["OTHER"])
    # At the client's deadline the server's "leader transfer took too long" and the
    # client's own deadline race (on etcd as well; when the server's answer wins, the
    # client retries once more): the first answer and the end, told the same way.
    label, code, stdout, stderr = out.pop()
    for theirs, ours in (
        ("Unavailable desc = etcdserver: request timed out, leader transfer took too long",
         "DeadlineExceeded desc = context deadline exceeded"),
        ("etcdserver: request timed out, leader transfer took too long",
         "context deadline exceeded"),
        # The server's own answer at the deadline (etcd: its handler's ctx.Err(),
        # Unknown) against the client's timer, on either server:
        ("code = Unknown desc = context deadline exceeded",
         "code = DeadlineExceeded desc = context deadline exceeded"),
        ("Error: rpc error: code = DeadlineExceeded desc = context deadline exceeded",
         "Error: context deadline exceeded"),
    ):  # fmt: skip
        stderr = stderr.replace(theirs, ours)
    lines = stderr.splitlines()
    out.append((label, code, stdout, "\n".join(lines[:1] + lines[-1:])))
    leader.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = etcdctl(target.endpoint, "endpoint", "status", "-w", "json", check=False)
        if r.returncode == 0 and not json.loads(r.stdout)[0]["Status"].get("leader"):
            break
        time.sleep(0.2)
    run("endpoint status without a leader", target.endpoint, "endpoint", "status", "-w", "json")
    run("put without a leader", target.endpoint, "put", "k", "v")
    return out


def test_three_members_move_leader_member_update_cluster_endpoints(make_cluster) -> None:
    """On three members: endpoint status/health/hashkv and defrag with --cluster,
    member list in each format, member add --learner and member update, and
    move-leader (to a learner, to an unknown ID, from a follower; then from the
    leader to a follower, which endpoint status shows as the leader after; to a
    member that is down); with two members down, endpoint status (its "no leader"
    error) and a put: as etcd."""
    answers = {}
    for kind in ("keel", "etcd"):
        cluster = make_cluster(3, binary=kind)
        answers[kind] = three_member_answers(cluster)
        cluster.stop()
    for mine, ref in zip(answers["keel"], answers["etcd"], strict=True):
        assert mine == ref, f"{mine[0]}:\nkeel-store: {mine[1:]}\netcd: {ref[1:]}"


def _popen(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [ETCDCTL, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )


def exec_form_answers(ep: str) -> list[object]:
    """What the watch/lock/elect test runs against ``ep``, lease IDs replaced."""
    out: list[object] = []
    etcdctl(ep, "put", "w/a", "0")
    interactive = _popen(f"--endpoints={ep}", "watch", "-i", stdin=True)
    assert interactive.stdin is not None
    interactive.stdin.write("watch w/a\nwatch --prefix w/ --rev 1\nbogus\nwatch\n")
    interactive.stdin.flush()
    script = "env | grep ^ETCD_WATCH_ | sort; echo ---"
    execs = _popen(f"--endpoints={ep}", "watch", "--prefix", "w/", "--rev", "2", "--", "sh",
                   "-c", script)  # fmt: skip
    time.sleep(1.5)
    etcdctl(ep, "put", "w/a", "1")
    etcdctl(ep, "put", "w/b", "2")
    etcdctl(ep, "del", "w/a")
    time.sleep(1.0)
    for name, p in (("watch -i", interactive), ("watch exec", execs)):
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=10)
        if name == "watch -i":
            # Each watch of `watch -i` prints from its own goroutine, a line per write:
            # two watchers given the same event at once (one response each, in one
            # read) interleave their lines as the goroutines run ("DELETE", "DELETE",
            # "w/a", ...), on either server. Compared as the lines printed.
            stdout = "\n".join(sorted(stdout.splitlines()))
        # etcdctl reports the end of its stdin when the signal loses the race.
        out.append(
            (
                name,
                stdout,
                stderr.replace("Error: Error reading watch request line: EOF\n", ""),
            )
        )
    leader = _popen(f"--endpoints={ep}", "elect", "e", "p1")
    time.sleep(1.5)
    observer = _popen(f"--endpoints={ep}", "elect", "-l", "e")
    second = _popen(f"--endpoints={ep}", "elect", "e", "p2")
    time.sleep(1.0)
    leader.send_signal(signal.SIGINT)
    time.sleep(1.5)
    for p in (observer, second):
        p.send_signal(signal.SIGTERM)
    keys: dict[str, str] = {}
    for name, p in (("elect", leader), ("elect -l", observer), ("elect p2", second)):
        stdout = p.communicate(timeout=10)[0]
        for key in re.findall(r"e/[0-9a-f]+", stdout):
            keys.setdefault(key, f"e/LEASE{len(keys)}")
        out.append((name, [keys.get(line, line) for line in stdout.splitlines()]))
    r = etcdctl(ep, "lock", "l", "--", "sh", "-c", "env | grep ^ETCD_LOCK_ | sort", check=False)
    out.append(("lock exec", r.returncode, re.sub(r"l/[0-9a-f]+", "l/LEASE", r.stdout)))
    r = etcdctl(ep, "lock", "--ttl=5", "l", "--", "sh", "-c", "exit 3", check=False)
    out.append(("lock exit 3", r.returncode, r.stdout, r.stderr))
    return out


def test_watch_lock_elect_exec_and_interactive_forms_same_as_etcd(make_cluster) -> None:
    """watch -i (requests on stdin), watch --prefix --rev with a command (ETCD_WATCH_*
    in its environment), lock with a command (ETCD_LOCK_KEY/REV, its exit status), and
    elect -l following two campaigners: as etcd."""
    answers = {}
    for kind in ("keel", "etcd"):
        cluster = make_cluster(1, binary=kind)
        answers[kind] = exec_form_answers(cluster.members[0].endpoint)
        cluster.stop()
    for mine, ref in zip(answers["keel"], answers["etcd"], strict=True):
        assert mine == ref
