"""The KV and Watch services of etcd's v3 API, served from a :class:`StoreNode`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from keel_store.mvcc import errors, validate
from keel_store.mvcc.commands import Kind
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.keyspace import Event
from keel_store.mvcc.watch import Watcher
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
            if self.node.leader_id == 0 and _wants_leader(context):
                raise errors.NO_LEADER
            return await method(self, request, context)
        except EtcdError as exc:
            await abort(context, exc)
            raise AssertionError("unreachable") from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _wants_leader(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return any(k == "hasleader" and v == "true" for k, v in context.invocation_metadata() or ())


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


def _read_only(req: rpcpb.TxnRequest) -> bool:
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which in ("request_put", "request_delete_range"):
            return False
        if which == "request_txn" and not _read_only(op.request_txn):
            return False
    return True


class KVService(rpcgrpc.KVServicer):  # type: ignore[misc]
    """KV: Range, Put, DeleteRange, Txn, Compact."""

    def __init__(self, node: StoreNode, max_txn_ops: int = validate.DEFAULT_MAX_TXN_OPS) -> None:
        self.node = node
        self.headers = Headers(node)
        self.max_txn_ops = max_txn_ops

    @guarded
    async def Range(self, request: Any, context: Any) -> Any:
        """Linearizable by default (ReadIndex); ``serializable`` reads locally."""
        validate.check_range(request)
        if not request.serializable:
            await self.node.read_barrier()
        resp = self.node.sm.range(request)
        self.headers.fill(resp.header, resp.header.revision)
        return resp

    @guarded
    async def Put(self, request: Any, context: Any) -> Any:
        validate.check_put(request)
        resp = await self.node.propose(Kind.PUT, request)
        self.headers.fill(resp.header, resp.header.revision)
        return resp

    @guarded
    async def DeleteRange(self, request: Any, context: Any) -> Any:
        validate.check_delete_range(request)
        resp = await self.node.propose(Kind.DELETE_RANGE, request)
        self.headers.fill(resp.header, resp.header.revision)
        return resp

    @guarded
    async def Txn(self, request: Any, context: Any) -> Any:
        """A read-only txn is served like a linearizable read, without a log entry."""
        validate.check_txn(request, self.max_txn_ops)
        if _read_only(request):
            await self.node.read_barrier()
            resp = self.node.sm.txn(request)
        else:
            resp = await self.node.propose(Kind.TXN, request)
        self.headers.fill(resp.header, resp.header.revision)
        _fill_nested(resp, self.headers)
        return resp

    @guarded
    async def Compact(self, request: Any, context: Any) -> Any:
        resp = await self.node.propose(Kind.COMPACT, request)
        self.headers.fill(resp.header, resp.header.revision)
        return resp


def _fill_nested(resp: rpcpb.TxnResponse, headers: Headers) -> None:
    """etcd leaves only ``revision`` in sub-response headers; so do we (no-op hook)."""
    del resp, headers


class WatchService(rpcgrpc.WatchServicer):  # type: ignore[misc]
    """Watch: many watches per stream, from any revision, filters, prev_kv, progress."""

    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self.headers = Headers(node)

    async def Watch(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        if self.node.leader_id == 0 and _wants_leader(context):
            await abort(context, errors.NO_LEADER)
        queue: asyncio.Queue[rpcpb.WatchResponse | None] = asyncio.Queue()
        watchers: dict[int, Watcher] = {}
        next_id = 0

        def sink(watcher: Watcher, events: list[Event]) -> None:
            resp = rpcpb.WatchResponse(watch_id=watcher.id)
            self.headers.fill(resp.header)
            resp.events.extend(events)
            queue.put_nowait(resp)

        def respond(**fields: Any) -> None:
            resp = rpcpb.WatchResponse(**fields)
            self.headers.fill(resp.header)
            queue.put_nowait(resp)

        async def read_requests() -> None:
            nonlocal next_id
            try:
                async for req in request_iterator:
                    which = req.WhichOneof("request_union")
                    if which == "create_request":
                        cr = req.create_request
                        if cr.watch_id:
                            wid = cr.watch_id
                        else:
                            while next_id in watchers:
                                next_id += 1
                            wid, next_id = next_id, next_id + 1
                        if wid in watchers:
                            respond(
                                watch_id=wid,
                                created=True,
                                canceled=True,
                                cancel_reason="etcdserver: duplicate watch ID",
                            )
                            continue
                        filters = set(cr.filters)
                        w = Watcher(
                            wid,
                            cr.key,
                            cr.range_end,
                            sink,
                            prev_kv=cr.prev_kv,
                            no_put=rpcpb.WatchCreateRequest.NOPUT in filters,
                            no_delete=rpcpb.WatchCreateRequest.NODELETE in filters,
                            progress_notify=cr.progress_notify,
                        )
                        respond(watch_id=wid, created=True)
                        compacted = self.node.hub.watch(w, cr.start_revision)
                        if compacted:
                            respond(
                                watch_id=wid,
                                canceled=True,
                                compact_revision=compacted,
                                cancel_reason=errors.COMPACTED.message,
                            )
                        else:
                            watchers[wid] = w
                    elif which == "cancel_request":
                        wid = req.cancel_request.watch_id
                        found = watchers.pop(wid, None)
                        if found is not None:
                            self.node.hub.cancel(found)
                            respond(watch_id=wid, canceled=True)
                    elif which == "progress_request":
                        respond(watch_id=-1)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                resp = await queue.get()
                if resp is None:
                    break
                yield resp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            for w in watchers.values():
                self.node.hub.cancel(w)
