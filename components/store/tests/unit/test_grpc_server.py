"""keel-store's own gRPC server (``grpc_server`` over ``h2conn``), driven by grpcio's client.

Each test starts a ``GrpcServer`` on loopback in its own event loop, once on asyncio's
own loop and once on uvloop's (the daemon's default, keel_store.eventloop),
registers small servicers through the generated ``add_*Servicer_to_server`` functions,
and calls them with the real ``grpc.aio`` client; the raw-protocol tests speak HTTP/2
over a plain socket with frames built here (not with ``h2wire``, the code under test).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keel_core.testing import free_port
from keel_store.pb import healthgrpc, healthpb, mvccpb, rpcgrpc, rpcpb
from keel_store.server.grpc_server import GrpcServer, server_ssl_context
from keel_store.server.h2conn import DEFAULT_OPTIONS, Options
from keel_store.server.health_service import NOT_SERVING, SERVING, HealthService

LOCAL = "127.0.0.1"
BIG_RESPONSE = 8 << 20
CHUNK = 64 << 10
CHUNKS = 200


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
_LOOP = {"factory": asyncio.new_event_loop}
"""The loop factory of the running test (set by ``event_loop_kind``)."""


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on both event loops."""
    _LOOP["factory"] = LOOPS[request.param]
    yield request.param
    _LOOP["factory"] = asyncio.new_event_loop


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run one test's coroutine in a fresh loop, bounded so a hang fails instead."""

    async def bounded() -> None:
        await asyncio.wait_for(scenario(), timeout)

    with asyncio.Runner(loop_factory=_LOOP["factory"]) as runner:
        runner.run(bounded())


async def is_set_within(event: asyncio.Event, timeout: float = 2.0) -> bool:
    """Whether ``event`` is set within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


# --- servicers -------------------------------------------------------------------------------


class KV(rpcgrpc.KVServicer):  # type: ignore[misc]
    """Range's behaviour is chosen by the request's key; Put echoes."""

    def __init__(self) -> None:
        self.metadata: tuple[tuple[str, Any], ...] = ()
        self.peer = ""
        self.time_remaining: float | None = -1.0
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0
        self.server: GrpcServer | None = None
        self.probes: list[tuple[bool, int]] = []
        self.answered = asyncio.Event()  # a "reply" call waits for it after replying
        self.returned = asyncio.Event()
        self.sleeping = self.peak_sleeping = 0  # "sleep" calls running now, at most

    async def Range(self, request: Any, context: Any) -> Any:
        self.calls += 1
        key = bytes(request.key)
        if key == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.range_end.decode())
        if key == b"boom":
            raise RuntimeError("handler bug")
        if key == b"coded":  # the generated default servicer methods do this
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no such thing")
            raise NotImplementedError("no such thing")
        if key == b"big":
            value = bytes(range(256)) * 4096  # 1 MiB
            kvs = [
                mvccpb.KeyValue(key=b"k%d" % i, value=value[i:] + value[:i])
                for i in range(BIG_RESPONSE // len(value))
            ]
            return rpcpb.RangeResponse(kvs=kvs, count=len(kvs))
        if key.startswith(b"sleep"):
            self.started.set()
            self.sleeping += 1
            self.peak_sleeping = max(self.peak_sleeping, self.sleeping)
            try:
                await asyncio.sleep(float(request.range_end.decode()))
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            finally:
                self.sleeping -= 1
            return rpcpb.RangeResponse(count=7)
        self.metadata = context.invocation_metadata()
        self.peer = context.peer()
        self.time_remaining = context.time_remaining()
        return rpcpb.RangeResponse(
            kvs=[mvccpb.KeyValue(key=key, value=request.range_end)],
            count=request.limit,
            more=True,
        )

    async def Put(self, request: Any, context: Any) -> Any:
        if request.key == b"probe":  # how the call runs: outside a task at first?
            server = self.server
            calls = -1 if server is None else server.unary_calls
            self.probes.append((asyncio.current_task() is None, calls))
            await asyncio.sleep(0)
            self.probes.append((asyncio.current_task() is None, calls))
        if request.key == b"reply":  # answer now, return (something else) later
            context.reply(rpcpb.PutResponse(prev_kv=mvccpb.KeyValue(key=b"early")))
            try:
                await self.answered.wait()
                return rpcpb.PutResponse(prev_kv=mvccpb.KeyValue(key=b"late"))
            finally:
                self.returned.set()
        value = bytes(request.value)
        if len(value) > 1000:  # large: answer its length and digest
            value = digest(value).encode()
        return rpcpb.PutResponse(prev_kv=mvccpb.KeyValue(key=request.key, value=value))


class Watch(rpcgrpc.WatchServicer):  # type: ignore[misc]
    """Echoes each request's key as a response (``cancel_reason``), numbered."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.go = asyncio.Event()  # a call whose first request key is "hold" waits for it
        self.go.set()
        self.contexts: list[Any] = []

    async def Watch(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        self.contexts.append(context)
        await self.go.wait()
        try:
            n = 0
            async for request in requests:
                key = bytes(request.create_request.key)
                echo = key.decode() if len(key) <= 1000 else digest(key)
                yield rpcpb.WatchResponse(watch_id=n, cancel_reason=echo)
                n += 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def chunk(i: int) -> bytes:
    """Snapshot chunk ``i``: its index, then a pattern shifted by it."""
    pattern = bytes((i + j) & 0xFF for j in range(256)) * (CHUNK // 256)
    return struct.pack(">I", i) + pattern[4:]


_CHUNKS = [chunk(i) for i in range(CHUNKS)]


class Maintenance(rpcgrpc.MaintenanceServicer):  # type: ignore[misc]
    """Snapshot streams ``CHUNKS`` chunks of 64 KiB."""

    def __init__(self) -> None:
        self.sent: list[int] = []  # per call: chunks yielded so far
        self.closed: list[asyncio.Event] = []  # per call: the generator has ended

    async def Snapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:
        call = len(self.sent)
        self.sent.append(0)
        self.closed.append(asyncio.Event())
        try:
            for i, blob in enumerate(_CHUNKS):
                yield rpcpb.SnapshotResponse(remaining_bytes=(CHUNKS - 1 - i) * CHUNK, blob=blob)
                self.sent[call] = i + 1
        finally:
            # Reached at the end, or on cancellation: at an await inside the generator
            # by CancelledError, while suspended at ``yield`` (the server waiting for
            # flow-control credit) by GeneratorExit once the abandoned generator is closed.
            self.closed[call].set()


class Services:
    def __init__(self) -> None:
        self.kv = KV()
        self.watch = Watch()
        self.maintenance = Maintenance()


@contextlib.asynccontextmanager
async def serving(
    *,
    max_receive: int = 4 << 20,
    http1: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]] | None = None,
    tls: ssl.SSLContext | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> AsyncIterator[tuple[GrpcServer, Services, int]]:
    """A started server with the test servicers on a free loopback port; stopped after."""
    services = Services()
    server = GrpcServer(max_receive_message_length=max_receive, http1=http1, options=options)
    rpcgrpc.add_KVServicer_to_server(services.kv, server)
    rpcgrpc.add_WatchServicer_to_server(services.watch, server)
    rpcgrpc.add_MaintenanceServicer_to_server(services.maintenance, server)
    port = free_port()
    if tls is None:
        assert server.add_insecure_port(f"{LOCAL}:{port}") == port
    else:
        assert server.add_secure_port(f"{LOCAL}:{port}", tls) == port
    await server.start()
    try:
        yield server, services, port
    finally:
        await server.stop(None)


def channel(port: int, *options: tuple[str, Any]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"{LOCAL}:{port}", options=list(options))


def raw_method(ch: grpc.aio.Channel, path: str) -> Any:
    """A unary-unary call sending and receiving raw bytes."""
    return ch.unary_unary(path, request_serializer=None, response_deserializer=None)


async def http1_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP/1.1 responder: ``hello <path>``, then close."""
    request_line = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    body = b"hello " + request_line.split()[1]
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()


# --- raw HTTP/2 (independent of h2wire) ------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H_DATA, H_HEADERS, H_RST, H_SETTINGS, H_PING, H_GOAWAY = 0, 1, 3, 4, 6, 7


def h2frame(ftype: int, flags: int, sid: int, payload: bytes = b"", length: int = -1) -> bytes:
    n = len(payload) if length < 0 else length
    return struct.pack(">I", n)[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes] | None:
    """(type, flags, stream, payload) of the next frame; None at end of stream."""
    try:
        head = await reader.readexactly(9)
        payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


def grpc_request_headers(path: str, *extra: tuple[str, str]) -> bytes:
    return hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )


def grpc_message(message: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + struct.pack(">I", len(message)) + message


async def raw_call(port: int, headers: bytes, body: bytes) -> tuple[dict[str, str], bytes]:
    """One request on a raw connection: (trailer fields, response DATA) of stream 1."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    try:
        writer.write(
            PREFACE
            + h2frame(H_SETTINGS, 0, 0)
            + h2frame(H_HEADERS, 0x4, 1, headers)
            + h2frame(H_DATA, 0x1, 1, body)
        )
        decoder = hpack.Decoder()
        fields: dict[str, str] = {}
        data = b""
        while (got := await read_frame(reader)) is not None:
            ftype, flags, sid, payload = got
            if ftype == H_HEADERS and sid == 1:
                fields.update((str(k), str(v)) for k, v in decoder.decode(payload, raw=False))
                if flags & 0x1:
                    return fields, data
            elif ftype == H_DATA and sid == 1:
                data += payload
            elif ftype == H_RST and sid == 1:
                raise AssertionError(f"stream reset: {payload.hex()}")
        raise AssertionError("connection closed before the response ended")
    finally:
        writer.close()


# --- tests -----------------------------------------------------------------------------------


def test_unary_round_trip_and_metadata() -> None:
    seen: list[tuple[tuple[str, Any], ...]] = []

    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            reply = await kv.Range(
                rpcpb.RangeRequest(key=b"hello", range_end=b"world", limit=42),
                metadata=(("token", "abc"), ("trace-bin", b"\x00\x01\xfe\xff")),
            )
            assert list(reply.kvs) == [mvccpb.KeyValue(key=b"hello", value=b"world")]
            assert reply.count == 42
            assert reply.more
            md = services.kv.metadata
            assert ("token", "abc") in md
            assert ("trace-bin", b"\x00\x01\xfe\xff") in md
            keys = [k for k, _ in md]
            assert not [k for k in keys if k.startswith(":")], md
            assert "content-type" not in keys
            assert "te" not in keys
            assert services.kv.peer.startswith("ipv4:127.0.0.1:")
            assert services.kv.time_remaining is None  # no deadline given

            put = await kv.Put(rpcpb.PutRequest(key=b"k", value=b"v" * 1000))
            assert put.prev_kv.key == b"k"
            assert put.prev_kv.value == b"v" * 1000

            # metadata larger than a frame: HEADERS and CONTINUATION frames
            large = "".join(chr(0x21 + i % 90) for i in range(40_000))
            await kv.Range(rpcpb.RangeRequest(key=b"x"), metadata=(("large", large),))
            assert ("large", large) in services.kv.metadata

            # with a deadline the handler sees the time left
            await kv.Range(rpcpb.RangeRequest(key=b"x"), timeout=30)
            assert services.kv.time_remaining is not None

            assert 20 < services.kv.time_remaining <= 31  # grpcio rounds its timeout up
            # the same header block again (the decoder's cached list): the metadata is
            # computed once; another token is its own
            for token in ("abc", "abc", "other"):
                await kv.Range(rpcpb.RangeRequest(key=b"x"), metadata=(("token", token),))
                assert ("token", token) in services.kv.metadata
                seen.append(services.kv.metadata)
            assert seen[0] is seen[1]
            assert seen[2] is not seen[1]

    run(scenario)


def test_reply_answers_before_the_handler_returns() -> None:
    """``ServicerContext.reply`` sends the response and OK at once: the client has its
    answer while the handler still waits (for the client to have it), and what the
    handler returns afterwards is not sent. A reply after the call ended sends nothing."""

    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            call = kv.Put(rpcpb.PutRequest(key=b"reply"))
            reply = await asyncio.wait_for(call, 5)
            assert reply.prev_kv.key == b"early"
            assert await call.code() == grpc.StatusCode.OK
            assert not services.kv.returned.is_set()  # the handler is still waiting
            services.kv.answered.set()
            assert await is_set_within(services.kv.returned)
            # the connection carries on: the late response did not leak into it
            put = await kv.Put(rpcpb.PutRequest(key=b"k", value=b"v"))
            assert (put.prev_kv.key, put.prev_kv.value) == (b"k", b"v")

    run(scenario)


@pytest.mark.parametrize(
    "details",
    [
        "etcdserver: requested lease not found",
        "etcdserver: 100% sure, naïve ключ ✓ %41 \t end",
    ],
    ids=["ascii", "non-ascii-and-percent"],
)
def test_abort_reaches_the_client_with_code_and_details(details: str) -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rpcgrpc.KVStub(ch).Range(
                    rpcpb.RangeRequest(key=b"abort", range_end=details.encode())
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert caught.value.details() == details

    run(scenario)


def test_handler_exception_is_unknown_and_the_server_keeps_serving() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kv.Range(rpcpb.RangeRequest(key=b"boom"))
            assert caught.value.code() == grpc.StatusCode.UNKNOWN
            assert "handler bug" in (caught.value.details() or "")
            reply = await kv.Range(rpcpb.RangeRequest(key=b"after", limit=3))
            assert reply.count == 3

    run(scenario)


def test_unknown_method_and_unknown_service_are_unimplemented() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            request = rpcpb.RangeRequest(key=b"a").SerializeToString()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw_method(ch, "/etcdserverpb.KV/Nope")(request)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert caught.value.details() == "unknown method Nope for service etcdserverpb.KV"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw_method(ch, "/nope.Svc/X")(request)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert caught.value.details() == "unknown service nope.Svc"
            assert (await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(limit=1))).count == 1

    run(scenario)


def test_undecodable_request_is_internal() -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw_method(ch, "/etcdserverpb.KV/Range")(b"\xff\xff\xff")
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "grpc: error unmarshalling request" in (caught.value.details() or "")
            assert services.kv.calls == 0
            # the raw method itself works with a valid message
            good = rpcpb.RangeRequest(key=b"r", limit=5).SerializeToString()
            reply = rpcpb.RangeResponse.FromString(
                await raw_method(ch, "/etcdserverpb.KV/Range")(good)
            )
            assert reply.count == 5

    run(scenario)


def test_request_over_the_size_limit_is_resource_exhausted() -> None:
    async def scenario() -> None:
        async with serving(max_receive=1000) as (_, services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            big = rpcpb.RangeRequest(key=b"x" * 2000)
            size = big.ByteSize()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kv.Range(big)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.details() == (
                f"grpc: received message larger than max ({size} vs. 1000)"
            )
            assert services.kv.calls == 0
            reply = await kv.Range(rpcpb.RangeRequest(key=b"small", limit=9))
            assert reply.count == 9
            # a streaming call too: the stream ends, the connection stays
            call = rpcgrpc.WatchStub(ch).Watch()
            await call.write(rpcpb.WatchRequest(create_request={"key": b"y" * 2000}))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await kv.Range(rpcpb.RangeRequest(limit=10))).count == 10

    run(scenario)


@pytest.mark.parametrize("bdp", [0, 1], ids=["small-windows", "bdp-windows"])
def test_response_larger_than_the_client_windows_arrives_intact(bdp: int) -> None:
    """Without BDP probing grpcio's windows stay at 64 KiB: the server waits for
    WINDOW_UPDATEs; with it the windows grow and the socket pushes back instead."""

    async def scenario() -> None:
        async with (
            serving() as (_, _services, port),
            channel(
                port,
                ("grpc.max_receive_message_length", 2 * BIG_RESPONSE),
                ("grpc.http2.bdp_probe", bdp),
            ) as ch,
        ):
            kv = rpcgrpc.KVStub(ch)
            replies = await asyncio.gather(
                *(kv.Range(rpcpb.RangeRequest(key=b"big")) for _ in range(2))
            )
            value = bytes(range(256)) * 4096
            for reply in replies:
                assert reply.count == BIG_RESPONSE // len(value)
                for i, item in enumerate(reply.kvs):
                    assert item.key == b"k%d" % i
                    assert item.value == value[i:] + value[:i]
            assert (await kv.Range(rpcpb.RangeRequest(limit=2))).count == 2

    run(scenario)


@pytest.mark.parametrize("bdp", [0, 1], ids=["small-windows", "bdp-windows"])
def test_server_stream_to_a_slow_reader_is_complete_and_in_order(bdp: int) -> None:
    async def scenario() -> None:
        async with (
            serving() as (_, _services, port),
            channel(port, ("grpc.http2.bdp_probe", bdp)) as ch,
        ):
            call = rpcgrpc.MaintenanceStub(ch).Snapshot(rpcpb.SnapshotRequest())
            got: list[bytes] = []
            remaining: list[int] = []
            while (reply := await call.read()) is not grpc.aio.EOF:
                got.append(reply.blob)
                remaining.append(reply.remaining_bytes)
                if len(got) <= 40:
                    await asyncio.sleep(0.005)  # a slow reader: windows fill up
            assert await call.code() == grpc.StatusCode.OK
            assert len(got) == CHUNKS
            assert [struct.unpack(">I", b[:4])[0] for b in got] == list(range(CHUNKS))
            assert got == _CHUNKS
            assert remaining == [(CHUNKS - 1 - i) * CHUNK for i in range(CHUNKS)]

    run(scenario)


def test_a_stalled_stream_does_not_block_others_and_can_be_cancelled() -> None:
    """A server stream the client does not read waits for credit (it must not use up
    the connection for other calls); cancelling it stops its handler mid-flight."""

    async def scenario() -> None:
        async with (
            serving() as (_, services, port),
            channel(port, ("grpc.http2.bdp_probe", 0)) as ch,
        ):
            stalled = rpcgrpc.MaintenanceStub(ch).Snapshot(rpcpb.SnapshotRequest())
            assert (await stalled.read()).blob == _CHUNKS[0]
            kv = rpcgrpc.KVStub(ch)
            for i in range(20):
                assert (await kv.Range(rpcpb.RangeRequest(limit=i))).count == i
            # a second snapshot, read to the end while the first one waits
            other = rpcgrpc.MaintenanceStub(ch).Snapshot(rpcpb.SnapshotRequest())
            blobs = []
            while (reply := await other.read()) is not grpc.aio.EOF:
                blobs.append(reply.blob)
            assert blobs == _CHUNKS
            snapshots = services.maintenance
            assert snapshots.sent[1] == CHUNKS
            assert snapshots.sent[0] < CHUNKS // 2, "the stalled stream was not held back"
            assert not snapshots.closed[0].is_set()
            sent = snapshots.sent[0]
            stalled.cancel()
            assert await is_set_within(snapshots.closed[0]), "handler not closed"
            assert snapshots.sent[0] == sent
            assert (await kv.Range(rpcpb.RangeRequest(limit=99))).count == 99

    run(scenario)


def test_large_requests_past_the_receive_windows() -> None:
    """More than the connection window (16 MiB) in unary requests, and more than a
    stream window (4 MiB) in one bidi stream: the server must keep granting credit."""

    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            for i in range(8):
                value = bytes((i + j) & 0xFF for j in range(256)) * (12 << 10)  # 3 MiB
                reply = await kv.Put(rpcpb.PutRequest(key=b"p%d" % i, value=value))
                assert reply.prev_kv.key == b"p%d" % i
                assert reply.prev_kv.value.decode() == digest(value)
            call = rpcgrpc.WatchStub(ch).Watch()
            keys = [bytes((i * 7 + j) & 0xFF for j in range(256)) * 4096 for i in range(10)]
            for key in keys:  # 1 MiB each, written without reading the echoes
                await call.write(rpcpb.WatchRequest(create_request={"key": key}))
            await call.done_writing()
            echoes = []
            while (reply := await call.read()) is not grpc.aio.EOF:
                echoes.append(reply.cancel_reason)
            assert echoes == [digest(k) for k in keys]
            assert await call.code() == grpc.StatusCode.OK

    run(scenario)


def test_bidi_stream_echoes_and_ends_ok() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            call = rpcgrpc.WatchStub(ch).Watch()
            for i in range(5):
                await call.write(rpcpb.WatchRequest(create_request={"key": b"key%d" % i}))
                reply = await call.read()
                assert (reply.watch_id, reply.cancel_reason) == (i, f"key{i}")
            for i in range(5, 10):
                await call.write(rpcpb.WatchRequest(create_request={"key": b"key%d" % i}))
            await call.done_writing()
            rest = []
            while (reply := await call.read()) is not grpc.aio.EOF:
                rest.append(reply)
            assert [(r.watch_id, r.cancel_reason) for r in rest] == [
                (i, f"key{i}") for i in range(5, 10)
            ]
            assert await call.code() == grpc.StatusCode.OK

    run(scenario)


def test_client_cancel_of_a_bidi_call_cancels_the_handler() -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            call = rpcgrpc.WatchStub(ch).Watch()
            await call.write(rpcpb.WatchRequest(create_request={"key": b"a"}))
            assert (await call.read()).cancel_reason == "a"
            assert not services.watch.cancelled.is_set()
            call.cancel()
            assert await is_set_within(services.watch.cancelled), "handler not cancelled"
            assert await call.code() == grpc.StatusCode.CANCELLED
            kv = rpcgrpc.KVStub(ch)
            assert (await kv.Range(rpcpb.RangeRequest(limit=4))).count == 4

    run(scenario)


def test_cancel_with_ends_the_call_with_that_status_and_cancels_the_handler() -> None:
    """etcd's ``cancellableContext.Cancel(ErrGRPCNoLeader)``: a stream cut off from
    outside ends with the status given, and its handler is cancelled."""

    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            call = rpcgrpc.WatchStub(ch).Watch()
            await call.write(rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"a")))
            assert (await call.read()).cancel_reason == "a"
            services.watch.contexts[0].cancel_with(
                grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call.read()
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert failed.value.details() == "etcdserver: no leader"
            assert await is_set_within(services.watch.cancelled)
            services.watch.contexts[0].cancel_with(grpc.StatusCode.INTERNAL, "again")  # no-op

    run(scenario)


def test_deadline_exceeded_cancels_the_handler() -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kv.Range(rpcpb.RangeRequest(key=b"sleep", range_end=b"10"), timeout=0.2)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2
            assert await is_set_within(services.kv.cancelled), "handler not cancelled"
            assert (await kv.Range(rpcpb.RangeRequest(limit=6))).count == 6

    run(scenario)


def test_server_side_grpc_timeout_ends_the_call_with_deadline_exceeded() -> None:
    """The server's own timer (the client here never resets the stream)."""

    async def scenario() -> None:
        async with serving() as (_, services, port):
            request = rpcpb.RangeRequest(key=b"sleep", range_end=b"10").SerializeToString()
            headers = grpc_request_headers("/etcdserverpb.KV/Range", ("grpc-timeout", "150m"))
            started = time.monotonic()
            fields, data = await raw_call(port, headers, grpc_message(request))
            elapsed = time.monotonic() - started
            assert fields.get("grpc-status") == "4", fields
            assert data == b""
            assert 0.1 < elapsed < 2
            assert services.kv.cancelled.is_set()

    run(scenario)


def test_ping_is_acknowledged_and_non_grpc_requests_get_http_errors() -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            encoder, decoder = hpack.Encoder(), hpack.Decoder()
            get = encoder.encode(
                [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")]
            )
            text = encoder.encode(
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", "/etcdserverpb.KV/Range"),
                    (":authority", "t"),
                    ("content-type", "text/plain"),
                ]
            )
            writer.write(
                PREFACE
                + h2frame(H_SETTINGS, 0, 0)
                + h2frame(H_PING, 0, 0, b"12345678")
                + h2frame(H_HEADERS, 0x5, 1, get)
                + h2frame(H_HEADERS, 0x5, 3, text)
            )
            statuses: dict[int, dict[str, str]] = {}
            pings: list[tuple[int, bytes]] = []
            settings_acked = False
            while len(statuses) < 2 or not pings:
                got = await read_frame(reader)
                assert got is not None, "connection closed"
                ftype, flags, sid, payload = got
                if ftype == H_HEADERS:
                    statuses[sid] = {str(k): str(v) for k, v in decoder.decode(payload, raw=False)}
                elif ftype == H_PING:
                    pings.append((flags, payload))
                elif ftype == H_SETTINGS and flags & 0x1:
                    settings_acked = True
            writer.close()
            assert pings == [(0x1, b"12345678")]
            assert settings_acked
            assert statuses[1][":status"] == "405"
            assert statuses[3][":status"] == "415"
            assert services.kv.calls == 0

    run(scenario)


def test_compressed_request_is_unimplemented() -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port):
            request = rpcpb.RangeRequest(key=b"a").SerializeToString()
            headers = grpc_request_headers("/etcdserverpb.KV/Range", ("grpc-encoding", "gzip"))
            fields, _ = await raw_call(port, headers, grpc_message(request, compressed=True))
            assert fields.get("grpc-status") == "12", fields
            assert "gzip" in fields.get("grpc-message", "")
            assert services.kv.calls == 0

    run(scenario)


def test_many_concurrent_calls_get_their_own_answers() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            replies = await asyncio.gather(
                *(kv.Range(rpcpb.RangeRequest(key=b"key%d" % i, limit=i)) for i in range(500))
            )
            for i, reply in enumerate(replies):
                assert reply.kvs[0].key == b"key%d" % i
                assert reply.count == i

    run(scenario)


def http_get(port: int, path: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(LOCAL, port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http1_on_the_same_port() -> None:
    async def scenario() -> None:
        async with serving(http1=http1_hello) as (_, _services, port), channel(port) as ch:
            status, body = await asyncio.to_thread(http_get, port, "/health")
            assert (status, body) == (200, b"hello /health")
            # a request whose first bytes match the start of the HTTP/2 preface ("P")
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"P")
            await writer.drain()
            await asyncio.sleep(0.02)  # let the server see the single byte alone
            writer.write(b"OST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            response = await reader.read()
            writer.close()
            assert response.startswith(b"HTTP/1.1 200 OK\r\n")
            assert response.endswith(b"hello /v3/kv/range")
            # gRPC still served next to it
            assert (await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(limit=8))).count == 8

    run(scenario)


def test_without_http1_handler_a_non_http2_connection_is_closed() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            assert (await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(limit=8))).count == 8

    run(scenario)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCAL))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_tls_grpc_and_https_on_one_port(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    context = server_ssl_context(str(cert_file), str(key_file))

    async def scenario() -> None:
        async with serving(http1=http1_hello, tls=context) as (_, services, port):
            credentials = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
            async with grpc.aio.secure_channel(
                f"{LOCAL}:{port}",
                credentials,
                options=[("grpc.ssl_target_name_override", "localhost")],
            ) as ch:
                reply = await rpcgrpc.KVStub(ch).Range(
                    rpcpb.RangeRequest(key=b"tls", limit=11), metadata=(("token", "t"),)
                )
                assert reply.count == 11
                assert ("token", "t") in services.kv.metadata
                call = rpcgrpc.WatchStub(ch).Watch()
                await call.write(rpcpb.WatchRequest(create_request={"key": b"w"}))
                assert (await call.read()).cancel_reason == "w"
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK

            client = ssl.create_default_context(cafile=str(cert_file))
            client.set_alpn_protocols(["http/1.1"])
            status, body = await asyncio.to_thread(http_get, port, "/version", client)
            assert (status, body) == (200, b"hello /version")
            # a TLS client without ALPN is sniffed like a plaintext one
            plain = ssl.create_default_context(cafile=str(cert_file))
            status, body = await asyncio.to_thread(http_get, port, "/metrics", plain)
            assert (status, body) == (200, b"hello /metrics")

    run(scenario)


async def stop_during_a_call(
    server: GrpcServer, services: Services, ch: grpc.aio.Channel, sleep: bytes, grace: float
) -> asyncio.Future[Any]:
    """Start a Range that sleeps ``sleep`` seconds in its handler, stop the server with
    ``grace`` once it runs (stop must return within 2 s), and hand back the call."""
    call: asyncio.Future[Any] = asyncio.ensure_future(
        rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(key=b"sleep", range_end=sleep))
    )
    assert await is_set_within(services.kv.started)
    started = time.monotonic()
    await server.stop(grace=grace)
    assert time.monotonic() - started < 2, "stop waited past the last call or its grace"
    return call


def test_stop_lets_a_call_in_flight_finish_within_grace() -> None:
    async def scenario() -> None:
        async with serving() as (server, services, port), channel(port) as ch:
            call = await stop_during_a_call(server, services, ch, b"0.3", grace=3)
            reply = await call
            assert reply.count == 7
            assert not services.kv.cancelled.is_set()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOCAL, port)

    run(scenario)


def test_stop_cuts_a_call_that_outlives_grace() -> None:
    async def scenario() -> None:
        async with serving() as (server, services, port), channel(port) as ch:
            call = await stop_during_a_call(server, services, ch, b"30", grace=0.2)
            assert services.kv.cancelled.is_set()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario)


PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x1, 0x3, 0x6, 0x9


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        pytest.param(h2frame(H_DATA, 0, 0, b"x"), PROTOCOL_ERROR, id="DATA-on-stream-0"),
        pytest.param(h2frame(H_DATA, 0, 1, length=16385), FRAME_SIZE_ERROR, id="frame-too-long"),
        pytest.param(h2frame(H_DATA, 0, 5, b"x"), PROTOCOL_ERROR, id="DATA-on-idle-stream"),
        pytest.param(h2frame(H_SETTINGS, 0, 3), PROTOCOL_ERROR, id="SETTINGS-on-a-stream"),
        pytest.param(
            h2frame(H_HEADERS, 0x4, 1, b"\xff\xff\xff\xff\xff\xff"),
            COMPRESSION_ERROR,
            id="bad-HPACK",
        ),
        pytest.param(
            h2frame(H_HEADERS, 0x4, 2, grpc_request_headers("/etcdserverpb.KV/Range")),
            PROTOCOL_ERROR,
            id="HEADERS-on-even-stream",
        ),
        pytest.param(h2frame(9, 0x4, 1, b""), PROTOCOL_ERROR, id="CONTINUATION-alone"),
        pytest.param(
            h2frame(8, 0, 0, struct.pack(">I", 2**31 - 1)),
            FLOW_CONTROL_ERROR,
            id="connection-window-overflow",
        ),
        pytest.param(h2frame(5, 0x4, 1, b"\0\0\0\2"), PROTOCOL_ERROR, id="PUSH_PROMISE"),
    ],
)
def test_protocol_errors_close_the_connection_not_the_server(garbage: bytes, error: int) -> None:
    async def scenario() -> None:
        async with serving() as (_, services, port):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(PREFACE + h2frame(H_SETTINGS, 0, 0) + garbage)
            frames: list[tuple[int, int, int, bytes]] = []
            while (got := await read_frame(reader)) is not None:
                frames.append(got)
            writer.close()
            assert frames[0][0] == H_SETTINGS
            goaways = [payload for ftype, _, _, payload in frames if ftype == H_GOAWAY]
            assert len(goaways) == 1, frames
            assert int.from_bytes(goaways[0][4:8], "big") == error
            assert services.kv.calls == 0
            async with channel(port) as ch:
                reply = await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(limit=12))
                assert reply.count == 12

    run(scenario)


def test_set_code_then_raise_ends_with_the_code_set() -> None:
    async def scenario() -> None:
        async with serving() as (_, _services, port), channel(port) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(key=b"coded"))
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "no such thing"

    run(scenario)


def test_a_streaming_request_cannot_run_more_than_a_window_ahead_of_its_handler() -> None:
    """Window for a client stream comes back as the handler reads, not as bytes arrive."""
    window = 4 << 20  # h2conn.OUR_INITIAL_WINDOW
    piece = b"w" * (512 << 10)

    async def scenario() -> None:
        async with serving() as (server, services, port), channel(port) as ch:
            services.watch.go.clear()  # the handler does not read yet
            call = rpcgrpc.WatchStub(ch).Watch()
            sent = 0

            async def write_all() -> None:
                nonlocal sent
                for _ in range(24):  # 12 MiB: three windows
                    await call.write(rpcpb.WatchRequest(create_request={"key": piece}))
                    sent += 1

            writer = asyncio.ensure_future(write_all())
            await asyncio.sleep(1.0)  # let the client push whatever flow control allows
            buffered = sum(
                len(m)
                for c in server._connections
                for st in c.streams.values()
                for m in st.inbox
                if m is not None
            )
            assert buffered <= window + len(piece) + 64, buffered
            assert not writer.done(), "the client was never held back"
            services.watch.go.set()  # now the handler reads: the rest must flow
            for n in range(24):
                response = await call.read()
                assert response.watch_id == n
                assert response.cancel_reason == digest(piece)
            await writer
            await call.done_writing()
            assert sent == 24

    run(scenario, timeout=20.0)


def test_stop_closes_http1_connections_it_handed_over() -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline() not in (b"", b"\r\n"):
            pass
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # keep-alive: wait for the next request (or the close)

    async def scenario() -> None:
        async with serving(http1=keep_alive) as (server, _, port):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"ok")
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(server.stop(0), 3.0)
            assert await asyncio.wait_for(reader.read(), 3.0) == b""  # closed by stop
            writer.close()

    run(scenario)


def test_stop_ends_once_the_client_resets_its_last_call() -> None:
    """After our GOAWAY, a RST_STREAM of the last stream closes the connection at once."""

    async def scenario() -> None:
        async with serving() as (server, services, port), channel(port) as ch:
            call = rpcgrpc.KVStub(ch).Range(rpcpb.RangeRequest(key=b"sleep", range_end=b"30"))
            pending = asyncio.ensure_future(call)
            assert await is_set_within(services.kv.started)
            stopping = asyncio.ensure_future(server.stop(grace=8))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            pending.cancel()  # grpcio sends RST_STREAM
            await asyncio.wait_for(stopping, 5)
            assert time.monotonic() - started < 2, "stop waited for the grace period"
            assert await is_set_within(services.kv.cancelled)

    run(scenario, timeout=20.0)


def test_unary_calls_in_progress_are_counted_streams_are_not() -> None:
    """``unary_calls`` (what tells the store a proposal is alone) counts unary calls
    from their start to their end, whatever the end: an answer, a client's cancel, a
    deadline; watches and other streams never count."""

    async def scenario() -> None:
        async with serving() as (server, services, port), channel(port) as ch:
            kv = rpcgrpc.KVStub(ch)
            assert server.unary_calls == 0
            watch = rpcgrpc.WatchStub(ch).Watch()
            await watch.write(rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"w")))
            assert (await watch.read()).cancel_reason == "w"
            snapshot = rpcgrpc.MaintenanceStub(ch).Snapshot(rpcpb.SnapshotRequest())
            assert (await snapshot.read()).blob == _CHUNKS[0]  # a unary request, streamed back
            assert server.unary_calls == 0
            slow = asyncio.ensure_future(kv.Range(rpcpb.RangeRequest(key=b"sleep", range_end=b"5")))
            assert await is_set_within(services.kv.started)
            assert server.unary_calls == 1
            assert (await kv.Range(rpcpb.RangeRequest(limit=3))).count == 3
            services.kv.started.clear()
            cut = kv.Range(rpcpb.RangeRequest(key=b"sleep", range_end=b"5"), timeout=0.2)
            assert await is_set_within(services.kv.started)
            assert server.unary_calls == 2
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await cut
            assert exc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            slow.cancel()
            deadline = time.monotonic() + 2
            while server.unary_calls and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert server.unary_calls == 0
            watch.cancel()
            snapshot.cancel()

    run(scenario)


class _ProbeConnection:
    """A raw HTTP/2 connection that sends Put requests with key ``probe``."""

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(LOCAL, port)
        self.writer.write(PREFACE + h2frame(H_SETTINGS, 0, 0))
        self.decoder = hpack.Decoder()

    async def ping(self) -> None:
        """A PING, answered: a read on the server that completes no call."""
        self.writer.write(h2frame(H_PING, 0, 0, b"12345678"))
        while (got := await read_frame(self.reader)) is not None:
            if got[0] == H_PING and got[1] & 0x1:
                return
        raise AssertionError("connection closed before the PING ACK")

    async def puts(self, streams: tuple[int, ...]) -> None:
        """The requests on ``streams``, all in one write; returns once each ended with
        status 0."""
        body = grpc_message(rpcpb.PutRequest(key=b"probe", value=b"v").SerializeToString())
        headers = grpc_request_headers("/etcdserverpb.KV/Put")
        self.writer.write(
            b"".join(
                h2frame(H_HEADERS, 0x4, sid, headers) + h2frame(H_DATA, 0x1, sid, body)
                for sid in streams
            )
        )
        ended: set[int] = set()
        while ended != set(streams):
            got = await read_frame(self.reader)
            assert got is not None, "connection closed"
            ftype, flags, sid, payload = got
            if ftype == H_HEADERS:
                fields = {str(k): str(v) for k, v in self.decoder.decode(payload, raw=False)}
                if flags & 0x1:
                    assert fields.get("grpc-status") == "0", fields
                    ended.add(sid)


def test_a_lone_unary_call_starts_in_the_read_others_as_tasks() -> None:
    """A lone call (the only one in progress, on the connection of the call before
    it) runs up to its first wait in the callback of the read that completed it (no
    task yet), and in a task after that wait. Three requests in one write are all
    counted as in progress before any starts, and start as tasks; so does a call on
    a connection other than the last call's (a read of another connection that starts
    no call does not count). Every call is answered and the count returns to zero."""

    async def scenario() -> None:
        async with serving() as (server, services, port):
            services.kv.server = server
            first, second = _ProbeConnection(), _ProbeConnection()
            await first.open(port)
            await second.open(port)
            await first.puts((1,))  # a new connection: not known to wait for answers
            await first.puts((3,))
            assert services.kv.probes == [(False, 1), (False, 1), (True, 1), (False, 1)]
            services.kv.probes.clear()
            await second.ping()  # another connection's read without a call changes nothing
            await first.puts((5,))
            assert services.kv.probes == [(True, 1), (False, 1)]
            services.kv.probes.clear()
            await first.puts((7, 9, 11))
            assert services.kv.probes == [(False, 3)] * 6
            services.kv.probes.clear()
            await second.puts((1,))
            assert services.kv.probes == [(False, 1)] * 2
            first.writer.close()
            second.writer.close()
            assert server.unary_calls == 0

    run(scenario)


def test_a_call_completed_by_a_read_that_then_breaks_the_connection_is_not_counted() -> None:
    """A read that completes a Put and then breaks the protocol (DATA on stream 0): the
    connection closes, the call never starts, and it is not left counted as in
    progress (which would keep the store from taking the next request as lone)."""

    async def scenario() -> None:
        async with serving() as (server, services, port):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            body = grpc_message(rpcpb.PutRequest(key=b"probe", value=b"v").SerializeToString())
            writer.write(
                PREFACE
                + h2frame(H_SETTINGS, 0, 0)
                + h2frame(H_HEADERS, 0x4, 1, grpc_request_headers("/etcdserverpb.KV/Put"))
                + h2frame(H_DATA, 0x1, 1, body)
                + h2frame(H_DATA, 0x0, 0, b"x")
            )
            while (got := await read_frame(reader)) is not None and got[0] != H_GOAWAY:
                pass
            assert got is not None, "closed without a GOAWAY"
            writer.close()
            assert server.unary_calls == 0
            assert services.kv.probes == []

    run(scenario)


# --- --max-concurrent-streams and --grpc-keepalive-* (grpc-go's rules, as etcd sets them) --

H_WINDOW_UPDATE, SETTINGS_MAX_CONCURRENT_STREAMS = 8, 3
REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x7, 0xB


class RawClient:
    """A hand-driven HTTP/2 client: frames out, frames in (stream 0 frames kept apart)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.settings: dict[int, int] = {}

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(LOCAL, port)
        client = cls(reader, writer)
        writer.write(PREFACE + h2frame(H_SETTINGS, 0, 0))
        got = await read_frame(reader)
        assert got is not None
        assert got[0] == H_SETTINGS
        payload = got[3]
        for i in range(0, len(payload), 6):
            key, value = struct.unpack(">HI", payload[i : i + 6])
            client.settings[key] = value
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def ping(self, data: bytes = b"pingpong") -> None:
        self.writer.write(h2frame(H_PING, 0, 0, data))

    def open_watch(self, sid: int) -> None:
        """A Watch call (bidi, stays open) with one request: its echo comes back."""
        headers = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/etcdserverpb.Watch/Watch"),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        request = rpcpb.WatchRequest(create_request=rpcpb.WatchCreateRequest(key=b"w%d" % sid))
        self.writer.write(
            h2frame(H_HEADERS, 0x4, sid, headers)
            + h2frame(H_DATA, 0, sid, grpc_message(request.SerializeToString()))
        )

    def end(self, sid: int) -> None:
        self.writer.write(h2frame(H_DATA, 0x1, sid))

    async def frame(self, timeout: float = 5.0) -> tuple[int, int, int, bytes] | None:
        """The next frame but SETTINGS ACKs and WINDOW_UPDATEs; None when closed."""
        while True:
            got = await asyncio.wait_for(read_frame(self.reader), timeout)
            if got is None:
                return None
            if got[0] == H_WINDOW_UPDATE or (got[0] == H_SETTINGS and got[1] & 0x1):
                continue
            return got

    async def until(self, ftype: int, timeout: float = 5.0) -> tuple[int, int, int, bytes] | None:
        """Skip frames up to the next one of ``ftype`` (None: the connection closed)."""
        while (got := await self.frame(timeout)) is not None:
            if got[0] == ftype:
                return got
        return None

    def close(self) -> None:
        self.writer.close()


def test_max_concurrent_streams_is_announced_and_an_extra_stream_is_refused() -> None:
    """RFC 9113 5.1.2, as grpc-go: SETTINGS_MAX_CONCURRENT_STREAMS, then RST_STREAM
    REFUSED_STREAM for a stream past it; once one ends, a new one is served."""

    async def scenario() -> None:
        async with serving(options=Options(max_streams=2)) as (_, _, port):
            client = await RawClient.connect(port)
            assert client.settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 2
            for sid in (1, 3, 5):
                client.open_watch(sid)
            got: dict[int, list[tuple[int, bytes]]] = {1: [], 3: [], 5: []}
            while not (got[1] and got[3] and got[5]):
                frame = await client.frame()
                assert frame is not None, "connection closed"
                if frame[2] in got:
                    got[frame[2]].append((frame[0], frame[3]))
            assert got[5] == [(H_RST, struct.pack(">I", REFUSED_STREAM))]
            assert [got[1][0][0], got[3][0][0]] == [H_HEADERS, H_HEADERS]
            # stream 1 ends (the handler answers with trailers): room for stream 7
            client.end(1)
            while (frame := await client.frame()) is not None and not (
                frame[2] == 1 and frame[0] == H_HEADERS and frame[1] & 0x1
            ):
                pass
            client.open_watch(7)
            frame = await client.frame()
            assert frame is not None
            assert (frame[2], frame[0]) == (7, H_HEADERS)
            client.close()

    run(scenario)


def test_default_max_concurrent_streams_is_etcds_and_zero_sends_no_limit() -> None:
    async def scenario() -> None:
        async with serving() as (_, _, port):
            client = await RawClient.connect(port)
            assert client.settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 2**32 - 1
            client.close()
        async with serving(options=Options(max_streams=0)) as (_, _, port):
            client = await RawClient.connect(port)
            assert SETTINGS_MAX_CONCURRENT_STREAMS not in client.settings
            client.close()

    run(scenario)


def test_grpcio_client_queues_calls_above_max_concurrent_streams() -> None:
    """grpcio honours the setting: 6 slow calls over a limit of 2 all succeed, at most
    2 running on the server at a time."""

    async def scenario() -> None:
        async with serving(options=Options(max_streams=2)) as (_, services, port):
            async with channel(port) as ch:
                stub = rpcgrpc.KVStub(ch)
                request = rpcpb.RangeRequest(key=b"sleep", range_end=b"0.2")
                answers = await asyncio.gather(*(stub.Range(request) for _ in range(6)))
            assert [a.count for a in answers] == [7] * 6
            assert services.kv.peak_sleeping == 2

    run(scenario)


def test_pings_without_streams_get_goaway_too_many_pings() -> None:
    """grpc-go with etcd's PermitWithoutStream=false: without streams, any ping within
    2h of the previous one is a strike; the third strike (the fourth ping) is answered,
    then GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and the connection closes."""

    async def scenario() -> None:
        async with serving() as (_, _, port):
            client = await RawClient.connect(port)
            for i in range(3):
                client.ping(b"ping%04d" % i)
            for i in range(3):
                ack = await client.until(H_PING)
                assert ack is not None
                assert (ack[1], ack[3]) == (0x1, b"ping%04d" % i)
            client.ping(b"ping0003")
            ack = await client.until(H_PING)
            assert ack is not None
            assert ack[3] == b"ping0003"
            goaway = await client.until(H_GOAWAY)
            assert goaway is not None, "no GOAWAY"
            code = struct.unpack(">I", goaway[3][4:8])[0]
            assert (code, goaway[3][8:]) == (ENHANCE_YOUR_CALM, b"too_many_pings")
            assert await client.frame() is None  # closed
            client.close()

    run(scenario)


def test_pings_with_a_stream_open_are_allowed_at_the_min_time_not_faster() -> None:
    """With a stream open, pings at least ``ping_min_time`` apart are fine (as many
    as the client likes); closer together, the third strike ends the connection."""

    async def scenario() -> None:
        options = Options(ping_min_time=0.2)
        async with serving(options=options) as (_, _, port):
            client = await RawClient.connect(port)
            client.open_watch(1)
            assert (await client.until(H_DATA)) is not None  # the echo
            for i in range(6):
                await asyncio.sleep(0.25)
                client.ping(b"slow%04d" % i)
                ack = await client.until(H_PING)
                assert ack is not None, f"closed after slow ping {i}"
            for i in range(4):
                client.ping(b"fast%04d" % i)
            goaway = await client.until(H_GOAWAY)
            assert goaway is not None
            assert goaway[3][8:] == b"too_many_pings"
            client.close()

    run(scenario)


def test_pings_after_each_response_are_no_strikes() -> None:
    """grpc-go forgets strikes once HEADERS or DATA went out (a BDP ping follows the
    data it measures): a client pinging right after every answer is never cut off."""

    async def scenario() -> None:
        async with serving() as (_, _, port):
            client = await RawClient.connect(port)
            for sid in range(1, 20, 2):
                client.open_watch(sid)
                client.end(sid)
                while (frame := await client.frame()) is not None and not (
                    frame[2] == sid and frame[0] == H_HEADERS and frame[1] & 0x1
                ):
                    pass
                assert frame is not None, f"closed before stream {sid} ended"
                client.ping()
                ack = await client.until(H_PING)
                assert ack is not None, f"closed after the ping following stream {sid}"
            client.close()

    run(scenario)


def test_grpcio_keepalive_at_the_allowed_rate_keeps_its_connection() -> None:
    """grpcio pinging every 300 ms (no limit on pings without data) during a long watch
    against a 200 ms minimum: the call goes on and ends OK."""

    async def scenario() -> None:
        async with (
            serving(options=Options(ping_min_time=0.2)) as (_, _, port),
            channel(
                port,
                ("grpc.keepalive_time_ms", 300),
                ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 0),
            ) as ch,
        ):
            queue: asyncio.Queue[Any] = asyncio.Queue()

            async def requests() -> AsyncIterator[Any]:
                while (item := await queue.get()) is not None:
                    yield item

            call = rpcgrpc.WatchStub(ch).Watch(requests())
            echoes = []
            for i in range(4):
                key = b"k%d" % i
                await queue.put(rpcpb.WatchRequest(create_request={"key": key}))
                echoes.append((await call.read()).cancel_reason)
                await asyncio.sleep(0.6)
            await queue.put(None)
            assert echoes == ["k0", "k1", "k2", "k3"]
            assert await call.code() == grpc.StatusCode.OK

    run(scenario)


def test_a_connection_that_does_not_answer_pings_is_closed() -> None:
    """After ``keepalive_interval`` without reading anything the server pings; with no
    answer within ``keepalive_timeout`` it closes the connection."""

    async def scenario() -> None:
        options = Options(keepalive_interval=0.3, keepalive_timeout=0.3)
        async with serving(options=options) as (_, _, port):
            loop = asyncio.get_running_loop()
            started = loop.time()
            client = await RawClient.connect(port)
            ping = await client.until(H_PING)
            assert ping is not None, "no keepalive ping"
            assert ping[1] == 0
            pinged = loop.time() - started
            assert await client.frame() is None
            closed = loop.time() - started
            client.close()
            assert 0.25 < pinged < 0.3 + 0.3, pinged
            assert closed < 0.3 + 0.3 + 0.4, closed

    run(scenario)


def test_a_connection_answering_pings_stays_open() -> None:
    async def scenario() -> None:
        options = Options(keepalive_interval=0.2, keepalive_timeout=0.2)
        async with serving(options=options) as (_, _, port):
            client = await RawClient.connect(port)
            for _ in range(5):
                ping = await client.until(H_PING)
                assert ping is not None, "closed though the pings were answered"
                client.send(h2frame(H_PING, 0x1, 0, ping[3]))
            client.open_watch(1)
            assert (await client.until(H_DATA)) is not None
            client.close()

    run(scenario)


def test_health_watch_hears_each_change() -> None:
    """``Watch`` sends the status, then every change of it, until cancelled."""

    async def scenario() -> None:
        health = HealthService()
        server = GrpcServer(max_receive_message_length=1 << 20)
        healthgrpc.add_HealthServicer_to_server(health, server)
        port = free_port()
        assert server.add_insecure_port(f"{LOCAL}:{port}") == port
        await server.start()
        try:
            async with channel(port) as ch:
                stream = healthgrpc.HealthStub(ch).Watch(healthpb.HealthCheckRequest())
                got = [(await stream.read()).status]
                health.set_status("", NOT_SERVING)
                got.append((await stream.read()).status)
                health.set_status("", NOT_SERVING)  # no change: nothing sent
                health.set_status("", SERVING)
                got.append((await stream.read()).status)
                stream.cancel()
                assert got == [SERVING, NOT_SERVING, SERVING]
        finally:
            await server.stop(None)

    run(scenario)
