"""What etcd's Lock and Election services are made of: clientv3/concurrency, in-process.

etcd 3.4 serves v3lock and v3election with its own Go client pointed at itself
(``v3client``): a session lease, a key ``<prefix><lease-id-hex>`` put with it, waits
for the keys before it to be deleted. Here the same requests go to the same service
objects the client port uses (:class:`KVService`, :class:`LeaseService`), with the
caller's metadata, so permissions with auth on, quota, validation and errors are those
of ordinary KV calls; waiting watches the store's watch hub, no polling.

An inner call that fails raises :class:`InnerError` with the status that call would
have had; etcd's services return such errors to their own caller as code Unknown with
the same message (clientv3 turns them into an error without a gRPC status), and so
do :func:`fail` here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from keel_store.mvcc import errors
from keel_store.mvcc.errors import EtcdError
from keel_store.mvcc.keyspace import Event, prefix_end
from keel_store.mvcc.watch import MAX_QUEUED_EVENTS, RESUME_BELOW, Watcher
from keel_store.pb import mvccpb, rpcpb
from keel_store.server.kv_service import Headers, KVService
from keel_store.server.node import StoreNode
from keel_store.server.other_services import LeaseService

T = TypeVar("T")

SESSION_TTL = 60
"""clientv3/concurrency's ``defaultSessionTTL``: the lease a call without one gets."""

NO_LEASE = 0
"""A request's ``lease`` of 0: the call grants its own session lease."""


class InnerError(Exception):
    """An inner KV or lease call failed with this status (or the caller broke a rule
    of the service, e.g. "election: not leader")."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _InnerContext:
    """The context inner calls run with: the caller's metadata (its token), no reply
    shortcut, and an ``abort`` that raises for the service to handle."""

    def __init__(self, outer: Any) -> None:
        self._outer = outer

    def invocation_metadata(self) -> Any:
        return self._outer.invocation_metadata()

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        del code  # what reaches etcd's caller is code Unknown (see the module's doc)
        raise InnerError(message)


async def fail(context: Any, exc: InnerError | EtcdError) -> None:
    """End the call with ``exc``'s status: for an inner call's error, as etcd's services
    do, code Unknown and that call's message."""
    code = exc.code if isinstance(exc, InnerError) else grpc.StatusCode.UNKNOWN
    await context.abort(code, exc.message)


async def check_leader(node: StoreNode, context: Any) -> None:
    """etcd's interceptor: ``hasleader`` metadata and no leader is "etcdserver: no leader"."""
    try:
        await node.leader_gate.check(context)
    except EtcdError as exc:
        raise InnerError(exc.message, grpc.StatusCode.UNAVAILABLE) from exc


def first_create(prefix: bytes) -> rpcpb.RangeRequest:
    """clientv3 ``OpGet(prefix, WithFirstCreate()...)``: the oldest key under it."""
    return rpcpb.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        limit=1,
        sort_order=rpcpb.RangeRequest.ASCEND,
        sort_target=rpcpb.RangeRequest.CREATE,
    )


def session_key(prefix: bytes, lease: int) -> bytes:
    """``fmt.Sprintf("%s%x", prefix, lease)``: the key a session holds under a prefix."""
    return prefix + f"{lease:x}".encode()


class EventQueue:
    """A watch on the store's hub whose batches (with a response header made when they
    were delivered) wait in a queue. Use as a context manager: leaving cancels it."""

    def __init__(self, node: StoreNode, key: bytes, end: bytes, start_revision: int) -> None:
        self.node = node
        self.headers = Headers(node)
        self.queue: asyncio.Queue[tuple[rpcpb.ResponseHeader, list[Event]] | None] = asyncio.Queue()
        self.watcher = Watcher(
            node.hub.new_id(),
            key,
            end,
            self._sink,
            compacted=lambda *_: self.queue.put_nowait(None),
        )
        self.start_revision = start_revision
        self.slow = False

    def __enter__(self) -> EventQueue:
        if self.node.hub.watch(self.watcher, self.start_revision):
            raise InnerError(errors.COMPACTED.message)  # as clientv3's wr.Err()
        return self

    def __exit__(self, *_: object) -> None:
        self.node.hub.cancel(self.watcher)

    def _sink(self, _: Watcher, events: list[Event]) -> bool:
        if self.queue.qsize() >= MAX_QUEUED_EVENTS:
            self.slow = True
            return False
        header = rpcpb.ResponseHeader()
        self.headers.fill(header)
        self.queue.put_nowait((header, list(events)))
        return True

    async def next(self) -> tuple[rpcpb.ResponseHeader, list[Event]]:
        """The next batch of events (in revision order) and its header. A watch whose
        batches waited unread was slow meanwhile (its events were not queued): it
        catches up from the store's history here."""
        if self.slow and self.queue.qsize() < RESUME_BELOW:
            self.slow = False
            if self.node.hub.resume(self.watcher):
                raise InnerError(errors.COMPACTED.message)
        batch = await self.queue.get()
        if batch is None:  # compacted under it (a snapshot installed)
            raise InnerError(errors.COMPACTED.message)
        return batch


class Client:
    """The in-process client one call of the Lock or Election service uses: the KV and
    lease calls of clientv3/concurrency, as the caller (``context``)."""

    def __init__(self, node: StoreNode, kv: KVService, lease: LeaseService, context: Any) -> None:
        self.node = node
        self.kv = kv
        self.lease = lease
        self.context = _InnerContext(context)

    async def own_key(self, name: bytes, lease: int) -> tuple[int, bytes, bytes]:
        """The session lease (:meth:`session`), the prefix ``name/`` and this session's
        key under it, as a Mutex and an Election start."""
        lease = await self.session(lease)
        prefix = name + b"/"
        return lease, prefix, session_key(prefix, lease)

    async def session(self, lease: int) -> int:
        """``concurrency.NewSession(WithLease(lease))``: the lease, or a new one of
        :data:`SESSION_TTL` seconds when the request named none (etcd then orphans it:
        it is not kept alive and not revoked)."""
        if lease != NO_LEASE:
            return lease
        resp = await self.lease.LeaseGrant(rpcpb.LeaseGrantRequest(TTL=SESSION_TTL), self.context)
        return int(resp.ID)

    async def range(self, req: rpcpb.RangeRequest) -> rpcpb.RangeResponse:
        return await self.kv.Range(req, self.context)  # type: ignore[no-any-return]

    async def txn(self, req: rpcpb.TxnRequest) -> rpcpb.TxnResponse:
        return await self.kv.Txn(req, self.context)  # type: ignore[no-any-return]

    async def delete(self, key: bytes) -> rpcpb.DeleteRangeResponse:
        req = rpcpb.DeleteRangeRequest(key=key)
        return await self.kv.DeleteRange(req, self.context)  # type: ignore[no-any-return]

    async def if_created_at(
        self, key: bytes, revision: int, then: rpcpb.RequestOp
    ) -> rpcpb.TxnResponse:
        """``Txn(If(CreateRevision(key) = revision)).Then(then)``: an op only while
        ``key`` is still the one created at ``revision`` (0: while it does not exist)."""
        cmp = rpcpb.Compare(
            key=key,
            target=rpcpb.Compare.CREATE,
            result=rpcpb.Compare.EQUAL,
            create_revision=revision,
        )
        return await self.txn(rpcpb.TxnRequest(compare=[cmp], success=[then]))

    def watch(self, key: bytes, end: bytes, start_revision: int) -> EventQueue:
        """A watch from ``start_revision`` (``with client.watch(...) as events``)."""
        return EventQueue(self.node, key, end, start_revision)

    async def wait_delete(self, key: bytes, revision: int) -> None:
        """clientv3/concurrency ``waitDelete``: until ``key`` is deleted, watching it
        from ``revision``."""
        with self.watch(key, b"", revision) as events:
            while True:
                _, batch = await events.next()
                if any(ev.type == mvccpb.Event.DELETE for ev in batch):
                    return

    async def wait_deletes(self, prefix: bytes, max_create_revision: int) -> rpcpb.ResponseHeader:
        """clientv3/concurrency ``waitDeletes``: until no key under ``prefix`` created
        at or before ``max_create_revision`` is left (waiting for the newest of them
        each time); the header of the last, empty, read."""
        req = rpcpb.RangeRequest(
            key=prefix,
            range_end=prefix_end(prefix),
            limit=1,
            sort_order=rpcpb.RangeRequest.DESCEND,
            sort_target=rpcpb.RangeRequest.CREATE,
            max_create_revision=max_create_revision,
        )
        while True:
            resp = await self.range(req)
            if not resp.kvs:
                return resp.header
            await self.wait_delete(resp.kvs[0].key, resp.header.revision)


async def cleanup(action: Callable[[], Any]) -> None:
    """Run a clean-up after the call was cancelled (the client went away or its deadline
    passed), as etcd does with its client's own context: its failure is not reported."""
    with contextlib.suppress(InnerError, EtcdError):
        await action()


class CallerClients:
    """What the Lock and Election services share: the member, its KV and lease
    services, and for each call an in-process :class:`Client` running as its caller."""

    def __init__(self, node: StoreNode, kv: KVService) -> None:
        self.node = node
        self.kv = kv
        self.lease = LeaseService(node)

    def _client(self, context: Any) -> Client:
        return Client(self.node, self.kv, self.lease, context)


def served(
    method: Callable[[Any, Any, Any], Awaitable[T]],
) -> Callable[[Any, Any, Any], Awaitable[T]]:
    """A unary method of the Lock or Election service: etcd's ``hasleader`` check first,
    and its errors (:class:`InnerError`, :class:`EtcdError`) as the call's status."""

    async def wrapper(self: Any, request: Any, context: Any) -> T:
        try:
            await check_leader(self.node, context)
            return await method(self, request, context)
        except (InnerError, EtcdError) as exc:
            await fail(context, exc)
            raise AssertionError("unreachable") from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper
