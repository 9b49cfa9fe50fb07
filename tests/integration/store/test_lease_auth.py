"""Lease permissions with auth enabled: the same gRPC calls against keel-store and etcd.

etcd 3.4 checks leases in its apply path (``checkLeasePuts``): revoking a lease needs
write permission on every key attached to it, and attaching a key to a lease that
already holds keys the caller cannot write is refused too. Granting is open to anyone
(even without a token). Every call's outcome (gRPC code and etcd's message) must match.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from keel_store.pb import rpcgrpc, rpcpb

pytestmark = [pytest.mark.host, pytest.mark.timeout(180)]

SECRET, SHARED, MINE, EMPTY = 0x5EC, 0x5AA, 0x3A1, 0xE3


class Client:
    """Raw stubs (no client library retrying behind our back) with a user's token."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)
        self.kv = rpcgrpc.KVStub(self.channel)
        self.lease = rpcgrpc.LeaseStub(self.channel)
        self.auth = rpcgrpc.AuthStub(self.channel)

    def token(self, user: str, password: str) -> str:
        return str(
            self.auth.Authenticate(rpcpb.AuthenticateRequest(name=user, password=password)).token
        )

    def call(self, method: Any, request: Any, token: str | None) -> str:
        """``ok`` or ``CODE: message``: what a client sees."""
        metadata = (("token", token),) if token else ()
        try:
            method(request, metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "ok"


def scenario(endpoint: str) -> list[tuple[str, str]]:
    c = Client(endpoint)
    c.auth.UserAdd(rpcpb.AuthUserAddRequest(name="root", password="rootpw"))
    c.auth.UserGrantRole(rpcpb.AuthUserGrantRoleRequest(user="root", role="root"))
    c.auth.UserAdd(rpcpb.AuthUserAddRequest(name="alice", password="alicepw"))
    c.auth.RoleAdd(rpcpb.AuthRoleAddRequest(name="app"))
    for key, end, ptype in ((b"/app/", b"/app0", 2), (b"/wo", b"", 1)):
        req = rpcpb.AuthRoleGrantPermissionRequest(name="app")
        req.perm.key, req.perm.range_end, req.perm.permType = key, end, ptype
        c.auth.RoleGrantPermission(req)
    c.auth.UserGrantRole(rpcpb.AuthUserGrantRoleRequest(user="alice", role="app"))
    for lease_id in (SECRET, SHARED):
        c.lease.LeaseGrant(rpcpb.LeaseGrantRequest(ID=lease_id, TTL=600))
    c.kv.Put(rpcpb.PutRequest(key=b"/secret", value=b"s", lease=SECRET))
    c.kv.Put(rpcpb.PutRequest(key=b"/app/shared", value=b"a", lease=SHARED))
    c.auth.AuthEnable(rpcpb.AuthEnableRequest())
    alice, root = c.token("alice", "alicepw"), c.token("root", "rootpw")
    grant, revoke, put = c.lease.LeaseGrant, c.lease.LeaseRevoke, c.kv.Put
    steps: list[tuple[str, Any, Any, str | None]] = [
        ("alice grants", grant, rpcpb.LeaseGrantRequest(ID=MINE, TTL=600), alice),
        ("anonymous grant", grant, rpcpb.LeaseGrantRequest(ID=EMPTY, TTL=600), None),
        ("bad token grant", grant, rpcpb.LeaseGrantRequest(ID=0x99, TTL=600), "bogus.1"),
        (
            "put on a lease with a key alice cannot write",
            put,
            rpcpb.PutRequest(key=b"/app/b", value=b"x", lease=SECRET),
            alice,
        ),
        (
            "put on a lease with alice's keys",
            put,
            rpcpb.PutRequest(key=b"/app/b", value=b"x", lease=SHARED),
            alice,
        ),
        (
            "put on her own lease",
            put,
            rpcpb.PutRequest(key=b"/app/c", value=b"x", lease=MINE),
            alice,
        ),
        (
            "put on an unknown lease",
            put,
            rpcpb.PutRequest(key=b"/app/d", value=b"x", lease=0x777),
            alice,
        ),
        ("write-only key", put, rpcpb.PutRequest(key=b"/wo", value=b"x"), alice),
        (
            "write-only key with prev_kv",
            put,
            rpcpb.PutRequest(key=b"/wo", value=b"y", prev_kv=True),
            alice,
        ),
        ("revoke a lease holding /secret", revoke, rpcpb.LeaseRevokeRequest(ID=SECRET), alice),
        (
            "anonymous revoke of a lease with keys",
            revoke,
            rpcpb.LeaseRevokeRequest(ID=SECRET),
            None,
        ),
        (
            "anonymous revoke of a lease without keys",
            revoke,
            rpcpb.LeaseRevokeRequest(ID=EMPTY),
            None,
        ),
        ("revoke her shared lease", revoke, rpcpb.LeaseRevokeRequest(ID=SHARED), alice),
        ("revoke an unknown lease", revoke, rpcpb.LeaseRevokeRequest(ID=0x777), alice),
        ("root revokes /secret's lease", revoke, rpcpb.LeaseRevokeRequest(ID=SECRET), root),
    ]
    out = [(name, c.call(method, req, token)) for name, method, req, token in steps]
    keys = c.kv.Range(
        rpcpb.RangeRequest(key=b"/", range_end=b"0", keys_only=True), metadata=(("token", root),)
    )
    out.append(("keys left", ",".join(kv.key.decode() for kv in keys.kvs)))
    c.channel.close()
    return out


def test_lease_permissions_as_etcd(make_cluster) -> None:  # type: ignore[no-untyped-def]
    keel = make_cluster(1)
    etcd = make_cluster(1, binary="etcd")
    ours, theirs = scenario(keel.members[0].endpoint), scenario(etcd.members[0].endpoint)
    assert [o for _, o in theirs].count("ok") >= 5, theirs  # the scenario itself is sane
    assert any("permission denied" in o for _, o in theirs), theirs
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == ref, f"{ref[0]}: keel {mine[1]!r}, etcd {ref[1]!r}"


def test_time_to_live_hides_keys_from_users_without_read_permission(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """etcd 3.4.26/3.5.9's fix for CVE-2023-32082 (3.4.23 answers anyone)."""
    keel = make_cluster(1)
    c = Client(keel.members[0].endpoint)
    scenario(keel.members[0].endpoint)
    alice = c.token("alice", "alicepw")
    ttl = c.lease.LeaseTimeToLive
    c.lease.LeaseGrant(rpcpb.LeaseGrantRequest(ID=0x42, TTL=600), metadata=(("token", alice),))
    c.kv.Put(
        rpcpb.PutRequest(key=b"/hidden", value=b"h", lease=0x42),
        metadata=(("token", c.token("root", "rootpw")),),
    )
    req = rpcpb.LeaseTimeToLiveRequest(ID=0x42, keys=True)
    assert c.call(ttl, req, alice) == "PERMISSION_DENIED: etcdserver: permission denied"
    assert c.call(ttl, req, None) == "INVALID_ARGUMENT: etcdserver: user name is empty"
    assert c.call(ttl, rpcpb.LeaseTimeToLiveRequest(ID=MINE, keys=True), alice) == "ok"
    c.channel.close()
