"""keel-store's gRPC server: grpcio's servicer API, served by ``h2conn`` on the event loop.

grpcio's own asyncio server spends ~260 us of CPU on every call on this project's
machines (its C core runs a poller thread that hands each event to the loop; Cython
wraps every operation), more than the whole store does for a put, and a no-op server
built on it reaches a third of etcd's rate (docs/store.md). This server keeps the
interface the services and the generated ``add_*Servicer_to_server`` functions use:
method handlers (``grpc.RpcMethodHandler``) with their (de)serializers, a
``ServicerContext`` with ``invocation_metadata``/``abort``/``code``, async handlers
and async-generator streams; and speaks HTTP/2 itself (``h2conn``), so a call costs
a task and a few list appends. grpcio stays the client library.

Like etcd, the client port also answers HTTP/1.1 (the JSON gateway, ``/health``...):
a connection that does not open with the HTTP/2 preface is handed to ``http1``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, NoReturn

import grpc

from keel_store.server import h2wire as w
from keel_store.server.h2conn import DEFAULT_OPTIONS, Connection, Options, Stream

log = logging.getLogger(__name__)

Http1Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _code_int(code: grpc.StatusCode | int) -> int:
    return code.value[0] if isinstance(code, grpc.StatusCode) else int(code)


class AbortError(Exception):
    """Raised by ``ServicerContext.abort``: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode | int, details: str) -> None:
        super().__init__(details)
        self.code = _code_int(code)
        self.details = details


class _CallDetails:
    """What a ``grpc.GenericRpcHandler.service`` is asked with."""

    def __init__(self, method: str, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


_RESERVED = frozenset(
    ("te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding")
)


class ServicerContext:
    """The part of ``grpc.aio.ServicerContext`` a keel-store service can use."""

    __slots__ = ("_cancelled_with", "_code", "_details", "_metadata", "_serialize", "_stream")

    def __init__(self, stream: Stream, serialize: Callable[[Any], bytes] | None = None) -> None:
        self._stream = stream
        self._serialize = serialize
        self._code: int | None = None
        self._details = ""
        self._metadata: tuple[tuple[str, Any], ...] | None = None
        self._cancelled_with: tuple[int, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        """The request's custom metadata as (key, value); ``-bin`` values as bytes."""
        if self._metadata is None:
            self._metadata = metadata_of(self._stream.headers)
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        """End the call with ``code`` and ``details`` (raises ``AbortError``)."""
        self._code = _code_int(code)
        self._details = details
        raise AbortError(code, details)

    def reply(self, response: Any) -> None:
        """Send ``response`` and end a unary call with OK, from whatever code knows the
        answer first (the store's apply, inside another task's step): the client need
        not wait for this call's task to resume and return. The handler then returns
        as usual; nothing more is sent. Not part of grpcio's API.

        The frames leave with the connection's next flush, at the end of this step of
        the event loop, with every other answer the step produced for the connection
        (as grpc-go's writer batches what is queued): with 64 concurrent puts, 10-13%
        more puts/s and 15% less CPU per put (client included) than a write per answer."""
        stream = self._stream
        if self._serialize is None or self._code or stream.local_closed or stream.reset:
            return
        stream.send(self._serialize(response))
        stream.finish(0)

    def cancel_with(self, code: grpc.StatusCode, details: str) -> None:
        """Cancel the call's handler from outside it and end the call with ``code`` and
        ``details`` (etcd's ``cancellableContext.Cancel(err)``: a stream cut off for
        want of a leader). Not part of grpcio's API."""
        task = self._stream.task
        if task is None or task.done() or self.done():
            return
        self._cancelled_with = (_code_int(code), details)
        task.cancel()

    def set_code(self, code: grpc.StatusCode) -> None:
        """The status to end with once the handler returns."""
        self._code = _code_int(code)

    def set_details(self, details: str) -> None:
        """The status message to end with once the handler returns."""
        self._details = details

    def code(self) -> int | None:
        """The status code set so far (an int, as grpcio's aio context returns)."""
        return self._code

    def details(self) -> str:
        """The status message set so far."""
        return self._details

    def peer(self) -> str:
        """``ipv4:host:port`` of the client."""
        return self._stream.conn.peer

    def time_remaining(self) -> float | None:
        """Seconds until the client's deadline, None without one."""
        timer = self._stream.timer
        return None if timer is None else max(0.0, timer.when() - self._stream.conn.loop.time())

    def cancelled(self) -> bool:
        """The client went away or reset the call."""
        return self._stream.reset

    def done(self) -> bool:
        """The response has ended."""
        return self._stream.local_closed or self._stream.reset


_METADATA: dict[int, tuple[list[tuple[str, str]], tuple[tuple[str, Any], ...]]] = {}
"""id of a header list -> (that list, its metadata). The HPACK decoder hands out the same
list for every request with the same header block (``h2headers``), so most requests
find theirs here: 0.49 instead of 1.81 us for the token lookup (measured on a busy
machine), paid by every request since the token
check also runs with auth off. The list is kept in the value, so its id is not reused
while it is cached."""
_METADATA_MAX = 256


def metadata_of(headers: list[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    """Custom metadata from request headers: no pseudo-headers, no transport headers."""
    cached = _METADATA.get(id(headers))
    if cached is not None and cached[0] is headers:
        return cached[1]
    metadata = _metadata_of(headers)
    if len(_METADATA) >= _METADATA_MAX:
        _METADATA.clear()
    _METADATA[id(headers)] = (headers, metadata)
    return metadata


def _metadata_of(headers: list[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    import base64  # noqa: PLC0415 (rare)

    out: list[tuple[str, Any]] = []
    for k, v in headers:
        if k[:1] == ":" or k in _RESERVED:
            continue
        if k.endswith("-bin"):
            out.append((k, base64.b64decode(v + "=" * (-len(v) % 4))))
        else:
            out.append((k, v))
    return tuple(out)


class GrpcServer:
    """Serves registered gRPC methods on TCP listeners, plaintext or TLS.

    Used like ``grpc.aio.server()``: the generated ``add_*Servicer_to_server``
    functions register into it, ``add_insecure_port``/``add_secure_port`` name the
    listeners, ``await start()`` opens them and ``await stop(grace)`` ends them.
    """

    def __init__(
        self,
        *,
        max_receive_message_length: int,
        http1: Http1Handler | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> None:
        self.max_receive_message_length = max_receive_message_length
        self.options = options
        self.http1_handler = http1
        self._methods: dict[str, Any] = {}
        self._generic: list[Any] = []
        self._ports: list[tuple[str, int, ssl.SSLContext | None]] = []
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._http1_transports: set[asyncio.Transport] = set()
        self.unary_calls = 0
        """Unary calls started and not finished (streams, e.g. watches, not counted)."""
        self._complete: list[tuple[Stream, Any]] = []
        """Unary calls whose request the current read completed, not started yet."""
        self._last_conn: Connection | None = None
        """The connection of the unary call started last."""

    # --- registration (the generated code's calls) ---------------------------------------

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Handlers asked by method name when a path is not registered below."""
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """``grpc.RpcMethodHandler`` per method of ``service``."""
        for method, handler in handlers.items():
            self._methods[f"/{service}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        """Listen on ``host:port`` (``[v6]:port``) without TLS once started."""
        host, port = _split(address)
        self._ports.append((host, port, None))
        return port

    def add_secure_port(self, address: str, context: ssl.SSLContext) -> int:
        """Listen on ``host:port`` with TLS (ALPN h2 for gRPC, http/1.1 for the gateway)."""
        host, port = _split(address)
        self._ports.append((host, port, context))
        return port

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open every listener (OSError if an address is taken)."""
        loop = asyncio.get_running_loop()
        for host, port, context in self._ports:
            server = await loop.create_server(
                self._connection, host or None, port, ssl=context, reuse_address=True, backlog=1024
            )
            self._servers.append(server)

    def _connection(self) -> Connection:
        conn = Connection(self, self.max_receive_message_length, self.options)
        self._connections.add(conn)
        return conn

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; let calls in flight end for ``grace`` seconds, then cut them."""
        for server in self._servers:
            server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.go_away()
        if grace:
            loop = asyncio.get_running_loop()
            until = loop.time() + grace
            while any(not c.closed for c in self._connections) and loop.time() < until:
                await asyncio.sleep(0.02)
        tasks = [
            s.task
            for c in self._connections
            for s in c.streams.values()
            if s.task is not None and not s.task.done()
        ]
        for conn in list(self._connections):
            conn.abort()
        for transport in self._http1_transports:
            transport.close()  # else Server.wait_closed (Python >= 3.12.1) waits for them
        self._http1_transports.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # --- h2conn.Dispatcher ---------------------------------------------------------------

    def connection_closed(self, conn: Connection) -> None:
        """Forget a connection that closed or became HTTP/1.1."""
        self._connections.discard(conn)

    def http1(self, transport: asyncio.Transport, data: bytes) -> bool:
        """Hand a non-HTTP/2 connection to the HTTP/1.1 handler as a stream pair."""
        if self.http1_handler is None:
            return False
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, self.http1_handler, loop=loop)
        self._http1_transports = {t for t in self._http1_transports if not t.is_closing()}
        self._http1_transports.add(transport)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
        return True

    def open_stream(self, stream: Stream) -> None:
        """Find the method of a new request and start its call."""
        path = stream.header(":path") or ""
        if stream.header(":method") != "POST":
            return self._http_error(stream, b"405")
        content_type = stream.header("content-type") or ""
        if not content_type.startswith("application/grpc"):
            return self._http_error(stream, b"415")
        handler = self._methods.get(path)
        if handler is None:
            handler = self._generic_lookup(stream, path)
            if handler is None:
                return self._unknown(stream, path)
        timeout = stream.header("grpc-timeout")
        if timeout is not None:
            seconds = w.parse_timeout(timeout)
            if seconds is not None:
                stream.timer = stream.conn.loop.call_later(seconds, _expire, stream)
        if handler.request_streaming:
            stream.flow_on_read = True
            stream.task = stream.conn.loop.create_task(self._call(stream, handler))
        else:
            stream.on_end = lambda: self._start(stream, handler)
        return None

    def _start(self, stream: Stream, handler: Any) -> None:
        if stream.local_closed or stream.reset:
            return
        if handler.response_streaming:
            stream.task = stream.conn.loop.create_task(self._call(stream, handler))
            return
        self.unary_calls += 1
        self._complete.append((stream, handler))
        if not stream.conn.in_receive:  # not completed by a read (not seen): start now
            self.received(stream.conn)

    def received(self, conn: Connection) -> None:
        """Start the unary calls whose requests this read completed. A lone call runs
        up to its first wait in this callback (as Python 3.12's eager tasks would): a
        put that needs no wait (one member, a fast disk) is answered before the loop
        turns again. Others start as tasks on the next turn, as before.

        Lone: the only call in progress, and from the connection of the call before it,
        as from a client that waits for each answer before its next request. Requests
        that other connections sent meanwhile may be waiting in sockets this turn of
        the loop has not read yet, uncounted: under etcdctl check perf l (500
        connections) taking those calls as lone answered 30% of the requests one
        WAL sync each and cost a quarter of the rate."""
        if not self._complete:  # a read of other frames (a window update, a ping)
            return
        complete, self._complete = self._complete, []
        alone = len(complete) == 1 and self.unary_calls == 1 and conn is self._last_conn
        self._last_conn = conn
        for stream, handler in complete:
            if stream.local_closed or stream.reset:
                self.unary_calls -= 1
            elif alone:
                self._run_eagerly(stream, handler)
            else:
                stream.task = stream.conn.loop.create_task(self._call(stream, handler))
                stream.task.add_done_callback(self._unary_done)

    def _run_eagerly(self, stream: Stream, handler: Any) -> None:
        call = self._call(stream, handler)
        try:
            waits_for = call.send(None)
        except StopIteration:
            self.unary_calls -= 1
            return
        except BaseException:
            self.unary_calls -= 1
            raise
        stream.task = stream.conn.loop.create_task(_resumed(call, waits_for))
        stream.task.add_done_callback(self._unary_done)

    def _unary_done(self, _: asyncio.Task[None]) -> None:
        self.unary_calls -= 1

    def _generic_lookup(self, stream: Stream, path: str) -> Any:
        if not self._generic:
            return None
        details = _CallDetails(path, metadata_of(stream.headers))
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def _unknown(self, stream: Stream, path: str) -> None:
        service, _, method = path.lstrip("/").rpartition("/")
        if any(p.startswith(f"/{service}/") for p in self._methods):
            message = f"unknown method {method} for service {service}"
        else:
            message = f"unknown service {service or path}"
        stream.finish(w.UNIMPLEMENTED, message)

    @staticmethod
    def _http_error(stream: Stream, status: bytes) -> None:
        stream.end_with(
            w.literal(b":status", status, 8)
            + w.grpc_status_block(
                w.INTERNAL if status == b"405" else w.UNIMPLEMENTED,
                f"HTTP status {status.decode()}",
            )
        )

    # --- a call ------------------------------------------------------------------------------

    async def _call(self, stream: Stream, handler: Any) -> None:
        context = ServicerContext(stream, handler.response_serializer)
        try:
            if handler.request_streaming:
                request: Any = _requests(stream, handler.request_deserializer)
            else:
                message = stream.inbox.popleft() if stream.inbox else None
                if message is None:
                    stream.finish(w.INTERNAL, "grpc: no request message")
                    return
                try:
                    request = handler.request_deserializer(message)
                except Exception as exc:
                    stream.finish(w.INTERNAL, f"grpc: error unmarshalling request: {exc}")
                    return
            serialize = handler.response_serializer
            if handler.response_streaming:
                behavior = (
                    handler.stream_stream if handler.request_streaming else handler.unary_stream
                )
                responses = behavior(request, context)
                if inspect.isawaitable(responses):
                    responses = await responses
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        stream.send(serialize(response))
                        if stream.pending or stream.conn.paused:
                            await stream.flushed()
                else:
                    for response in responses:
                        stream.send(serialize(response))
            else:
                behavior = (
                    handler.stream_unary if handler.request_streaming else handler.unary_unary
                )
                response = behavior(request, context)
                if inspect.isawaitable(response):
                    response = await response
                if stream.local_closed:  # answered already (ServicerContext.reply)
                    return
                if not context._code:  # grpcio drops the message of a failed call
                    stream.send(serialize(response))
            code = context._code or 0
            stream.finish(code, context._details if code else "")
        except AbortError as exc:
            stream.finish(exc.code, exc.details)
        except asyncio.CancelledError:
            if context._cancelled_with is not None:
                stream.finish(*context._cancelled_with)
            elif stream.expired:
                stream.finish(w.DEADLINE_EXCEEDED, "context deadline exceeded")
            elif not stream.reset:
                stream.finish(w.CANCELLED, "context canceled")
        except Exception as exc:
            if stream.reset or stream.conn.closed:
                return
            if context._code:  # set_code, then raise: grpcio ends with the code set
                stream.finish(context._code, context._details)
                return
            log.exception("gRPC call %s failed", stream.header(":path"))
            stream.finish(w.UNKNOWN, f"{type(exc).__name__}: {exc}")


async def _resumed(call: Coroutine[Any, Any, None], waits_for: Any) -> None:
    """A task's body for a call started outside any task and now waiting for
    ``waits_for`` (what its first step yielded)."""
    await _Resume(call, waits_for)


class _Resume:
    """Drive a started coroutine as the task awaiting this does its own: yield what it
    waits for, send results in, throw the task's exceptions (a cancel) into it."""

    __slots__ = ("call", "waits_for")

    def __init__(self, call: Coroutine[Any, Any, None], waits_for: Any) -> None:
        self.call = call
        self.waits_for = waits_for

    def __await__(self) -> Generator[Any, Any, None]:
        call, waits_for = self.call, self.waits_for
        while True:
            try:
                value = yield waits_for
            except GeneratorExit:  # the task is closed unfinished: close the call too
                call.close()
                raise
            except BaseException as exc:
                try:
                    waits_for = call.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waits_for = call.send(value)
                except StopIteration:
                    return


async def _requests(stream: Stream, deserialize: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    """A streaming call's request iterator; a message that does not decode ends the call."""
    while True:
        message = await stream.read()
        if message is None:
            return
        try:
            request = deserialize(message)
        except Exception as exc:
            stream.finish(w.INTERNAL, f"grpc: error unmarshalling request: {exc}")
            if stream.task is not None:
                stream.task.cancel()
            return
        yield request


def _expire(stream: Stream) -> None:
    stream.timer = None
    stream.expired = True
    if stream.task is not None and not stream.task.done():
        stream.task.cancel()
    else:
        stream.finish(w.DEADLINE_EXCEEDED, "context deadline exceeded")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def server_ssl_context(
    cert_file: str, key_file: str, trusted_ca_file: str = "", client_cert_auth: bool = False
) -> ssl.SSLContext:
    """TLS for the client port: ALPN h2 (gRPC) and http/1.1 (gateway), as etcd offers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if trusted_ca_file:
        context.load_verify_locations(trusted_ca_file)
    if client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
