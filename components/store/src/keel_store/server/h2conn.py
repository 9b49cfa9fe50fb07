"""One HTTP/2 connection of keel-store's gRPC server: frames, streams, flow control.

An ``asyncio.Protocol``: frames are parsed straight from ``data_received`` and every
frame written while handling them (or from calls finishing in the same loop iteration)
goes out in one ``transport.write``. The connection knows nothing of gRPC methods; it
hands each new stream to its ``Dispatcher`` (``grpc_server.GrpcServer``) and offers
the calls what they need: whole messages in, messages and trailers out, under both
peers' flow-control windows.

A connection whose first bytes are not the HTTP/2 preface is passed, bytes and all,
to the dispatcher's HTTP/1.1 handler (the JSON gateway), as etcd's cmux does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

import hpack

from keel_store.server import h2wire as w
from keel_store.server import tls
from keel_store.server.h2headers import HeaderDecoder

log = logging.getLogger(__name__)

OUR_INITIAL_WINDOW = 4 << 20
"""Stream window we grant (SETTINGS_INITIAL_WINDOW_SIZE); replenished at half."""

OUR_CONNECTION_WINDOW = 16 << 20
"""Connection window we grant; replenished once a quarter of it was used."""

MAX_HEADER_LIST = 1 << 20

UNLIMITED_STREAMS = 2**32 - 1
"""etcd's default ``--max-concurrent-streams`` (Go's math.MaxUint32)."""

MAX_PING_STRIKES = 2
"""Pings a client may send too early before GOAWAY ENHANCE_YOUR_CALM (grpc-go's)."""

IDLE_PING_PERIOD = 7200.0
"""Without streams, a ping less than this after the previous one is a strike (grpc-go's
defaultPingTimeout: etcd does not permit keepalive pings without streams)."""

KEEPALIVE_PING = b"\0" * 8
"""Payload of our keepalive PING (grpc-go's is zeros too)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-connection limits: etcd's ``--max-concurrent-streams`` and the
    ``--grpc-keepalive-*`` flags, as grpc-go applies them."""

    max_streams: int = UNLIMITED_STREAMS
    """SETTINGS_MAX_CONCURRENT_STREAMS; a stream beyond it is refused (0: no limit,
    and the setting is not sent, as grpc-go)."""
    ping_min_time: float = 5.0
    """Client pings closer together than this (with streams open) are strikes."""
    keepalive_interval: float = 7200.0
    """We ping a connection from which nothing was read for this long..."""
    keepalive_timeout: float = 20.0
    """...and close it if still nothing was read this long after the ping."""


DEFAULT_OPTIONS = Options()


class Dispatcher(Protocol):
    """What a connection needs from the server (``grpc_server.GrpcServer``)."""

    def open_stream(self, stream: Stream) -> None:
        """Headers of a new request are complete: start (or refuse) its call."""

    def http1(self, transport: asyncio.Transport, data: bytes) -> bool:
        """Take over a connection that is not HTTP/2; False: nobody serves HTTP/1.1."""

    def connection_closed(self, conn: Connection) -> None:
        """``conn`` is gone (closed, or handed over to HTTP/1.1)."""

    def received(self, conn: Connection) -> None:
        """The frames of one read from ``conn`` were handled (its writes leave after)."""


class StreamError(Exception):
    """A request message the call cannot take: ends the stream with a gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One request: its headers, received messages, and the state of our response."""

    __slots__ = (
        "buffer",
        "conn",
        "expired",
        "flow_on_read",
        "headers",
        "headers_sent",
        "id",
        "inbox",
        "local_closed",
        "max_message",
        "on_end",
        "pending",
        "recv_unacked",
        "remote_closed",
        "reset",
        "send_window",
        "task",
        "timer",
        "trailers",
        "waiter",
        "writable",
    )

    def __init__(self, conn: Connection, stream_id: int, headers: list[tuple[str, str]]) -> None:
        self.conn = conn
        self.id = stream_id
        self.headers = headers
        self.buffer = bytearray()
        self.inbox: collections.deque[bytes | None] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.on_end: Callable[[], None] | None = None
        self.flow_on_read = False
        self.max_message = 4 << 20
        self.remote_closed = False
        self.local_closed = False
        self.reset = False
        self.expired = False
        self.headers_sent = False
        self.send_window = conn.peer_initial_window
        self.pending: collections.deque[memoryview] = collections.deque()
        """Message bytes waiting for the windows: views, so that cutting a frame off
        a large message does not copy the rest of it."""
        self.trailers: bytes | None = None
        self.writable: asyncio.Future[None] | None = None
        self.recv_unacked = 0
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def header(self, name: str) -> str | None:
        """The first value of a request header (names are lower case)."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    # --- receiving ------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        """DATA payload: split it into gRPC messages (5-byte prefix each).

        A message spread over many frames is gathered in a bytearray (amortised appends:
        a 16 MiB request costs what its bytes cost, not their square).
        """
        buf: bytes | bytearray
        if self.buffer:
            self.buffer += data
            buf = self.buffer
        else:
            buf = data
        pos = 0
        n = len(buf)
        while n - pos >= 5:
            length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if length > self.max_message:
                raise StreamError(
                    w.RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({length} vs. {self.max_message})",
                )
            end = pos + 5 + length
            if end > n:
                break
            if buf[pos]:
                raise StreamError(
                    w.UNIMPLEMENTED,
                    "grpc: Decompressor is not installed for grpc-encoding "
                    f'"{self.header("grpc-encoding") or "identity"}"',
                )
            self.inbox.append(bytes(buf[pos + 5 : end]))
            pos = end
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)
        if buf is self.buffer:
            del self.buffer[:pos]
        elif pos < n:
            self.buffer = bytearray(buf[pos:])

    def _end(self) -> None:
        self.remote_closed = True
        self.inbox.append(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end()

    async def read(self) -> bytes | None:
        """The next request message, None once the client half-closed."""
        while not self.inbox:
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        message = self.inbox.popleft()
        if message is None:
            self.inbox.appendleft(None)  # every later read ends too
        elif (
            self.flow_on_read
            and not self.inbox
            and self.recv_unacked >= OUR_INITIAL_WINDOW // 2
            and not (self.remote_closed or self.local_closed or self.reset)
        ):
            # Streaming requests get window back once the handler has read what came:
            # a client cannot queue more than a window ahead of a slow handler.
            self.conn.write(w.window_update(self.id, self.recv_unacked))
            self.recv_unacked = 0
        return message

    # --- sending --------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """One gRPC message (prefix added here), queued under the flow-control windows."""
        if self.local_closed or self.reset:
            return
        conn = self.conn
        conn.sent_stream_frames = True
        if not self.headers_sent:
            self.headers_sent = True
            conn.write(w.frame(w.HEADERS, w.END_HEADERS, self.id, w.RESPONSE_HEADERS))
        data = w.message_prefix(len(payload)) + payload
        if not self.pending and len(data) <= min(
            self.send_window, conn.send_window, conn.peer_max_frame
        ):
            self.send_window -= len(data)
            conn.send_window -= len(data)
            conn.write(w.frame(w.DATA, 0, self.id, data))
            return
        self.pending.append(memoryview(data))
        conn.drain(self)

    async def flushed(self) -> None:
        """Wait until everything sent so far left the flow-control queues and the transport."""
        while (self.pending or self.conn.paused) and not (self.reset or self.conn.closed):
            self.writable = self.conn.loop.create_future()
            try:
                await self.writable
            finally:
                self.writable = None

    def finish(self, code: int, message: str = "") -> None:
        """End the response with ``grpc-status`` (trailers-only if nothing was sent)."""
        if self.local_closed or self.reset:
            return
        self._stop_timer()
        status = w.TRAILERS_OK if code == 0 and not message else w.grpc_status_block(code, message)
        if not self.headers_sent:
            self.end_with(w.RESPONSE_HEADERS + status)
            return
        self.trailers = status
        if self.pending:
            return  # sent by drain once the data is out
        self._send_trailers()

    def _send_trailers(self) -> None:
        block, self.trailers = self.trailers, None
        assert block is not None
        self.end_with(block)

    def end_with(self, block: bytes) -> None:
        """Send ``block`` as the stream's last HEADERS frame (END_STREAM)."""
        self.headers_sent = True
        self.local_closed = True
        self.conn.sent_stream_frames = True
        self.conn.write(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, self.id, block))
        self.conn.closed_locally(self)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _wake_writer(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def _cancel(self) -> None:
        """The client reset the stream or the connection is gone: stop the call."""
        self.reset = True
        self._stop_timer()
        self.pending.clear()
        self._wake_writer()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection."""

    def __init__(
        self, dispatcher: Dispatcher, max_message: int, options: Options = DEFAULT_OPTIONS
    ) -> None:
        self.dispatcher = dispatcher
        self.max_message = max_message
        self.options = options
        self.max_streams = options.max_streams or UNLIMITED_STREAMS
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.preface = False
        self.decoder = HeaderDecoder(MAX_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.continuation: tuple[int, int, bytearray] | None = None
        self.peer_initial_window = w.DEFAULT_WINDOW
        self.peer_max_frame = w.DEFAULT_MAX_FRAME
        self.send_window = w.DEFAULT_WINDOW
        self.recv_unacked = 0
        self.blocked: dict[int, Stream] = {}
        self.out: list[bytes] = []
        self.flush_handle: asyncio.Handle | None = None
        self.in_receive = False
        self.paused = False
        self.closed = False
        self.going_away = False
        self.peer = ""
        # keepalive (grpc-go's http2Server.keepalive and handlePing)
        self.last_read = self.loop.time()
        """When data last came in (any frame counts, as in grpc-go)."""
        self.keepalive_handle: asyncio.TimerHandle | None = None
        self.keepalive_seen = self.last_read
        self.keepalive_outstanding = False
        self.keepalive_left = 0.0
        self.last_ping_at = -IDLE_PING_PERIOD
        self.ping_strikes = 0
        self.sent_stream_frames = False
        """HEADERS or DATA went out since the last client PING: that PING is no strike."""

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        if tls.refused(transport):  # a revoked or not allowed client certificate
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "http/1.1":
            self._hand_over(b"")
            return
        interval = self.options.keepalive_interval
        if interval > 0:
            self.keepalive_handle = self.loop.call_at(self.last_read + interval, self._keepalive)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_read = self.loop.time()
        self.in_receive = True
        try:
            self._receive(data)
        except _ConnectionError as exc:
            self._fail(exc.code, str(exc))
        finally:
            # Also after a failure: calls this read completed are started or, their
            # streams cancelled by the failure, dropped, not left for another read.
            self.dispatcher.received(self)
            self.in_receive = False
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_streams()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self._stop_keepalive()
        self.dispatcher.connection_closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self.streams.values()):
            if not stream.pending:
                stream._wake_writer()

    # --- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue bytes; they leave together at the end of this loop iteration."""
        self.out.append(data)
        if not self.in_receive and self.flush_handle is None:
            self.flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued now (a scheduled flush, if any, has nothing left to do)."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.out and self.transport is not None and not self.closed:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.transport.write(data)
        else:
            self.out.clear()

    def drain(self, stream: Stream) -> None:
        """Send what ``stream`` has queued as far as the windows allow."""
        pending = stream.pending
        while pending:
            allowed = min(stream.send_window, self.send_window, self.peer_max_frame)
            if allowed <= 0:
                self.blocked[stream.id] = stream
                return
            chunk = pending[0]
            if len(chunk) > allowed:
                pending[0] = chunk[allowed:]
                chunk = chunk[:allowed]
            else:
                pending.popleft()
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            self.write(w.frame(w.DATA, 0, stream.id, chunk))
            self.sent_stream_frames = True
        self.blocked.pop(stream.id, None)
        if stream.trailers is not None:
            stream._send_trailers()
        if not self.paused:
            stream._wake_writer()

    def closed_locally(self, stream: Stream) -> None:
        """Our END_STREAM went out; a client still sending is told to stop (gRPC-go's way)."""
        if not stream.remote_closed:
            self.write(w.rst_stream(stream.id, w.NO_ERROR))
        self._forget(stream)
        if not self.streams and not self.in_receive and self.flush_handle is not None:
            # Nothing else on this connection can join the write: send now, not after
            # another turn of the loop (a sequential client waits for exactly this).
            self._flush()

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if self.going_away:
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        """After a GOAWAY (ours or the client's): close once no stream is left."""
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _cancel_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream._cancel()
        self.streams.clear()
        self.blocked.clear()

    def reset_stream(self, stream: Stream, code: int) -> None:
        """Abandon a stream (RST_STREAM) and stop its call."""
        if not stream.local_closed:
            self.write(w.rst_stream(stream.id, code))
        stream._cancel()
        self._forget(stream)

    def go_away(self) -> None:
        """Graceful close: no new streams; the connection closes once the last one ends."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self.write(w.goaway(self.last_stream_id, w.NO_ERROR))
        self._flush()
        self._close_if_idle()

    def abort(self) -> None:
        """Close at once, cancelling every call."""
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, code: int, debug: str) -> None:
        log.warning("closing HTTP/2 connection from %s: %s", self.peer, debug)
        self.out.append(w.goaway(self.last_stream_id, code, debug.encode()[:256]))
        self._flush()
        self.closed = True
        self._cancel_streams()
        if self.transport is not None:
            self.transport.close()

    # --- reading --------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos = 0
        if not self.preface:
            n = min(len(buf), len(w.PREFACE))
            if buf[:n] != w.PREFACE[:n]:
                self._hand_over(buf)
                return
            if len(buf) < len(w.PREFACE):
                self.buffer = buf
                return
            self.preface = True
            pos = len(w.PREFACE)
            settings = {
                w.SETTINGS_INITIAL_WINDOW_SIZE: OUR_INITIAL_WINDOW,
                w.SETTINGS_MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            }
            if self.options.max_streams:
                settings[w.SETTINGS_MAX_CONCURRENT_STREAMS] = self.options.max_streams
            self.write(w.settings_frame(settings))
            self.write(w.window_update(0, OUR_CONNECTION_WINDOW - w.DEFAULT_WINDOW))
        n = len(buf)
        while n - pos >= 9 and not self.closed:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > w.DEFAULT_MAX_FRAME:
                raise _ConnectionError(w.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > n:
                break
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = w.u32(buf, pos + 5) & 0x7FFFFFFF
            payload = buf[pos + 9 : end]
            pos = end
            if self.continuation is not None and ftype != w.CONTINUATION:
                raise _ConnectionError(w.PROTOCOL_ERROR, "expected CONTINUATION")
            if ftype == w.DATA:
                self._data(sid, flags, payload, length)
            elif ftype == w.HEADERS:
                self._headers(sid, flags, payload)
            elif ftype == w.CONTINUATION:
                self._continuation(sid, flags, payload)
            elif ftype == w.WINDOW_UPDATE:
                self._window_update(sid, payload)
            elif ftype == w.SETTINGS:
                self._settings(sid, flags, payload)
            elif ftype == w.PING:
                if sid:
                    raise _ConnectionError(w.PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise _ConnectionError(w.FRAME_SIZE_ERROR, f"PING of {length} bytes")
                if not flags & w.ACK:
                    self.write(w.frame(w.PING, w.ACK, 0, payload))
                    self._ping_received()
            elif ftype == w.RST_STREAM:
                stream = self.streams.get(sid)
                if stream is not None:
                    stream._cancel()
                    self._forget(stream)  # the last one after a GOAWAY closes the connection
            elif ftype == w.GOAWAY:
                self.going_away = True
                self._close_if_idle()
            elif ftype == w.PUSH_PROMISE:
                raise _ConnectionError(w.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)
        self.buffer = buf[pos:] if pos < n else b""
        if self.recv_unacked >= OUR_CONNECTION_WINDOW // 4:
            self.write(w.window_update(0, self.recv_unacked))
            self.recv_unacked = 0

    # --- keepalive --------------------------------------------------------------------------

    def _ping_received(self) -> None:
        """grpc-go's enforcement policy (etcd: MinTime ``--grpc-keepalive-min-time``,
        PermitWithoutStream false): a PING too soon after the previous one is a strike,
        unless HEADERS or DATA went out since; the third strike closes the connection."""
        now = self.loop.time()
        since = now - self.last_ping_at
        self.last_ping_at = now
        if self.sent_stream_frames:
            self.sent_stream_frames = False
            self.ping_strikes = 0
            return
        if since < (self.options.ping_min_time if self.streams else IDLE_PING_PERIOD):
            self.ping_strikes += 1
            if self.ping_strikes > MAX_PING_STRIKES:
                raise _ConnectionError(w.ENHANCE_YOUR_CALM, "too_many_pings")

    def _keepalive(self) -> None:
        """One timer per connection: ping after ``keepalive_interval`` without reads,
        close if nothing came ``keepalive_timeout`` after the ping (grpc-go's loop)."""
        self.keepalive_handle = None
        if self.closed or self.transport is None:
            return
        options = self.options
        if self.last_read > self.keepalive_seen:
            self.keepalive_outstanding = False
            self.keepalive_seen = self.last_read
            self.keepalive_handle = self.loop.call_at(
                self.last_read + options.keepalive_interval, self._keepalive
            )
            return
        if self.keepalive_outstanding and self.keepalive_left <= 0:
            log.warning("closing HTTP/2 connection from %s: keepalive ping not answered", self.peer)
            self.abort()
            return
        if not self.keepalive_outstanding:
            self.write(w.frame(w.PING, 0, 0, KEEPALIVE_PING))
            self._flush()
            self.keepalive_left = options.keepalive_timeout
            self.keepalive_outstanding = True
        sleep = min(options.keepalive_interval, self.keepalive_left)
        self.keepalive_left -= sleep
        self.keepalive_handle = self.loop.call_later(sleep, self._keepalive)

    def _stop_keepalive(self) -> None:
        if self.keepalive_handle is not None:
            self.keepalive_handle.cancel()
            self.keepalive_handle = None

    def _hand_over(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.closed = True
        self._stop_keepalive()
        self.out.clear()
        self.dispatcher.connection_closed(self)
        if not self.dispatcher.http1(transport, data):
            transport.close()

    def _data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        self.recv_unacked += length
        if flags & w.PADDED:
            if not payload or payload[0] >= length:
                raise _ConnectionError(w.PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : length - payload[0]]
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream_id or sid == 0:
                raise _ConnectionError(w.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we already ended: the connection window still counts it
        stream.recv_unacked += length
        if payload:
            try:
                stream._received(payload)
            except StreamError as exc:
                stream.on_end = None
                if stream.task is not None and not stream.task.done():
                    stream.task.cancel()
                stream.finish(exc.code, str(exc))
                return
        if flags & w.END_STREAM:
            stream._end()
            if stream.local_closed:
                self._forget(stream)
        elif (
            stream.recv_unacked >= OUR_INITIAL_WINDOW // 2
            and not stream.local_closed
            and not stream.flow_on_read
        ):
            self.write(w.window_update(sid, stream.recv_unacked))
            stream.recv_unacked = 0

    def _headers(self, sid: int, flags: int, payload: bytes) -> None:
        if flags & w.PADDED:
            pad = payload[0] if payload else 0
            if pad >= len(payload):
                raise _ConnectionError(w.PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : len(payload) - pad]
        if flags & w.PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & w.END_HEADERS:
            self.continuation = (sid, flags, bytearray(payload))
            return
        self._header_block(sid, flags, payload)

    def _continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != sid:
            raise _ConnectionError(w.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.continuation[2]
        block += payload
        if len(block) > MAX_HEADER_LIST:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "header block too large")
        if flags & w.END_HEADERS:
            first_flags = self.continuation[1]
            self.continuation = None
            self._header_block(sid, first_flags, bytes(block))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block)
        except hpack.HPACKError as exc:
            raise _ConnectionError(w.COMPRESSION_ERROR, f"HPACK: {exc}") from exc
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if flags & w.END_STREAM:
                stream._end()
            return
        if sid % 2 == 0 or sid <= self.last_stream_id:
            raise _ConnectionError(w.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        self.last_stream_id = sid
        if self.going_away or len(self.streams) >= self.max_streams:
            self.write(w.rst_stream(sid, w.REFUSED_STREAM))
            return
        stream = Stream(self, sid, headers)
        stream.max_message = self.max_message
        self.streams[sid] = stream
        self.dispatcher.open_stream(stream)
        if flags & w.END_STREAM and not stream.remote_closed:
            stream._end()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(w.FRAME_SIZE_ERROR, "WINDOW_UPDATE size")
        increment = w.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(w.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > w.MAX_WINDOW:
                raise _ConnectionError(w.FLOW_CONTROL_ERROR, "connection window overflow")
            for blocked in list(self.blocked.values()):
                self.drain(blocked)
                if self.send_window <= 0:
                    break
            return
        stream = self.streams.get(sid)
        if stream is None:
            return
        if increment == 0:
            self.reset_stream(stream, w.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > w.MAX_WINDOW:
            self.reset_stream(stream, w.FLOW_CONTROL_ERROR)
            return
        if stream.pending:
            self.drain(stream)

    def _settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise _ConnectionError(w.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & w.ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(w.FRAME_SIZE_ERROR, "SETTINGS size")
        for key, value in w.parse_settings(payload):
            if key == w.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > w.MAX_WINDOW:
                    raise _ConnectionError(w.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == w.SETTINGS_MAX_FRAME_SIZE:
                if not w.DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(w.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self.write(w.frame(w.SETTINGS, w.ACK, 0))
        for stream in list(self.blocked.values()):
            self.drain(stream)


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
