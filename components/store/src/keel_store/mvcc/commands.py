"""Commands: what a Raft entry carries to the state machine, and how it is applied.

An entry's data is one byte of :class:`Kind`, an 8-byte request ID (so the member that
proposed it can hand the result back to the waiting client), then the etcd request
message itself. Using etcd's own messages keeps the log readable with etcd's protos.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from google.protobuf.message import DecodeError, Message

from keel_store.mvcc import errors
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.store import StateMachine, txn_writes
from keel_store.pb import rpcpb

_HEAD = struct.Struct(">BQ")


class Kind(enum.IntEnum):
    """What a command asks the state machine to do."""

    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACT = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    RANGE = 7
    """A linearizable read through the log (used when ReadIndex is not available)."""
    MEMBER_ADD = 8
    MEMBER_REMOVE = 9
    MEMBER_UPDATE = 10
    MEMBER_PROMOTE = 11
    ALARM = 12
    AUTH_ENABLE = 13
    AUTH_DISABLE = 14
    USER_ADD = 15
    USER_DELETE = 16
    USER_CHANGE_PASSWORD = 17
    USER_GRANT_ROLE = 18
    USER_REVOKE_ROLE = 19
    ROLE_ADD = 20
    ROLE_DELETE = 21
    ROLE_GRANT_PERMISSION = 22
    ROLE_REVOKE_PERMISSION = 23
    LEASE_CHECKPOINT = 24
    """What the leader's clock left of leases (``--experimental-enable-lease-checkpoint``):
    no change to the key space; the node's lessor remembers it."""
    FORCE_NEW_CLUSTER = 25
    """``--force-new-cluster``: the member named keeps the member table to itself (as a
    voter); written straight into its own log, never proposed."""
    MEMBER_ATTR = 26
    """A member's name and client URLs, proposed by itself at every start (etcd's
    ``publish``)."""


_MESSAGES: dict[Kind, type[Message]] = {
    Kind.PUT: rpcpb.PutRequest,
    Kind.DELETE_RANGE: rpcpb.DeleteRangeRequest,
    Kind.TXN: rpcpb.TxnRequest,
    Kind.COMPACT: rpcpb.CompactionRequest,
    Kind.LEASE_GRANT: rpcpb.LeaseGrantRequest,
    Kind.LEASE_REVOKE: rpcpb.LeaseRevokeRequest,
    Kind.RANGE: rpcpb.RangeRequest,
    Kind.MEMBER_ADD: rpcpb.Member,
    Kind.MEMBER_REMOVE: rpcpb.MemberRemoveRequest,
    Kind.MEMBER_UPDATE: rpcpb.MemberUpdateRequest,
    Kind.MEMBER_PROMOTE: rpcpb.MemberPromoteRequest,
    Kind.ALARM: rpcpb.AlarmRequest,
    Kind.AUTH_ENABLE: rpcpb.AuthEnableRequest,
    Kind.AUTH_DISABLE: rpcpb.AuthDisableRequest,
    Kind.USER_ADD: rpcpb.AuthUserAddRequest,
    Kind.USER_DELETE: rpcpb.AuthUserDeleteRequest,
    Kind.USER_CHANGE_PASSWORD: rpcpb.AuthUserChangePasswordRequest,
    Kind.USER_GRANT_ROLE: rpcpb.AuthUserGrantRoleRequest,
    Kind.USER_REVOKE_ROLE: rpcpb.AuthUserRevokeRoleRequest,
    Kind.ROLE_ADD: rpcpb.AuthRoleAddRequest,
    Kind.ROLE_DELETE: rpcpb.AuthRoleDeleteRequest,
    Kind.ROLE_GRANT_PERMISSION: rpcpb.AuthRoleGrantPermissionRequest,
    Kind.ROLE_REVOKE_PERMISSION: rpcpb.AuthRoleRevokePermissionRequest,
    Kind.LEASE_CHECKPOINT: rpcpb.LeaseCheckpointRequest,
    Kind.FORCE_NEW_CLUSTER: rpcpb.Member,
    Kind.MEMBER_ATTR: rpcpb.Member,
}
AUTH_KINDS = {k for k in Kind if Kind.AUTH_ENABLE <= k <= Kind.ROLE_REVOKE_PERMISSION}
"""Kinds that change users, roles or whether authentication is enabled."""


_CORRUPT_REFUSES = frozenset(
    {Kind.PUT, Kind.DELETE_RANGE, Kind.TXN, Kind.COMPACT, Kind.LEASE_GRANT, Kind.LEASE_REVOKE}
)


def encode(kind: Kind, request_id: int, request: Message) -> bytes:
    """The entry data for ``request``."""
    payload: bytes = request.SerializeToString()
    return _HEAD.pack(kind, request_id) + payload


def decode(data: bytes) -> tuple[Kind, int, Message]:
    """Split entry data back into (kind, request ID, request); ValueError if corrupt."""
    if len(data) < _HEAD.size:
        raise ValueError(f"command too short ({len(data)} bytes)")
    kind_byte, request_id = _HEAD.unpack_from(data)
    try:
        kind = Kind(kind_byte)
        message = _MESSAGES[kind]()
        message.ParseFromString(data[_HEAD.size :])
    except (ValueError, DecodeError) as exc:
        raise ValueError(f"corrupt command (kind {kind_byte}): {exc}") from exc
    return kind, request_id, message


_LONG_KINDS = frozenset({Kind.COMPACT, Kind.LEASE_REVOKE})


def may_take_long(data: bytes) -> bool:
    """Whether applying this entry may take long: it works on a key range (a ranged
    delete or read, also inside a txn), compacts, or revokes a lease (and its keys).
    Puts, single-key deletes and txns on named keys do not; a corrupt entry does not."""
    if not data:
        return False
    kind = data[0]
    if kind in _LONG_KINDS:
        return True
    if kind not in (Kind.DELETE_RANGE, Kind.TXN, Kind.RANGE):
        return False
    try:
        req = decode(data)[2]
    except ValueError:
        return False
    return _ranged(req)


def _ranged(req: Message) -> bool:
    if isinstance(req, rpcpb.TxnRequest):
        for op in (*req.success, *req.failure):
            which = op.WhichOneof("request")
            if which is not None and _ranged(getattr(op, which)):
                return True
        return False
    return bool(getattr(req, "range_end", b""))


def apply(sm: StateMachine, index: int, data: bytes) -> tuple[int, Any]:
    """Apply one committed entry; returns (request ID, response or :class:`EtcdError`).

    An empty entry (a new leader's no-op) only advances the applied index. Errors are
    results, not exceptions: a rejected request is still a deterministic outcome.
    """
    sm.applied_index = index
    if not data:
        return 0, None
    kind, request_id, req = decode(data)
    if kind in _CORRUPT_REFUSES and sm.corrupt:
        # A member's key space differed from the leader's (the corruption check):
        # every member refuses writes alike until the alarm is disarmed (etcd's
        # applierV3Corrupt). Reads are served.
        return request_id, errors.CORRUPT
    if sm.no_space and (
        kind in (Kind.PUT, Kind.LEASE_GRANT) or (kind is Kind.TXN and txn_writes(req))
    ):
        # Every member refuses alike while the NOSPACE alarm is raised (etcd's capped
        # applier); deletes, compaction and alarm changes still go through.
        return request_id, errors.NO_SPACE
    try:
        if kind is Kind.PUT:
            return request_id, sm.put(req)
        if kind is Kind.DELETE_RANGE:
            return request_id, sm.delete_range(req)
        if kind is Kind.TXN:
            return request_id, sm.txn(req)
        if kind is Kind.COMPACT:
            return request_id, sm.compact(req)
        if kind is Kind.LEASE_GRANT:
            return request_id, sm.lease_grant(req)
        if kind is Kind.LEASE_REVOKE:
            return request_id, sm.lease_revoke(req)
        if kind is Kind.MEMBER_ADD:
            return request_id, sm.member_add(req)
        if kind is Kind.MEMBER_REMOVE:
            return request_id, sm.member_remove(req)
        if kind is Kind.MEMBER_UPDATE:
            return request_id, sm.member_update(req)
        if kind in AUTH_KINDS:
            resp = sm.auth.apply(req)
            resp.header.revision = sm.kv.revision  # type: ignore[attr-defined]
            return request_id, resp
        if kind is Kind.ALARM:
            return request_id, sm.alarm(req)
        if kind is Kind.MEMBER_PROMOTE:
            return request_id, sm.member_promote(req)
        if kind is Kind.LEASE_CHECKPOINT:
            return request_id, req  # for the lessor (outside the state machine)
        if kind is Kind.FORCE_NEW_CLUSTER:
            return request_id, sm.keep_only_member(req)
        if kind is Kind.MEMBER_ATTR:
            return request_id, sm.member_attr(req)
        return request_id, sm.range(req)
    except EtcdError as exc:
        return request_id, exc
