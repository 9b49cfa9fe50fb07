"""Auth with etcdctl (users, roles, permissions, enable/disable, --user), compared with etcd."""

from __future__ import annotations

import re

import pytest

from .conftest import etcdctl

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

ROOT = ["--user", "root:rootpw"]
ALICE = ["--user", "alice:alicepw"]
SCRIPT: list[list[str]] = [
    ["put", "/app/x", "1"],
    ["user", "add", "root", "--new-user-password=rootpw"],
    ["user", "add", "alice", "--new-user-password=alicepw"],
    ["user", "add", "alice", "--new-user-password=again"],
    ["role", "add", "app"],
    ["role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"],
    ["role", "grant-permission", "app", "read", "/config"],
    ["user", "grant-role", "alice", "app"],
    ["user", "grant-role", "alice", "nope"],
    ["auth", "enable"],
    ["user", "grant-role", "root", "root"],
    ["auth", "enable"],
    ["get", "/app/x"],
    [*ALICE, "get", "/app/x"],
    [*ALICE, "put", "/app/y", "2"],
    [*ALICE, "get", "/config"],
    [*ALICE, "put", "/config", "x"],
    [*ALICE, "put", "/other", "2"],
    [*ALICE, "get", "/", "--prefix"],
    ["--user", "alice:wrong", "get", "/app/x"],
    [*ALICE, "user", "list"],
    [*ALICE, "role", "get", "app"],
    [*ROOT, "role", "get", "app"],
    [*ROOT, "user", "get", "alice"],
    [*ROOT, "user", "list"],
    [*ROOT, "role", "list"],
    [*ROOT, "user", "delete", "root"],
    [*ROOT, "role", "revoke-permission", "app", "/app/", "--prefix=true"],
    [*ROOT, "role", "revoke-permission", "app", "/app/", "--prefix=true"],
    [*ALICE, "get", "/app/x"],
    [*ROOT, "user", "revoke-role", "alice", "app"],
    [*ROOT, "user", "revoke-role", "alice", "app"],
    [*ROOT, "get", "/app/y"],
    [*ROOT, "auth", "disable"],
    ["get", "/app/y"],
    ["user", "delete", "alice"],
    ["role", "delete", "app"],
    ["user", "list"],
]


def run(endpoint: str) -> list[tuple[int, str, str]]:
    out = []
    for cmd in SCRIPT:
        r = etcdctl(endpoint, *cmd, check=False)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        out.append((r.returncode, r.stdout.strip(), errors[-1] if errors else ""))
    return out


def test_auth_same_as_etcd(make_cluster) -> None:
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours, theirs = run(keel.members[0].endpoint), run(etcd.members[0].endpoint)
    for cmd, mine, ref in zip(SCRIPT, ours, theirs, strict=True):
        assert mine == ref, f"etcdctl {' '.join(cmd)}"


MAINTENANCE: list[tuple[list[str], int, str]] = [
    # (command, exit status, its error; or for a success, the alarm it prints if any)
    # etcd 3.5's rules (3.4 let anyone list and disarm alarms and move the leader):
    (["alarm", "list"], 1, "Error: etcdserver: user name is empty"),
    ([*ALICE, "alarm", "list"], 0, "memberID:* alarm:NOSPACE"),
    ([*ALICE, "alarm", "disarm"], 1, "Error: etcdserver: permission denied"),
    ([*ROOT, "alarm", "disarm"], 0, "memberID:* alarm:NOSPACE"),
    ([*ROOT, "alarm", "list"], 0, ""),
    ([*ALICE, "move-leader", "1"], 1, "Error: etcdserver: permission denied"),
    ([*ALICE, "endpoint", "hashkv"], 1, "Error: etcdserver: permission denied"),
    ([*ALICE, "snapshot", "save", "/dev/null"], 5, "Error: etcdserver: permission denied"),
    ([*ALICE, "member", "list"], 0, ""),
    ([*ALICE, "endpoint", "status"], 0, ""),
]


def test_maintenance_permissions(make_cluster) -> None:
    """Who may call the Maintenance and Cluster services once auth is on."""
    ep = make_cluster(1, extra=["--quota-backend-bytes=8192"]).members[0].endpoint
    r = etcdctl(ep, "put", "big", "x" * 10_000, check=False)
    assert "database space exceeded" in r.stderr  # raises the NOSPACE alarm
    for cmd in (
        ["user", "add", "root", "--new-user-password=rootpw"],
        ["user", "add", "alice", "--new-user-password=alicepw"],
        ["auth", "enable"],
    ):
        etcdctl(ep, *cmd)
    for cmd, code, expected in MAINTENANCE:
        r = etcdctl(ep, *cmd, check=False)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        if code:
            assert (r.returncode, errors[-1] if errors else "") == (code, expected), cmd
        else:
            assert r.returncode == 0, (cmd, r.stderr)
            # The alarm line, with the member ID left out.
            shown = re.sub(r"memberID:\d+", "memberID:*", r.stdout.strip()) if expected else ""
            assert shown == expected, cmd
