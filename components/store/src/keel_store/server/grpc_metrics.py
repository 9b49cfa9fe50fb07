"""Counting gRPC calls and bytes as etcd does (go-grpc-prometheus and its codec).

``instrument(server, stats)`` is handed to the generated ``add_*Servicer_to_server``
functions in place of the server: it wraps each method's handler so that a call
counts ``grpc_server_started_total`` and ``grpc_server_handled_total`` (by status
code), and the request deserializer and response serializer count the bytes of
every message (``etcd_network_client_grpc_{received,sent}_bytes_total``, which etcd
counts in its codec). No interceptor (they add a task per call in grpc.aio) and no
lock: everything runs on the event loop, a count is an attribute increment.

With ``--metrics=extensive`` (``GrpcStats(handling_time=True)``) each call's time from
its start to its handler's end also goes into ``grpc_server_handling_seconds``, as
etcd turns on go-grpc-prometheus's handling-time histogram.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from keel_store.server.stats import Histogram

HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Prometheus's default buckets, which go-grpc-prometheus's histogram uses."""

CODE_NAMES: dict[int, str] = {
    grpc.StatusCode.OK.value[0]: "OK",
    grpc.StatusCode.CANCELLED.value[0]: "Canceled",
    grpc.StatusCode.UNKNOWN.value[0]: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT.value[0]: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND.value[0]: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS.value[0]: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED.value[0]: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: "FailedPrecondition",
    grpc.StatusCode.ABORTED.value[0]: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE.value[0]: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED.value[0]: "Unimplemented",
    grpc.StatusCode.INTERNAL.value[0]: "Internal",
    grpc.StatusCode.UNAVAILABLE.value[0]: "Unavailable",
    grpc.StatusCode.DATA_LOSS.value[0]: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED.value[0]: "Unauthenticated",
}
"""Go's ``codes.Code.String()``: the ``grpc_code`` label values."""

_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class MethodStats:
    """Calls of one method: started, and handled per ``grpc_code`` (all pre-set to 0)."""

    __slots__ = ("handled", "handling", "method", "service", "started", "type")

    def __init__(
        self, service: str, method: str, grpc_type: str, handling_time: bool = False
    ) -> None:
        self.service = service
        self.method = method
        self.type = grpc_type
        self.started = 0
        self.handled = dict.fromkeys(CODE_NAMES.values(), 0)
        self.handling = Histogram(HANDLING_BUCKETS) if handling_time else None

    def failed(self, context: Any, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.handled["Canceled"] += 1
            return
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            code = code.value[0]
        name = CODE_NAMES.get(code) if code else None
        self.handled[name if name and name != "OK" else "Unknown"] += 1


class GrpcStats:
    """Bytes through the codec, and per-method call counts."""

    def __init__(self, handling_time: bool = False) -> None:
        self.sent_bytes = 0
        self.received_bytes = 0
        self.methods: list[MethodStats] = []
        self.handling_time = handling_time
        """``--metrics=extensive``: also time every call."""

    def deserializer(self, inner: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def deserialize(data: bytes) -> Any:
            self.received_bytes += len(data)
            return inner(data)

        return deserialize

    def serializer(self, inner: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
        def serialize(message: Any) -> bytes:
            data = inner(message)
            self.sent_bytes += len(data)
            return data

        return serialize


def _count_call(behavior: Callable[..., Any], m: MethodStats) -> Callable[..., Any]:
    """``behavior`` counted in ``m``; timed too when ``m.handling`` is kept
    (``--metrics=extensive``: two clock reads per call, nothing otherwise)."""
    h = m.handling
    clock = time.perf_counter
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            m.started += 1
            start = clock() if h is not None else 0.0
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                m.failed(context, exc)
                if h is not None:
                    h.observe(clock() - start)
                raise
            m.handled["OK"] += 1
            if h is not None:
                h.observe(clock() - start)

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def call(request: Any, context: Any) -> Any:
            m.started += 1
            start = clock() if h is not None else 0.0
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                m.failed(context, exc)
                if h is not None:
                    h.observe(clock() - start)
                raise
            m.handled["OK"] += 1
            if h is not None:
                h.observe(clock() - start)
            return response

        return call

    def plain(request: Any, context: Any) -> Any:
        m.started += 1
        start = clock() if h is not None else 0.0
        try:
            response = behavior(request, context)
        except BaseException as exc:
            m.failed(context, exc)
            if h is not None:
                h.observe(clock() - start)
            raise
        m.handled["OK"] += 1
        if h is not None:
            h.observe(clock() - start)
        return response

    return plain


class instrument:
    """Stands in for a grpc server while the generated code registers a service."""

    def __init__(self, server: Any, stats: GrpcStats) -> None:
        self.server = server
        self.stats = stats

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the generated code passes the same handlers to the call below."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {}
        for method, h in sorted(handlers.items()):
            m = MethodStats(
                service,
                method,
                _TYPES[(h.request_streaming, h.response_streaming)],
                self.stats.handling_time,
            )
            self.stats.methods.append(m)
            kind = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")[
                2 * h.request_streaming + h.response_streaming
            ]
            wrapped[method] = h._replace(
                request_deserializer=self.stats.deserializer(h.request_deserializer),
                response_serializer=self.stats.serializer(h.response_serializer),
                **{kind: _count_call(getattr(h, kind), m)},
            )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self.server.add_registered_method_handlers(service, wrapped)
