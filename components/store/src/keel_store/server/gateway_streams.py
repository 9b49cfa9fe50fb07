"""The JSON gateway's request bodies and its streaming calls, as etcd's grpc-gateway.

Bodies come with ``Content-Length`` or ``Transfer-Encoding: chunked``. A streaming
call's body is a sequence of JSON objects, each one request, decoded as they arrive
(so a client can send a watch's create, then later a cancel or a progress request on
the same body); the answers go back chunked, one ``{"result": ...}`` line each.

* ``/v3/watch`` and ``/v3/lease/keepalive`` are both ways: the end of the body is the
  client closing its side, which ends a keep-alive stream but not a watch stream (as
  with etcd, over gRPC too). A first request that is not valid JSON is answered 500
  with ``{"error", "message", "code": 2}``; a later one ends the requests.
* ``/v3/maintenance/snapshot`` sends a stream for one request.
* The stream stops when the client disconnects. A call that fails answers
  ``{"error": {"grpc_code", "http_code", "message", "http_status"}}``, with that HTTP
  status if nothing was sent yet.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from keel_store.server import gateway_json
from keel_store.server.gateway_json import to_message

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # What Debian's etcd 3.4.23 answers (grpc-gateway 1.9.5, vendored upstream, says 400).
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
"""grpc-gateway's HTTP status for a gRPC code (anything else: 500)."""


def http_status(code: grpc.StatusCode) -> int:
    """grpc-gateway's HTTPStatusFromCode."""
    return HTTP_STATUS.get(code, 500)


def status_line(status: int) -> str:
    """``200 OK``: the status and Go's text for it."""
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} status code {status}"


def error_doc(code: int, message: str) -> bytes:
    """grpc-gateway's error body (its errorBody, marshalled by jsonpb: compact, in order)."""
    return json_doc({"error": message, "message": message, "code": code})


class BodyTooLarge(ValueError):
    """A request body (or one request of a streaming body) over the gateway's limit:
    ``size`` bytes (at least) against ``limit``."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes is over {limit}")
        self.size = size
        self.limit = limit


class CallError(Exception):
    """A service ended the call with a gRPC status (the gateway's ``abort``)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def to_json(message: Any) -> bytes:
    """A response in proto3 JSON with the proto field names, compact."""
    return json_doc(json_format.MessageToDict(message, preserving_proto_field_name=True))


def json_doc(doc: dict[str, Any]) -> bytes:
    """A JSON document as the gateway writes one: compact, keys in order."""
    return json.dumps(doc, separators=(",", ":")).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --- request bodies -------------------------------------------------------------------------


async def body_chunks(
    reader: asyncio.StreamReader, headers: dict[str, str], limit: int
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (chunked) or at once (``Content-Length``).

    Raises :class:`BodyTooLarge` for a declared length over ``limit``; a chunked
    body's total is left to the consumer (a stream may go on for long).
    """
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(size_line, None)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size > limit:
                raise BodyTooLarge("a chunk", size, limit)
            if size == 0:
                # Trailer lines, up to the empty line that ends the body.
                while await reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after the chunk's data
            yield data
    else:
        length = int(headers.get("content-length", "0"))
        if length > limit:
            raise BodyTooLarge("a body", length, limit)
        if length:
            yield await reader.readexactly(length)


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], limit: int) -> bytes:
    """The whole body of a unary call (at most ``limit`` bytes)."""
    parts: list[bytes] = []
    size = 0
    async for data in body_chunks(reader, headers, limit):
        size += len(data)
        if size > limit:
            raise BodyTooLarge("a body", size, limit)
        parts.append(data)
    return b"".join(parts)


_IN_CONTAINER = re.compile(r'["{}\[\]]')
_IN_STRING = re.compile(r'["\\]')
_SCALAR_END = re.compile(r'[\s{}\[\]",:]')
_NOT_SPACE = re.compile(r"\S")
YIELD_EVERY = 64
"""Values decoded between two turns given back to the event loop."""


class _Splitter:
    """Finds where each top-level JSON value of a growing text ends, looking at every
    character once (a value sent a byte at a time costs what its bytes cost, not their
    square): brackets outside strings, quotes and escapes inside them."""

    def __init__(self) -> None:
        self.start = -1  # where the value being scanned starts (-1: between values)
        self.pos = 0  # the next character to look at
        self.depth = 0
        self.in_string = False
        self.escape = False

    def next_end(self, text: str, final: bool) -> int | None:
        """The end of the next complete value in ``text`` (from :attr:`start`), or None
        if more text is needed (at the end of the body, ``final``: what is left)."""
        pos = self.pos
        if self.start < 0:
            found = _NOT_SPACE.search(text, pos)
            if found is None:
                self.pos = len(text)
                return None
            pos = self.start = found.start()
            char = text[pos]
            if char in "{[":
                self.depth, pos = 1, pos + 1
            elif char == '"':
                self.in_string, pos = True, pos + 1
            else:
                self.depth = -1  # a scalar: it ends at a delimiter
        while True:
            if self.depth < 0:
                found = _SCALAR_END.search(text, pos + 1 if pos == self.start else pos)
                if found is None:
                    self.pos = len(text)
                    return len(text) if final else None
                return self._done(found.start())
            if self.in_string:
                if self.escape:
                    if pos >= len(text):
                        break
                    self.escape, pos = False, pos + 1
                found = _IN_STRING.search(text, pos)
                if found is None:
                    break
                pos = found.end()
                if found.group() == "\\":
                    self.escape = True
                    continue
                self.in_string = False
                if self.depth == 0:
                    return self._done(pos)
                continue
            found = _IN_CONTAINER.search(text, pos)
            if found is None:
                break
            pos = found.end()
            char = found.group()
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    return self._done(pos)
        self.pos = len(text)
        return len(text) if final else None

    def _done(self, end: int) -> int:
        self.start, self.pos, self.depth = -1, end, 0
        return end

    def rebase(self, offset: int) -> None:
        """The text lost its first ``offset`` characters."""
        self.pos -= offset
        if self.start >= 0:
            self.start -= offset


async def json_values(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[object]:
    """The JSON values of a streaming body, each as soon as it is complete.

    Raises ``ValueError`` (``json.JSONDecodeError``) for a value that is not JSON as
    soon as its end is seen (brackets that do not match end it), and
    :class:`BodyTooLarge` for a value over ``limit`` characters. Every
    :data:`YIELD_EVERY` values the event loop gets a turn.
    """
    utf8 = codecs.getincrementaldecoder("utf-8")()
    splitter = _Splitter()
    text = ""
    count = 0
    final = False
    iterator = chunks.__aiter__()
    while not final:
        try:
            text += utf8.decode(await anext(iterator))
        except StopAsyncIteration:
            text += utf8.decode(b"", final=True)
            final = True
        used = 0
        while (end := splitter.next_end(text, final)) is not None:
            segment = text[used:end]
            used = end
            if segment.strip():
                value, _ = gateway_json.DECODER.raw_decode(
                    segment, len(segment) - len(segment.lstrip())
                )
                yield value
                count += 1
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if end >= len(text):
                break
        if used:
            text = text[used:]
            splitter.rebase(used)
        if len(text) > limit:
            raise BodyTooLarge("a request", len(text), limit)


def parse(value: object, request_type: type[Any]) -> Any:
    """One decoded JSON value as the call's request message (as a unary call's body)."""
    return to_message(value, request_type)


# --- the streaming call ----------------------------------------------------------------------


def stream_error(code: grpc.StatusCode, message: str) -> tuple[int, bytes]:
    """grpc-gateway's answer for a stream that failed: HTTP status and error object."""
    status = http_status(code)
    doc = {
        "error": {
            "grpc_code": code.value[0],
            "http_code": status,
            "message": message,
            "http_status": http.HTTPStatus(status).phrase,
        }
    }
    return status, json_doc(doc)


async def serve_stream(
    handler: Callable[[Any, Any], AsyncIterator[Any]],
    request_type: type[Any],
    *,
    both_ways: bool,
    context: Any,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: dict[str, str],
    extra: bytes,
    limit: int,
) -> None:
    """Run one streaming call over an HTTP/1.1 request and its answer.

    ``handler``: the service method, called with the requests (``both_ways``) or with
    the one request, and ``context``. ``extra``: more header lines for the answer.
    """
    values = json_values(body_chunks(reader, headers, limit), limit)
    first: Any = None
    try:
        value = await anext(values, None)
        if value is not None:
            first = parse(value, request_type)
    except ValueError as exc:
        # grpc-gateway: a stream's first request that does not decode is Unknown (500);
        # a server stream's request is decoded as a unary call's (400).
        code = 2 if both_ways else 3
        message = str(exc)
        body = error_doc(code, message)
        writer.write(
            f"HTTP/1.1 {status_line(500 if both_ways else 400)}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + extra
            + b"\r\n"
            + body
        )
        await writer.drain()
        return

    body_done = asyncio.Event()

    async def requests() -> AsyncIterator[Any]:
        try:
            if first is not None:
                yield first
            async for value in values:
                yield parse(value, request_type)
        except ValueError:
            pass  # as grpc-gateway: a request that does not decode ends the requests
        finally:
            body_done.set()

    if both_ways:
        responses = handler(requests(), context)
    else:
        body_done.set()
        responses = handler(first if first is not None else request_type(), context)
    pump = asyncio.create_task(_pump(responses, writer, extra))

    async def until_gone() -> None:
        # Once the body is read, the next thing from the client is its leaving.
        await body_done.wait()
        with contextlib.suppress(Exception):
            while await reader.read(1 << 16):
                pass
        pump.cancel()

    monitor = asyncio.create_task(until_gone())
    try:
        await asyncio.wait({pump})
    finally:
        for task in (monitor, pump):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _pump(responses: AsyncIterator[Any], writer: asyncio.StreamWriter, extra: bytes) -> None:
    started = False

    def start(status: int) -> None:
        nonlocal started
        started = True
        writer.write(
            f"HTTP/1.1 {status_line(status)}\r\nContent-Type: application/json\r\n".encode()
            + extra
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )

    try:
        try:
            async for resp in responses:
                if not started:
                    start(200)
                writer.write(chunk(b'{"result":' + to_json(resp) + b"}\n"))
                await writer.drain()
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()
    except CallError as exc:
        status, doc = stream_error(exc.code, exc.message)
        if not started:
            start(status)
        writer.write(chunk(doc + b"\n"))
    if not started:
        start(200)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
