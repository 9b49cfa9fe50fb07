"""Snapshots in etcd's format, both ways.

keel-store -> etcd: ``etcdctl snapshot save`` from keel-store, ``etcdctl snapshot
status`` reads it, ``etcdctl snapshot restore`` makes a data directory that Debian's etcd
starts from with the same keys, revisions, leases, compaction and HashKV.
etcd -> keel-store: a snapshot saved from etcd, ``keel-store snapshot restore`` for each
member of a new 3-member keel-store cluster, which then serves the same.
Bad files: a clear error naming the file and the fault, and no data directory.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from keel_store.bbolt.reader import read_db
from keel_store.pb import rpcgrpc, rpcpb

from .conftest import Cluster, etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(300)]

LEASE = 0x5EED
COMPACT_AT = 20


def put(key: str, value: str) -> rpcpb.RequestOp:
    return rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=key.encode(), value=value.encode()))


def write_history(endpoint: str) -> None:
    """Puts, a txn (sub revisions), deletes, leases (one revoked), a compaction."""
    with grpc.insecure_channel(endpoint) as channel:
        kv, lease = rpcgrpc.KVStub(channel), rpcgrpc.LeaseStub(channel)
        for i in range(30):
            kv.Put(rpcpb.PutRequest(key=b"k%02d" % i, value=b"v%d" % i), timeout=10)
        lease.LeaseGrant(rpcpb.LeaseGrantRequest(ID=LEASE, TTL=900), timeout=10)
        lease.LeaseGrant(rpcpb.LeaseGrantRequest(ID=LEASE + 1, TTL=900), timeout=10)
        for key in (b"l2", b"l1"):
            kv.Put(rpcpb.PutRequest(key=key, value=b"x", lease=LEASE), timeout=10)
        kv.Put(rpcpb.PutRequest(key=b"gone", value=b"y", lease=LEASE + 1), timeout=10)
        kv.Txn(rpcpb.TxnRequest(success=[put("t2", "a"), put("t1", "b"), put("k05", "c")]))
        kv.DeleteRange(rpcpb.DeleteRangeRequest(key=b"k1", range_end=b"k2"), timeout=10)
        lease.LeaseRevoke(rpcpb.LeaseRevokeRequest(ID=LEASE + 1), timeout=10)
        kv.Compact(rpcpb.CompactionRequest(revision=COMPACT_AT, physical=True), timeout=10)
        for batch in range(4):  # enough rows for branch pages in the key bucket
            ops = [put(f"bulk/{batch}/{i:03d}", "b" * 100) for i in range(125)]
            kv.Txn(rpcpb.TxnRequest(success=ops), timeout=10)
        kv.Put(rpcpb.PutRequest(key=b"k05", value=b"d"), timeout=10)
        kv.Put(rpcpb.PutRequest(key=b"\xffbinary\x00", value=b"\x00" * 5000), timeout=10)


def add_users(endpoint: str) -> None:
    etcdctl(endpoint, "user", "add", "root:rootpw")
    etcdctl(endpoint, "role", "add", "reader")
    etcdctl(endpoint, "role", "grant-permission", "reader", "read", "k", "--prefix")
    etcdctl(endpoint, "user", "add", "alice:alicepw")
    etcdctl(endpoint, "user", "grant-role", "alice", "reader")


def check_users(endpoint: str) -> None:
    """The users, roles and password hashes came across: enable auth and use them."""
    assert "reader" in etcdctl(endpoint, "user", "get", "alice").stdout
    assert "[k, l)" in etcdctl(endpoint, "role", "get", "reader").stdout
    etcdctl(endpoint, "auth", "enable")
    r = etcdctl(endpoint, "--user=alice:alicepw", "get", "k00", check=False)
    assert r.returncode == 0, r.stderr
    assert "v0" in r.stdout
    r = etcdctl(endpoint, "--user=alice:wrong", "get", "k00", check=False)
    assert "authentication failed" in r.stderr


def view(endpoint: str) -> dict[str, object]:
    """What a client sees: every key now and at past revisions, leases, HashKV."""

    def get(*args: str) -> object:
        r = etcdctl(endpoint, "get", "", "--prefix", "-w", "json", *args, check=False)
        if r.returncode:
            return r.stderr.strip().splitlines()[-1]
        doc = json.loads(r.stdout)
        return [doc["header"]["revision"], doc.get("kvs", [])]

    revision = json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json").stdout)[0][
        "Status"
    ]["header"]["revision"]
    ttl = etcdctl(endpoint, "lease", "timetolive", f"{LEASE:x}", "--keys").stdout
    hashkv = json.loads(etcdctl(endpoint, "endpoint", "hashkv", "-w", "json").stdout)[0]
    return {
        "revision": revision,
        "now": get(),
        "past": [get(f"--rev={rev}") for rev in (COMPACT_AT - 1, COMPACT_AT, 34, 37, 40)],
        "leases": etcdctl(endpoint, "lease", "list").stdout,
        "attached": sorted(ttl.split("attached keys([", 1)[1].split("])")[0].split()),
        "hashkv": hashkv["HashKV"]["hash"],
        "compact": hashkv["HashKV"]["compact_revision"],
    }


def peer_url(argv: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith("--initial-advertise-peer-urls="))


def initial_cluster(argv: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith("--initial-cluster="))


def keel_snapshot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel_store.daemon", "snapshot", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_keel_snapshot_restored_by_etcdctl_serves_the_same_in_etcd(
    make_cluster, tmp_path: Path
) -> None:
    keel = make_cluster(1)
    ep = keel.members[0].endpoint
    write_history(ep)
    add_users(ep)
    before = view(ep)
    assert before["revision"] == 43, before
    assert before["compact"] == COMPACT_AT, before
    assert before["attached"] == ["l1", "l2"]
    snap = tmp_path / "keel.db"
    assert "Snapshot saved" in etcdctl(ep, "snapshot", "save", str(snap)).stdout
    status = json.loads(etcdctl(ep, "snapshot", "status", str(snap), "-w", "json").stdout)
    ours = json.loads(keel_snapshot("status", str(snap), "-w", "json").stdout)
    assert status == ours
    assert status["revision"] == before["revision"]
    # rows of every bucket: the key bucket holds 19 versions live at the compaction
    # (k00-k18) and 530 after it; then meta 3, lease 1, members 1, cluster 1, auth 1
    # (authRevision; authEnabled only once auth was enabled or disabled, as etcd),
    # authUsers 2, authRoles 1
    assert status["totalKey"] == 19 + 530 + 10
    assert status["totalSize"] == snap.stat().st_size - 32

    etcd = Cluster(tmp_path, 1, "etcd")
    member = etcd.members[0]
    etcdctl(
        ep,
        "snapshot",
        "restore",
        str(snap),
        f"--data-dir={member.data_dir}",
        f"--name={member.name}",
        f"--initial-cluster={initial_cluster(member.argv)}",
        "--initial-cluster-token=keel-test",
        f"--initial-advertise-peer-urls={peer_url(member.argv)}",
    )
    try:
        etcd.start()
        after = view(member.endpoint)
        check_users(member.endpoint)
    finally:
        etcd.stop()
    assert after == before


def test_etcd_snapshot_restored_into_a_keel_cluster(make_cluster, tmp_path: Path) -> None:
    etcd = make_cluster(1, binary="etcd")
    ep = etcd.members[0].endpoint
    write_history(ep)
    add_users(ep)
    before = view(ep)
    snap = tmp_path / "etcd.db"
    etcdctl(ep, "snapshot", "save", str(snap))
    etcd.stop()
    status = keel_snapshot("status", str(snap), "-w", "json")
    assert json.loads(status.stdout) == json.loads(
        etcdctl(ep, "snapshot", "status", str(snap), "-w", "json").stdout
    )
    # etcd's own db file (freelist, free pages, grown file) reads the same way
    live = etcd.members[0].data_dir / "member" / "snap" / "db"
    ours = keel_snapshot("status", str(live), "-w", "json")
    assert ours.returncode == 0, ours.stderr
    theirs = etcdctl(ep, "snapshot", "status", str(live), "-w", "json").stdout
    assert json.loads(ours.stdout) == json.loads(theirs)

    keel = Cluster(tmp_path, 3, "keel")
    for member in keel.members:
        r = keel_snapshot(
            "restore",
            str(snap),
            f"--data-dir={member.data_dir}",
            f"--name={member.name}",
            f"--initial-cluster={initial_cluster(member.argv)}",
            "--initial-cluster-token=keel-test",
            f"--initial-advertise-peer-urls={peer_url(member.argv)}",
        )
        assert r.returncode == 0, r.stderr
        assert f"revision {before['revision']}" in r.stdout
    try:
        keel.start()
        for member in keel.members:
            assert view(member.endpoint) == before, member.name
        first = keel.members[0].endpoint
        check_users(first)
        out = etcdctl(first, "--user=root:rootpw", "put", "new", "1", "-w", "json").stdout
        assert json.loads(out)["header"]["revision"] == int(str(before["revision"])) + 1
    finally:
        keel.stop()


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def test_bad_snapshot_files_are_refused_clearly(make_cluster, tmp_path: Path) -> None:
    keel = make_cluster(1)
    ep = keel.members[0].endpoint
    with grpc.insecure_channel(ep) as channel:
        kv = rpcgrpc.KVStub(channel)
        for i in range(300):
            kv.Put(rpcpb.PutRequest(key=b"bulk%03d" % i, value=b"v" * 100), timeout=10)
    good = tmp_path / "good.db"
    etcdctl(ep, "snapshot", "save", str(good))
    data = good.read_bytes()
    db = data[:-32]

    def with_sha(body: bytes) -> bytes:
        return body + hashlib.sha256(body).digest()

    meta_broken = _flip(_flip(db, 16 + 20), 4096 + 16 + 20)
    cases = {
        "truncated.db": (data[: len(data) - 5000], "no sha256 at the end"),
        "flipped.db": (_flip(data, len(data) // 2), "sha256 mismatch"),
        "wrongsha.db": (db + b"\0" * 32, "sha256 mismatch"),
        "notbolt.db": (with_sha(b"KEELSNAP2\n" + b"\0" * 8182), "not a bbolt database"),
        "badmeta.db": (with_sha(meta_broken), "meta checksum mismatch"),
        "short.db": (with_sha(db[: 3 * 4096]), "truncated"),
    }
    for name, (content, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        target = tmp_path / f"restored-{name}"
        r = keel_snapshot(
            "restore", str(path), f"--data-dir={target}", "--name=m0", "--initial-cluster-token=t"
        )
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert str(path) in r.stderr, (name, r.stderr)
        assert why in r.stderr, (name, r.stderr)
        assert not target.exists(), name
        assert not list(tmp_path.glob(f".restored-{name}*")), name
    # status reads a db copied without its hash, and refuses the broken ones
    plain = tmp_path / "plain.db"
    plain.write_bytes(db)
    assert keel_snapshot("status", str(plain)).returncode == 0
    r = keel_snapshot("status", str(tmp_path / "short.db"))
    assert r.returncode == 1
    assert "truncated" in r.stderr, r.stderr
    r = keel_snapshot("restore", str(plain), f"--data-dir={tmp_path / 'x'}", "--name=m0")
    assert r.returncode == 1
    assert "--skip-hash-check" in r.stderr
    r = keel_snapshot("restore", str(tmp_path / "missing.db"), f"--data-dir={tmp_path / 'y'}")
    assert r.returncode == 1
    assert "missing.db: No such file" in r.stderr, r.stderr
    # an existing data directory is never overwritten
    r = keel_snapshot("restore", str(good), f"--data-dir={keel.members[0].data_dir}")
    assert r.returncode == 1
    assert "exists" in r.stderr


@pytest.mark.parametrize("binary", ["keel", "etcd"])
def test_snapshot_member_rows_are_etcds(make_cluster, tmp_path: Path, binary: str) -> None:
    """The ``members`` bucket of ``etcdctl snapshot save``'s file holds each member as
    etcd's JSON: ID, peer URLs, and the name and client URLs it published."""
    cluster = make_cluster(3, binary=binary)
    snap = tmp_path / f"{binary}.db"
    etcdctl(cluster.members[0].endpoint, "snapshot", "save", str(snap))
    rows = read_db(snap.read_bytes()).root.buckets[b"members"].items
    docs = sorted((json.loads(v) for v in rows.values()), key=lambda d: d["name"])
    assert [list(d) for d in docs] == [["id", "peerURLs", "name", "clientURLs"]] * 3
    assert [(d["name"], d["clientURLs"]) for d in docs] == [
        (m.name, [m.client_url]) for m in cluster.members
    ]
    assert sorted(format(d["id"], "x").encode() for d in docs) == sorted(rows)
