"""One client's watch stream, as etcd's ``serverWatchStream``: the requests it reads
(create, cancel, progress) and the responses it owes, for the gRPC Watch service and
for the JSON gateway's ``/v3/watch`` alike.

What etcd 3.4 answers, and so what this answers:

* A create gets ``created`` with the watch's ID; a refused one gets ``created`` and
  ``canceled`` with watch ID -1 and the reason: ``mvcc: watcher range is empty`` (a
  range end not above the key), ``mvcc: duplicate watch ID provided on the
  WatchStream``, or the auth error as Go prints a gRPC status (``rpc error: code =
  PermissionDenied desc = etcdserver: permission denied``).
* An empty key is the key ``\\0``; a range end of ``\\0`` means every key from the key on.
* A cancel of a known watch gets ``canceled``; of an unknown one, nothing.
* A progress request gets a response with watch ID -1 at the current revision.
* The client closing its side of the stream (gRPC half-close, the end of an HTTP body)
  ends nothing: the watches go on until the client goes away or cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from keel_store.mvcc import validate
from keel_store.mvcc.errors import Code, EtcdError
from keel_store.mvcc.keyspace import BUSY_EVERY, Event
from keel_store.mvcc.watch import MAX_QUEUED_EVENTS, RESUME_BELOW, Watcher
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.kv_service import Headers, require
from keel_store.server.node import StoreNode
from keel_store.server.watch_fragments import fragments

INVALID_WATCH_ID = -1
"""etcd's ``clientv3.InvalidWatchID``: what a refused create and a progress answer carry."""

MAX_QUEUED = 64
"""Answers waiting for the client before its requests stop being read (etcd: 16)."""

RANGE_EMPTY = "mvcc: watcher range is empty"
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"

_GO_CODES = {
    Code.CANCELLED: "Canceled",
    Code.UNKNOWN: "Unknown",
    Code.INVALID_ARGUMENT: "InvalidArgument",
    Code.NOT_FOUND: "NotFound",
    Code.PERMISSION_DENIED: "PermissionDenied",
    Code.RESOURCE_EXHAUSTED: "ResourceExhausted",
    Code.FAILED_PRECONDITION: "FailedPrecondition",
    Code.OUT_OF_RANGE: "OutOfRange",
    Code.UNAVAILABLE: "Unavailable",
    Code.DATA_LOSS: "DataLoss",
    Code.UNAUTHENTICATED: "Unauthenticated",
}


class _Events(NamedTuple):
    """A watcher's events, queued by the apply, built into a response when sent."""

    watcher: Watcher
    events: list[Event]
    revision: int
    """The header's revision: the store's when the events were delivered (etcd's
    ``WatchResponse.Revision``)."""


def go_status_text(exc: EtcdError) -> str:
    """``exc`` as Go's ``status.Error(...).Error()`` prints it (etcd puts that text in
    a refused watch's ``cancel_reason``)."""
    return f"rpc error: code = {_GO_CODES[exc.code]} desc = {exc.message}"


class WatchStream:
    """The watches of one stream and the queue of responses they produce.

    ``context``: the call's (gRPC's ``ServicerContext``, or the gateway's stand-in
    carrying the HTTP request's token): whose permissions a create is checked against.
    """

    def __init__(
        self,
        node: StoreNode,
        context: Any,
        *,
        progress_interval: float,
        fragment_bytes: int,
    ) -> None:
        self.node = node
        self.context = context
        self.headers = Headers(node)
        self.progress_interval = progress_interval
        self.fragment_bytes = fragment_bytes
        self.watchers: dict[int, Watcher] = {}
        self._slow: dict[int, Watcher] = {}
        """Watchers whose events the full queue refused, to resume when it has room."""
        self._next_id = 0
        self._queue: asyncio.Queue[rpcpb.WatchResponse | _Events | None] = asyncio.Queue()
        self._drained = asyncio.Event()

    # --- requests --------------------------------------------------------------------------

    def handle(self, req: rpcpb.WatchRequest) -> None:
        """One request of the stream; its answers (if any) join the queue."""
        which = req.WhichOneof("request_union")
        if which == "create_request":
            self._create(req.create_request)
        elif which == "cancel_request":
            wid = req.cancel_request.watch_id
            found = self.watchers.pop(wid, None)
            self._slow.pop(wid, None)
            if found is not None:
                self.node.hub.cancel(found)
                self._respond(watch_id=wid, canceled=True)
        elif which == "progress_request":
            self._respond(watch_id=INVALID_WATCH_ID)
        # Anything else (an empty request) is skipped, as etcd skips it.

    def _create(self, cr: rpcpb.WatchCreateRequest) -> None:
        key = cr.key or b"\0"
        try:
            require(self.node, self.context, key, cr.range_end, write=False)
        except EtcdError as exc:
            self._refuse(go_status_text(exc))
            return
        if cr.range_end and cr.range_end != b"\0" and key >= cr.range_end:
            self._refuse(RANGE_EMPTY)
            return
        if cr.watch_id:
            wid = cr.watch_id
            if wid in self.watchers:
                self._refuse(DUPLICATE_ID)
                return
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            wid, self._next_id = self._next_id, self._next_id + 1
        filters = set(cr.filters)
        watcher = Watcher(
            wid,
            key,
            cr.range_end,
            self._sink,
            prev_kv=cr.prev_kv,
            no_put=rpcpb.WatchCreateRequest.NOPUT in filters,
            no_delete=rpcpb.WatchCreateRequest.NODELETE in filters,
            progress_notify=cr.progress_notify,
            fragment=cr.fragment,
            compacted=self._compacted,
        )
        self._respond(watch_id=wid, created=True)
        # Kept even when compacted at once, as etcd's watch stream keeps the ID: it stays
        # taken, and a cancel of it is answered.
        self.watchers[wid] = watcher
        self._compacted(watcher, self.node.hub.watch(watcher, cr.start_revision))

    def _compacted(self, watcher: Watcher, revision: int) -> None:
        """Cancel ``watcher`` for history compacted at ``revision`` (if not 0): as etcd's
        sendLoop answers mvcc's compacted WatchResponse, a header for revision 0
        (wresp.Revision is unset), no cancel reason."""
        if revision:
            resp = rpcpb.WatchResponse(
                watch_id=watcher.id, canceled=True, compact_revision=revision
            )
            self.headers.fill(resp.header, 0)
            self._queue.put_nowait(resp)

    def _refuse(self, reason: str) -> None:
        self._respond(watch_id=INVALID_WATCH_ID, created=True, canceled=True, cancel_reason=reason)

    # --- responses -------------------------------------------------------------------------

    def _respond(self, **fields: Any) -> None:
        resp = rpcpb.WatchResponse(**fields)
        self.headers.fill(resp.header)
        self._queue.put_nowait(resp)

    def _sink(self, watcher: Watcher, events: list[Event]) -> bool:
        # Called inside the apply: only queue the events with the revision they answer
        # for. The response is built when the stream sends it (as etcd's apply hands
        # events to the watch stream's goroutine), so the apply is not held by the
        # building of every watcher's response.
        if self._queue.qsize() >= MAX_QUEUED_EVENTS:
            self._slow[watcher.id] = watcher
            return False
        self._queue.put_nowait(_Events(watcher, events, self.node.sm.kv.revision))
        return True

    def _response(self, batch: _Events, events: list[Event]) -> rpcpb.WatchResponse:
        resp = rpcpb.WatchResponse(watch_id=batch.watcher.id)
        self.headers.fill(resp.header, batch.revision)
        resp.events.extend(events)
        return resp

    async def _long(self, batch: _Events) -> AsyncIterator[rpcpb.WatchResponse]:
        """A long ``batch`` (a ranged delete's revision) or one of a ``fragment`` watch,
        as the response or its parts. Long lists are copied (and then dropped) in
        slices of :data:`~keel_store.mvcc.keyspace.BUSY_EVERY` events with the loop
        free in between: copying 400k events took 0.29 s in one piece."""
        events = batch.events
        resp = self._response(batch, events[:BUSY_EVERY])
        for start in range(BUSY_EVERY, len(events), BUSY_EVERY):
            await asyncio.sleep(0)
            resp.events.extend(events[start : start + BUSY_EVERY])
        # The list is this watcher's own; the last holder of a revision's events frees
        # them (400k: 125 ms in one piece), so drop them a slice at a time too.
        while len(events) > BUSY_EVERY:
            del events[-BUSY_EVERY:]
            await asyncio.sleep(0)
        if batch.watcher.fragment:
            for part in fragments(resp, self.fragment_bytes):
                yield part
        else:
            yield resp

    def _resume(self) -> None:
        """Give the slow watchers what they missed, as far as the queue takes it."""
        slow, self._slow = self._slow, {}
        for watcher in slow.values():
            self._compacted(watcher, self.node.hub.resume(watcher))

    async def _progress(self) -> None:
        # Watches created with progress_notify hear the current revision regularly, so
        # a quiet watcher knows it has not missed anything up to there.
        while True:
            await asyncio.sleep(self.progress_interval)
            for w in list(self.watchers.values()):
                if w.progress_notify and w.next_revision > self.node.sm.kv.revision:
                    self._respond(watch_id=w.id)

    async def _read(self, requests: AsyncIterator[rpcpb.WatchRequest]) -> None:
        count = 0
        try:
            async for req in requests:
                self.handle(req)
                count += 1
                if self._queue.qsize() >= MAX_QUEUED:
                    await self._room()
                elif count % MAX_QUEUED == 0:
                    await asyncio.sleep(0)  # a burst of requests does not hold the loop
        except Exception:
            # The client's side failed (not merely closed): the stream ends, as etcd's
            # ends when its receive loop returns an error.
            self._queue.put_nowait(None)

    async def _room(self) -> None:
        """Wait until the client has taken enough answers: a client that sends
        requests without reading the answers stops being read (gRPC's flow control then
        stops it), as etcd's receive loop blocks on its full control channel."""
        while self._queue.qsize() >= MAX_QUEUED:
            self._drained.clear()
            await self._drained.wait()

    async def run(
        self, requests: AsyncIterator[rpcpb.WatchRequest]
    ) -> AsyncIterator[rpcpb.WatchResponse]:
        """The responses, until the client goes away (the consumer stops) or its
        requests fail; the watches are cancelled then."""
        reader = asyncio.create_task(self._read(requests))
        notifier = asyncio.create_task(self._progress())
        try:
            while True:
                if self._slow and self._queue.qsize() < RESUME_BELOW:
                    self._resume()
                item = await self._queue.get()
                if item is None:
                    return
                if self._queue.qsize() < MAX_QUEUED:
                    self._drained.set()
                if not isinstance(item, _Events):
                    yield item
                elif len(item.events) <= BUSY_EVERY and not item.watcher.fragment:
                    yield self._response(item, item.events)
                else:
                    async for resp in self._long(item):
                        yield resp
        finally:
            for task in (reader, notifier):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for w in self.watchers.values():
                self.node.hub.cancel(w)
            self.watchers.clear()
            self._slow.clear()


class WatchService(rpcgrpc.WatchServicer):  # type: ignore[misc]
    """Watch: many watches per stream, from any revision, filters, prev_kv, progress."""

    def __init__(
        self,
        node: StoreNode,
        progress_interval: float = 600.0,
        fragment_bytes: int = validate.DEFAULT_MAX_REQUEST_BYTES + validate.GRPC_OVERHEAD_BYTES,
    ) -> None:
        self.node = node
        self.progress_interval = progress_interval
        """etcd's ``--experimental-watch-progress-notify-interval`` (10 minutes)."""
        self.fragment_bytes = fragment_bytes
        """Watches created with ``fragment`` get responses split under this size
        (etcd: ``--max-request-bytes`` plus gRPC's 512 KiB overhead allowance)."""

    def stream(self, context: Any) -> WatchStream:
        """A new stream's state, for a call made with ``context``."""
        return WatchStream(
            self.node,
            context,
            progress_interval=self.progress_interval,
            fragment_bytes=self.fragment_bytes,
        )

    async def Watch(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async with self.node.leader_gate.stream(context):
            async for resp in self.stream(context).run(request_iterator):
                yield resp
