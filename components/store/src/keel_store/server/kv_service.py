"""The KV service of etcd's v3 API, served from a :class:`StoreNode`, and what the other
services share with it: response headers, permission checks, etcd's error statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from keel_store.mvcc import auth as auth_errors
from keel_store.mvcc import errors, validate
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.keyspace import ENTRY_OVERHEAD, KeyValue
from keel_store.mvcc.store import fill_kvs
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.node import StoreNode

T = TypeVar("T")
STATUS = {code.value[0]: code for code in grpc.StatusCode}


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: EtcdError) -> None:
    """Fail the RPC with etcd's status code and exact message."""
    await context.abort(STATUS[int(exc.code)], exc.message)


def guarded(
    method: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]:
    """Turn :class:`EtcdError` into a gRPC status; check ``hasleader`` metadata."""

    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            if self.node.leader_id == 0:
                await self.node.leader_gate.check(context)
            return await method(self, request, context)
        except EtcdError as exc:
            await abort(context, exc)
            raise AssertionError("unreachable") from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


RANGE_SLICE = 4096
"""Versions copied into a range's response between two turns of the loop (~6 ms)."""


async def fill_paced(resp: Any, kvs: list[KeyValue], keys_only: bool) -> None:
    """Copy the versions a range returns into its response a slice at a time, the loop
    free in between: a range of 100k keys held it for 0.15 s (1.5 us a key), which
    other clients and, on a leader, the heartbeats waited out. The versions were read
    at one point in time and are never changed, so the answer is the same."""
    for start in range(0, len(kvs), RANGE_SLICE):
        if start:
            await asyncio.sleep(0)
        fill_kvs(resp, kvs[start : start + RANGE_SLICE], keys_only)


class Headers:
    """Fills etcd's ResponseHeader (cluster, member, revision, raft term)."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node

    def fill(self, header: rpcpb.ResponseHeader, revision: int | None = None) -> None:
        node = self.node
        header.cluster_id = node.cluster.cluster_id
        header.member_id = node.member_id
        header.raft_term = node.term
        header.revision = node.sm.kv.revision if revision is None else revision


async def check_quota(node: StoreNode, cost: int) -> None:
    """etcd's backend quota: refuse a write that would pass ``--quota-backend-bytes``.

    The first refusal raises the NOSPACE alarm through the log, which then blocks
    writes on every member until ``etcdctl alarm disarm`` (after compaction).
    """
    if node.sm.no_space:
        raise errors.NO_SPACE
    if node.sm.kv.size + cost > node.config.quota_bytes:
        alarm = rpcpb.AlarmRequest(
            action=rpcpb.AlarmRequest.ACTIVATE, memberID=node.member_id, alarm=rpcpb.NOSPACE
        )
        await node.propose(Kind.ALARM, alarm)
        raise errors.NO_SPACE


def _put_cost(req: rpcpb.PutRequest) -> int:
    return len(req.key) + len(req.value) + ENTRY_OVERHEAD


def _txn_cost(req: rpcpb.TxnRequest) -> int:
    cost = 0
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which == "request_put":
            cost += _put_cost(op.request_put)
        elif which == "request_txn":
            cost += _txn_cost(op.request_txn)
    return cost


def auth_user(node: StoreNode, context: Any) -> str | None:
    """The user a request runs as (from its ``token`` metadata); None if auth is off.

    With auth off, a token that is sent but not known is still refused (etcd 3.4).
    """
    auth = node.sm.auth
    token = next((v for k, v in context.invocation_metadata() or () if k == "token"), None)
    if not auth.enabled:
        # As etcd 3.4's AuthInfoFromCtx: a token it cannot resolve is refused even then.
        if token is not None and node.tokens.info(token) is None:
            raise errors.INVALID_AUTH_TOKEN
        return None
    if token is None:
        raise auth_errors.USER_EMPTY
    found = node.tokens.info(token)
    if found is None or found[0] not in auth.users:
        raise errors.INVALID_AUTH_TOKEN
    user, revision = found
    if revision is not None and revision < auth.revision:
        raise errors.AUTH_OLD_REVISION  # a JWT from before an auth change: authenticate again
    return user


def require(node: StoreNode, context: Any, key: bytes, range_end: bytes, write: bool) -> None:
    """Raise etcd's permission error unless the request's user may touch the range."""
    user = auth_user(node, context)
    if user is not None and not node.sm.auth.allowed(user, key, range_end, write):
        raise errors.PERMISSION_DENIED


def require_root(node: StoreNode, context: Any) -> None:
    """Administrative calls (members, auth, maintenance) need the root role."""
    user = auth_user(node, context)
    if user is not None and not node.sm.auth.is_root(user):
        raise errors.PERMISSION_DENIED


def require_lease_keys(node: StoreNode, context: Any, lease_id: int) -> None:
    """Write permission on every key attached to a lease (etcd's ``checkLeasePuts``).

    Revoking a lease deletes its keys, and attaching a key to a lease lets whoever may
    revoke it delete the key, so both need write access to all of the lease's keys. A
    lease without keys (or an unknown one) needs nothing; root may do anything. Checked
    when the request arrives (etcd checks when it applies the entry).
    """
    auth = node.sm.auth
    if not auth.enabled:
        return
    lease = node.sm.leases.get(lease_id)
    if lease is None or not lease.keys:
        return
    user = auth_user(node, context)
    if user is None or auth.is_root(user):
        return
    for key in lease.keys:
        if not auth.allowed(user, key, b"", write=True):
            raise errors.PERMISSION_DENIED


def _require_txn(node: StoreNode, context: Any, req: rpcpb.TxnRequest) -> None:
    for cmp in req.compare:
        require(node, context, cmp.key, cmp.range_end, write=False)
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which == "request_range":
            require(node, context, op.request_range.key, op.request_range.range_end, False)
        elif which == "request_put":
            require(node, context, op.request_put.key, b"", write=True)
        elif which == "request_delete_range":
            d = op.request_delete_range
            require(node, context, d.key, d.range_end, write=True)
        elif which == "request_txn":
            _require_txn(node, context, op.request_txn)


def _read_only(req: rpcpb.TxnRequest) -> bool:
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which in ("request_put", "request_delete_range"):
            return False
        if which == "request_txn" and not _read_only(op.request_txn):
            return False
    return True


def answerer(context: Any, fill: Callable[[Any], None]) -> Callable[[Any], None] | None:
    """What ``StoreNode.propose`` calls with a write's response inside its apply:
    ``fill`` the header, then ``context.reply`` (keel-store's gRPC server) sends it and
    ends the call at once. None where the context cannot (the JSON gateway's)."""
    reply = getattr(context, "reply", None)
    if reply is None:
        return None

    def answer(resp: Any) -> None:
        fill(resp)
        reply(resp)

    return answer


class KVService(rpcgrpc.KVServicer):  # type: ignore[misc]
    """KV: Range, Put, DeleteRange, Txn, Compact."""

    def __init__(self, node: StoreNode, max_txn_ops: int = validate.DEFAULT_MAX_TXN_OPS) -> None:
        self.node = node
        self.headers = Headers(node)
        self.max_txn_ops = max_txn_ops

    def _fill(self, resp: Any) -> None:
        self.headers.fill(resp.header, resp.header.revision)

    def _fill_txn(self, resp: Any) -> None:
        self._fill(resp)
        _fill_nested(resp, self.headers)

    @guarded
    async def Range(self, request: Any, context: Any) -> Any:
        """Linearizable by default (ReadIndex); ``serializable`` reads locally."""
        validate.check_range(request)
        require(self.node, context, request.key, request.range_end, write=False)
        if not request.serializable:
            await self.node.read_barrier()
        resp, kvs = self.node.sm.range_parts(request)
        await fill_paced(resp, kvs, request.keys_only)
        self.headers.fill(resp.header, resp.header.revision)
        return resp

    @guarded
    async def Put(self, request: Any, context: Any) -> Any:
        validate.check_put(request)
        require(self.node, context, request.key, b"", write=True)
        if request.lease:
            require_lease_keys(self.node, context, request.lease)
        if request.prev_kv:
            require(self.node, context, request.key, b"", write=False)
        await check_quota(self.node, _put_cost(request))
        resp = await self.node.propose(Kind.PUT, request, answerer(context, self._fill))
        self._fill(resp)
        return resp

    @guarded
    async def DeleteRange(self, request: Any, context: Any) -> Any:
        validate.check_delete_range(request)
        require(self.node, context, request.key, request.range_end, write=True)
        resp = await self.node.propose(Kind.DELETE_RANGE, request, answerer(context, self._fill))
        self._fill(resp)
        return resp

    @guarded
    async def Txn(self, request: Any, context: Any) -> Any:
        """A read-only txn is served like a linearizable read, without a log entry."""
        validate.check_txn(request, self.max_txn_ops)
        _require_txn(self.node, context, request)
        if _read_only(request):
            await self.node.read_barrier()
            resp = self.node.sm.txn(request)
        else:
            await check_quota(self.node, _txn_cost(request))
            resp = await self.node.propose(Kind.TXN, request, answerer(context, self._fill_txn))
        self._fill_txn(resp)
        return resp

    @guarded
    async def Compact(self, request: Any, context: Any) -> Any:
        require_root(self.node, context)
        resp = await self.node.propose(Kind.COMPACT, request, answerer(context, self._fill))
        self._fill(resp)
        return resp


def _fill_nested(resp: rpcpb.TxnResponse, headers: Headers) -> None:
    """etcd leaves only ``revision`` in sub-response headers; so do we (no-op hook)."""
    del resp, headers
