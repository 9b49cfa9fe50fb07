"""The HTTP/2 connection's send path on its own: frames cut from queued messages, and
answers of one loop step written together."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from keel_store.server import h2wire as w
from keel_store.server.grpc_server import ServicerContext
from keel_store.server.h2conn import Connection, Stream


class _Transport:
    """Collects what the connection writes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def get_extra_info(self, name: str) -> Any:
        return None


def _frames(data: bytes) -> list[tuple[int, int, bytes]]:
    out, at = [], 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 3], "big")
        ftype, stream_id = data[at + 3], struct.unpack(">I", data[at + 5 : at + 9])[0]
        out.append((ftype, stream_id & 0x7FFFFFFF, data[at + 9 : at + 9 + n]))
        at += 9 + n
    return out


def _send(size: int) -> tuple[float, bytes]:
    """Queue one message of ``size`` bytes on a stream whose windows are open; the
    seconds the connection takes to cut it into frames, and the DATA it sent."""

    async def scenario() -> tuple[float, bytes]:
        conn = Connection(dispatcher=None, max_message=1 << 30)  # type: ignore[arg-type]
        transport = _Transport()
        conn.transport = transport  # type: ignore[assignment]
        stream = Stream(conn, 1, [])
        message = bytes(range(256)) * (size // 256)
        conn.send_window = 0  # queued first, then one window update lets it all go
        stream.send(message)
        conn.send_window = stream.send_window = 1 << 31
        started = time.perf_counter()
        conn.drain(stream)
        took = time.perf_counter() - started
        conn._flush()
        frames = _frames(b"".join(transport.chunks))
        data = b"".join(p for t, s, p in frames if t == w.DATA and s == 1)
        assert all(len(p) <= conn.peer_max_frame for t, _, p in frames if t == w.DATA)
        assert data == w.message_prefix(len(message)) + message
        return took, data

    return asyncio.run(scenario())


def test_a_large_queued_message_is_cut_into_frames_in_linear_time() -> None:
    """Cutting each 16 KiB frame off the front of a queued message used to copy the
    rest of it (a 9 MB watch response: ~140 ms on the member's loop); the time must
    grow with the size, not with its square. Best of three runs per size, compared
    with each other (never an absolute time)."""
    small = min(_send(4 << 20)[0] for _ in range(3))
    large = min(_send(32 << 20)[0] for _ in range(3))
    # 8x the bytes: linear ~8x (measured 12x, caches), quadratic ~64x (measured 190x).
    assert large < 32 * small, f"4 MiB: {small * 1e3:.2f} ms, 32 MiB: {large * 1e3:.2f} ms"


def test_answers_made_in_one_loop_step_leave_in_one_write() -> None:
    """Three calls answered (``ServicerContext.reply``) by the same step (an apply
    that completes several requests of one connection) go out in a single write at
    the end of the step, as grpc-go's writer batches what is queued; the next step's
    answer in a write of its own (at once: no other call is left open on the
    connection)."""

    async def scenario() -> list[bytes]:
        conn = Connection(dispatcher=None, max_message=1 << 30)  # type: ignore[arg-type]
        transport = _Transport()
        conn.transport = transport  # type: ignore[assignment]
        streams = [Stream(conn, i, []) for i in (1, 3, 5, 7)]
        for stream in streams:  # requests received whole, still open on our side
            stream.remote_closed = True
            conn.streams[stream.id] = stream
        for stream in streams[:3]:
            ServicerContext(stream, bytes).reply(b"answer")
        assert transport.chunks == []  # nothing written inside the step
        await asyncio.sleep(0)
        ServicerContext(streams[3], bytes).reply(b"later")
        await asyncio.sleep(0)
        return transport.chunks

    chunks = asyncio.run(scenario())
    assert len(chunks) == 2
    first = [s for t, s, _ in _frames(chunks[0]) if t == w.DATA]
    assert first == [1, 3, 5]
    assert [s for t, s, _ in _frames(chunks[1]) if t == w.DATA] == [7]
