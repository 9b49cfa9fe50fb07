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

from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.store import StateMachine
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
}


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


def apply(sm: StateMachine, index: int, data: bytes) -> tuple[int, Any]:
    """Apply one committed entry; returns (request ID, response or :class:`EtcdError`).

    An empty entry (a new leader's no-op) only advances the applied index. Errors are
    results, not exceptions: a rejected request is still a deterministic outcome.
    """
    sm.applied_index = index
    if not data:
        return 0, None
    kind, request_id, req = decode(data)
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
        if kind is Kind.MEMBER_PROMOTE:
            return request_id, sm.member_promote(req)
        return request_id, sm.range(req)
    except EtcdError as exc:
        return request_id, exc
