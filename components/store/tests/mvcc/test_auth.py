"""The auth store: permissions over keys and ranges, etcd's management rules."""

from __future__ import annotations

import pytest

from keel_store.mvcc import auth, snapshot
from keel_store.mvcc.auth import READ, READWRITE, WRITE, AuthStore, Perm
from keel_store.mvcc.store import StateMachine
from keel_store.pb import authpb, rpcpb


def test_permission_coverage() -> None:
    single = Perm(READ, b"/a", b"")
    assert single.covers(b"/a", b"", write=False)
    assert not single.covers(b"/a", b"", write=True)
    assert not single.covers(b"/a", b"/b", write=False)
    prefix = Perm(READWRITE, b"/app/", b"/app0")
    assert prefix.covers(b"/app/x", b"", write=True)
    assert prefix.covers(b"/app/", b"/app0", write=False)
    assert not prefix.covers(b"/app/", b"/b", write=False)
    assert not prefix.covers(b"/", b"", write=False)
    assert not prefix.covers(b"/app/x", b"\0", write=False)
    everything = Perm(WRITE, b"/", b"\0")
    assert everything.covers(b"/z", b"\0", write=True)
    assert not everything.covers(b"/z", b"", write=False)


def setup_store() -> AuthStore:
    store = AuthStore()
    store.apply(rpcpb.AuthUserAddRequest(name="root", password="hash"))
    store.apply(rpcpb.AuthUserAddRequest(name="alice", password="hash"))
    store.apply(rpcpb.AuthRoleAddRequest(name="app"))
    perm = authpb.Permission(permType=READWRITE, key=b"/app/", range_end=b"/app0")
    store.apply(rpcpb.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    store.apply(rpcpb.AuthUserGrantRoleRequest(user="alice", role="app"))
    return store


def test_enable_needs_root_with_root_role_and_management_rules() -> None:
    store = setup_store()
    with pytest.raises(auth.EtcdError) as exc:
        store.apply(rpcpb.AuthEnableRequest())
    assert exc.value == auth.ROOT_ROLE_MISSING
    store.apply(rpcpb.AuthUserGrantRoleRequest(user="root", role="root"))
    store.apply(rpcpb.AuthEnableRequest())
    assert store.enabled
    with pytest.raises(auth.EtcdError) as exc:
        store.apply(rpcpb.AuthUserDeleteRequest(name="root"))
    assert exc.value == auth.INVALID_AUTH_MGMT
    with pytest.raises(auth.EtcdError) as exc:
        store.apply(rpcpb.AuthUserGrantRoleRequest(user="alice", role="nope"))
    assert exc.value == auth.ROLE_NOT_FOUND
    with pytest.raises(auth.EtcdError) as exc:
        store.apply(rpcpb.AuthUserAddRequest(name="alice", password="x"))
    assert exc.value == auth.USER_EXISTS
    assert store.allowed("alice", b"/app/k", b"", write=True)
    assert not store.allowed("alice", b"/other", b"", write=False)
    assert store.allowed("root", b"/other", b"\0", write=True)
    assert not store.allowed("mallory", b"/app/k", b"", write=False)
    store.apply(rpcpb.AuthRoleDeleteRequest(role="app"))
    assert not store.allowed("alice", b"/app/k", b"", write=False)


def test_auth_survives_snapshots() -> None:
    sm = StateMachine()
    sm.auth = setup_store()
    back = snapshot.restore(snapshot.save(sm))
    assert back.auth.allowed("alice", b"/app/x", b"", write=True)
    assert back.auth.users["alice"].password_hash == b"hash"
    assert back.auth.role_get("app").perm[0].key == b"/app/"


def test_revision_and_enabled_row_move_as_etcds() -> None:
    """etcd 3.4's auth revision: 1 in a new store, bumped by changes only (not by a
    refused request, nor one that changes nothing, nor by enabling); the
    ``authEnabled`` row exists once auth was enabled or disabled."""
    store = AuthStore()
    assert (store.revision, store.flag_stored) == (1, False)
    store = setup_store()  # user add x2, role add, grant permission, grant role
    assert store.revision == 6
    with pytest.raises(auth.EtcdError):
        store.apply(rpcpb.AuthUserAddRequest(name="alice", password="x"))
    store.apply(rpcpb.AuthUserGrantRoleRequest(user="alice", role="app"))  # held already
    store.apply(rpcpb.AuthDisableRequest())  # already off
    assert (store.revision, store.flag_stored) == (6, False)
    store.apply(rpcpb.AuthUserGrantRoleRequest(user="root", role="root"))
    store.apply(rpcpb.AuthEnableRequest())
    store.apply(rpcpb.AuthEnableRequest())
    assert (store.revision, store.flag_stored, store.enabled) == (7, True, True)
    store.apply(rpcpb.AuthDisableRequest())
    assert (store.revision, store.enabled) == (8, False)
    back = AuthStore.from_json(store.to_json())
    assert (back.revision, back.flag_stored) == (8, True)
    assert AuthStore.from_json({}).revision == 1


def test_root_role_is_not_found_until_added() -> None:
    """etcd 3.4 answers ``role name not found`` for ``root`` until a role of that name
    exists, though the root user may hold it."""
    store = setup_store()
    store.apply(rpcpb.AuthUserGrantRoleRequest(user="root", role="root"))
    with pytest.raises(auth.EtcdError) as exc:
        store.role_get("root")
    assert exc.value == auth.ROLE_NOT_FOUND
