"""Debian's etcdctl against a single keel-store member, compared with real etcd."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from .conftest import ETCDCTL, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

SCRIPT: list[list[str]] = [
    ["put", "foo", "bar"],
    ["put", "foo", "baz"],
    ["put", "fop", "1"],
    ["put", "a/1", "x"],
    ["put", "a/2", "y"],
    ["put", "a/3", "w"],
    ["get", "foo", "-w", "json"],
    ["get", "foo", "--rev=2", "-w", "json"],
    ["get", "--prefix", "a/", "-w", "json"],
    ["get", "--prefix", "a/", "--limit=2", "-w", "json"],
    ["get", "--prefix", "a/", "--sort-by=VALUE", "--order=DESCEND", "-w", "json"],
    ["get", "--prefix", "a/", "--sort-by=MODIFY", "--order=ASCEND", "--keys-only"],
    ["get", "--from-key", "b", "-w", "json"],
    ["get", "--prefix", "", "--consistency=s", "--order=DESCEND"],
    ["del", "fop"],
    ["del", "nothing"],
    ["del", "--prefix", "a/", "--prev-kv"],
    ["get", "fop", "--rev=4", "-w", "json"],
    ["get", "foo", "--rev=99"],
    ["compaction", "5"],
    ["get", "foo", "--rev=3"],
    ["get", "foo", "--rev=5", "-w", "json"],
    ["put", "", "x"],
]

TXN = 'value("foo") = "baz"\n\nput hit yes\n\nput miss yes\n\n'
TXN_FAIL = 'mod("foo") > "1000"\n\nput hit2 yes\n\nget foo\n\n'


def normalize(text: str) -> str:
    """Drop what differs between two servers by design (IDs, raft terms)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()

    def clean(x: object) -> object:
        if isinstance(x, dict):
            return {
                k: clean(v)
                for k, v in x.items()
                if k not in ("cluster_id", "member_id", "raft_term")
            }
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(doc), sort_keys=True)


def run_script(endpoint: str) -> list[tuple[int, str, str]]:
    out = []
    for cmd in SCRIPT:
        r = etcdctl(endpoint, *cmd, check=False)
        out.append((r.returncode, normalize(r.stdout), r.stderr.strip().split("\n")[-1]))
    for body in (TXN, TXN_FAIL):
        r = etcdctl(endpoint, "txn", "-w", "json", input=body, check=False)
        out.append((r.returncode, normalize(r.stdout), r.stderr.strip()))
    return out


def test_same_answers_as_etcd(make_cluster) -> None:
    """Every command of SCRIPT gives etcd's exact output and error text."""
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours = run_script(keel.members[0].endpoint)
    theirs = run_script(etcd.members[0].endpoint)
    commands = [*SCRIPT, ["txn", "success"], ["txn", "failure"]]
    for cmd, mine, ref in zip(commands, ours, theirs, strict=True):
        assert mine == ref, f"etcdctl {' '.join(cmd)}"


def test_watch_from_past_revision_and_live(keel1) -> None:
    ep = keel1.members[0].endpoint
    etcdctl(ep, "put", "w", "1")  # rev 2
    etcdctl(ep, "put", "w", "2")  # rev 3
    watcher = subprocess.Popen(
        [ETCDCTL, f"--endpoints={ep}", "watch", "w", "--rev=2", "--prev-kv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        etcdctl(ep, "put", "w", "3")
        etcdctl(ep, "del", "w")
        time.sleep(1.0)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
    lines = out.split()
    assert (
        lines
        == [
            "PUT",
            "w",
            "1",
            "PUT",
            "w",
            "1",
            "w",
            "2",
            "PUT",
            "w",
            "2",
            "w",
            "3",
            "DELETE",
            "w",
            "3",
            "w",
        ][: len(lines)]
    )
    assert len(lines) >= 15, out


def test_watch_on_compacted_revision_is_cancelled(keel1) -> None:
    ep = keel1.members[0].endpoint
    for i in range(4):
        etcdctl(ep, "put", "k", str(i))
    etcdctl(ep, "compaction", "4")
    r = subprocess.run(
        [ETCDCTL, f"--endpoints={ep}", "watch", "k", "--rev=2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "required revision has been compacted" in r.stdout + r.stderr


def test_leases(keel1) -> None:
    ep = keel1.members[0].endpoint
    out = etcdctl(ep, "lease", "grant", "1").stdout
    assert "granted with TTL(2s)" in out, "TTL is raised to the 2 s minimum"
    lease = out.split()[1]
    etcdctl(ep, "put", "--lease", lease, "short", "lived")
    ttl = etcdctl(ep, "lease", "timetolive", lease, "--keys").stdout
    assert "granted with TTL(2s)" in ttl
    assert "attached keys([short])" in ttl
    time.sleep(4)
    assert etcdctl(ep, "get", "short").stdout == ""
    assert "already expired" in etcdctl(ep, "lease", "timetolive", lease).stdout

    lease = etcdctl(ep, "lease", "grant", "30").stdout.split()[1]
    etcdctl(ep, "put", "--lease", lease, "kept", "1")
    ka = etcdctl(ep, "lease", "keep-alive", "--once", lease).stdout
    assert f"lease {lease} keepalived with TTL(30)" in ka
    assert lease in etcdctl(ep, "lease", "list").stdout
    assert "revoked" in etcdctl(ep, "lease", "revoke", lease).stdout
    assert etcdctl(ep, "get", "kept").stdout == ""
    r = etcdctl(ep, "lease", "revoke", lease, check=False)
    assert "requested lease not found" in r.stderr


def test_snapshot_save_status_health_members(keel1, tmp_path) -> None:
    ep = keel1.members[0].endpoint
    for i in range(50):
        etcdctl(ep, "put", f"s{i}", "v" * 100)
    path = tmp_path / "snap.db"
    out = etcdctl(ep, "snapshot", "save", str(path)).stdout
    assert "Snapshot saved" in out
    assert path.stat().st_size % 512 == 32
    assert (
        "is healthy"
        in etcdctl(ep, "endpoint", "health").stdout + etcdctl(ep, "endpoint", "health").stderr
    )
    status = json.loads(etcdctl(ep, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
    assert status["version"] == "3.4.23"
    assert status["leader"] == status["header"]["member_id"]
    assert status["header"]["revision"] == 51
    members = json.loads(etcdctl(ep, "member", "list", "-w", "json").stdout)["members"]
    assert [m["name"] for m in members] == ["m0"]
    assert members[0]["clientURLs"] == [keel1.members[0].client_url]


def test_lock_and_elect(keel1) -> None:
    ep = keel1.members[0].endpoint
    r = etcdctl(ep, "lock", "mylock", "echo", "inside")
    assert "inside" in r.stdout
    holder = subprocess.Popen(
        [ETCDCTL, f"--endpoints={ep}", "lock", "l2"], stdout=subprocess.PIPE, text=True
    )
    second = None
    try:
        time.sleep(1.5)
        second = subprocess.Popen(
            [ETCDCTL, f"--endpoints={ep}", "lock", "l2", "echo", "second"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        assert second.poll() is None, "the second locker must wait while the lock is held"
        assert len(etcdctl(ep, "get", "--prefix", "l2/", "--keys-only").stdout.split()) == 2
        holder.send_signal(signal.SIGINT)
        out, _ = second.communicate(timeout=20)
        assert "second" in out
    finally:
        for p in (holder, second):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.communicate(timeout=10)
    leader = subprocess.Popen(
        [ETCDCTL, f"--endpoints={ep}", "elect", "myelection", "p1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    observer = None
    try:
        time.sleep(1.5)
        observer = subprocess.Popen(
            [ETCDCTL, f"--endpoints={ep}", "elect", "-l", "myelection"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
    finally:
        for p in (leader, observer):
            if p is not None:
                p.kill()
        out, _ = observer.communicate(timeout=10) if observer else ("", None)
        leader.communicate(timeout=10)
    assert "p1" in out


def test_restart_keeps_data_after_kill9(keel1) -> None:
    member = keel1.members[0]
    for i in range(20):
        etcdctl(member.endpoint, "put", f"k{i}", str(i))
    lease = etcdctl(member.endpoint, "lease", "grant", "60").stdout.split()[1]
    member.kill()
    member.start()
    keel1.wait_ready(member)
    got = json.loads(etcdctl(member.endpoint, "get", "--prefix", "k", "-w", "json").stdout)
    assert got["count"] == 20
    assert got["header"]["revision"] == 21
    assert lease in etcdctl(member.endpoint, "lease", "list").stdout


def test_bad_input_keeps_daemon_up(keel1) -> None:
    ep = keel1.members[0].endpoint
    r = etcdctl(ep, "put", "big", input="x" * (2 * 1024 * 1024), check=False)
    assert r.returncode != 0
    assert "message larger than max" in r.stderr or "too large" in r.stderr, r.stderr
    txn = "".join(f"put k{i} v\n" for i in range(200))
    r = etcdctl(ep, "txn", input="\n" + txn + "\n\n", check=False)
    assert "too many operations in txn request" in r.stderr
    assert etcdctl(ep, "put", "still", "up").stdout.strip() == "OK"


@pytest.mark.parametrize("binary", ["etcd", "keel"])
def test_a_request_over_max_request_bytes_is_refused_by_the_server(make_cluster, binary) -> None:
    """Under gRPC's limit (max-request-bytes + 512 KiB) but over max-request-bytes: the
    server refuses it with etcd's error, and the member stays up."""
    ep = make_cluster(1, binary).members[0].endpoint
    r = etcdctl(ep, "put", "big", input="x" * (1600 * 1024), check=False)
    assert r.returncode != 0
    assert "etcdserver: request is too large" in r.stderr, r.stderr
    assert etcdctl(ep, "get", "big", "--print-value-only").stdout == ""
    assert etcdctl(ep, "put", "small", input="x" * (1500 * 1024)).stdout.strip() == "OK"
