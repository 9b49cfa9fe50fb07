"""The peer transport over real loopback sockets: order, reconnects, direct writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from keel_core.testing import free_port
from keel_store.server import transport


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _pair(
    on_frame: Callable[[int, int, bytes], None], clusters: tuple[int, int] = (0, 0)
) -> AsyncIterator[tuple[transport.PeerTransport, transport.PeerTransport]]:
    """Members 1 and 2 (of ``clusters``), both listening, 1 set up to send to 2 (frames
    to ``on_frame``); both closed afterwards."""
    a = transport.PeerTransport(1, "tok", lambda s, k, p: None, cluster_id=clusters[0])
    b = transport.PeerTransport(2, "tok", on_frame, cluster_id=clusters[1])
    url_a, url_b = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    await a.listen(url_a)
    await b.listen(url_b)
    a.set_peers({1: url_a, 2: url_b})
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_frames_arrive_in_order_after_the_peer_starts_late() -> None:
    """A refused connection is retried (what was queued for it is dropped: Raft
    retransmits); once connected, frames written directly keep their order."""

    async def scenario() -> None:
        got: list[bytes] = []
        a = transport.PeerTransport(1, "tok", lambda s, k, p: None)
        b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
        url_a, url_b = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        await a.listen(url_a)
        a.set_peers({1: url_a, 2: url_b})
        try:
            a.send(2, transport.RAFT, b"lost")
            await asyncio.sleep(0.2)  # refused, more than once
            await b.listen(url_b)
            for i in range(500):
                a.send(2, transport.RAFT, b"probe %d" % i)
                await asyncio.sleep(0.01)
                if got:
                    break
            await _until(lambda: 2 in a._writers)
            got.clear()
            for i in range(50):
                a.send(2, transport.RAFT, b"direct %d" % i)
            await _until(lambda: len(got) >= 50)
            assert got == [b"direct %d" % i for i in range(50)]
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_a_dropped_connection_is_replaced() -> None:
    """After the peer restarts, frames flow again over a new connection."""

    async def scenario() -> None:
        got: list[bytes] = []
        a = transport.PeerTransport(1, "tok", lambda s, k, p: None)
        url_a, url_b = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
        await a.listen(url_a)
        await b.listen(url_b)
        a.set_peers({1: url_a, 2: url_b})
        try:
            a.send(2, transport.RAFT, b"one")
            await _until(lambda: got == [b"one"])
            await b.close()
            b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
            await b.listen(url_b)
            # Frames sent into the dead connection may be lost (Raft retransmits); keep
            # sending until one arrives over the new connection.
            for i in range(500):
                a.send(2, transport.RAFT, b"again %d" % i)
                await asyncio.sleep(0.01)
                if len(got) > 1:
                    break
            assert len(got) > 1
            assert got[-1].startswith(b"again")
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_an_idle_connection_to_a_restarted_peer_loses_no_frame() -> None:
    """A follower rarely writes to another follower; when that peer restarts, the old
    connection is replaced at once, so the next frame (a vote request) is not written
    into a dead socket."""

    async def scenario() -> None:
        got: list[bytes] = []
        a = transport.PeerTransport(1, "tok", lambda s, k, p: None)
        url_a, url_b = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
        await a.listen(url_a)
        await b.listen(url_b)
        a.set_peers({1: url_a, 2: url_b})
        try:
            a.send(2, transport.RAFT, b"one")
            await _until(lambda: got == [b"one"])
            old = a._writers[2]
            await b.close()
            b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
            await b.listen(url_b)
            await _until(lambda: a._writers.get(2) not in (None, old))
            a.send(2, transport.RAFT, b"vote")
            await _until(lambda: len(got) > 1)
            assert got == [b"one", b"vote"]
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_losing_the_last_connection_from_a_peer_is_reported() -> None:
    async def scenario() -> None:
        lost: list[int] = []
        a = transport.PeerTransport(1, "tok", lambda s, k, p: None)
        b = transport.PeerTransport(2, "tok", lambda s, k, p: None)
        b.on_peer_lost = lost.append
        url_a, url_b = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        await a.listen(url_a)
        await b.listen(url_b)
        a.set_peers({1: url_a, 2: url_b})
        try:
            a.send(2, transport.RAFT, b"hello")
            await _until(lambda: b._inbound.get(1) == 1)
            assert lost == []
            await a.close()  # as when a's process dies: its connections close
            await _until(lambda: lost == [1])
        finally:
            await b.close()
        assert lost == [1]  # closing b itself reports nothing

    asyncio.run(scenario())


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """The other end closed: EOF, or a reset if it closed with our bytes still unread."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def _hello(token: str, sender: int) -> bytes:
    return _frame(transport.HELLO, json.dumps({"token": token, "from": sender}).encode())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_frames_cut_anywhere_are_reassembled(loop: str) -> None:
    """Frames are cut out of whatever pieces TCP delivers: one byte at a time, odd
    chunks across frame borders, and a 1 MiB frame in 1,000-byte pieces."""
    payloads = [b"", b"a", b"bc" * 700, bytes(range(256)) * 4096, b"end"]
    stream = _hello("tok", 7) + b"".join(_frame(transport.RAFT, p) for p in payloads)

    async def scenario() -> None:
        got: list[tuple[int, int, bytes]] = []
        b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append((s, k, p)))
        url = f"http://127.0.0.1:{free_port()}"
        await b.listen(url)
        try:
            for sizes in ([1] * 4000, [3, 1000, 7], [1000]):
                got.clear()
                _, writer = await asyncio.open_connection(*transport.host_port(url))
                pos, i = 0, 0
                while pos < len(stream):
                    size = sizes[i % len(sizes)]
                    writer.write(stream[pos : pos + size])
                    await writer.drain()
                    if size < 10 and pos < 4000:
                        await asyncio.sleep(0)  # let the server see the small pieces one by one
                    pos += size
                    i += 1
                await _until(lambda: len(got) == len(payloads))
                assert got == [(7, transport.RAFT, p) for p in payloads]
                writer.close()
            assert b.received_bytes[7] == 3 * (len(stream) - len(_hello("tok", 7)))
        finally:
            await b.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_bad_peer_loses_its_own_connection_only(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong cluster token, a malformed hello, an oversize or empty frame, or a frame
    the node cannot decode closes that connection with a warning (no error, no
    traceback); a good peer's connection keeps delivering."""

    def on_frame(sender: int, kind: int, payload: bytes) -> None:
        if payload == b"undecodable":
            raise ValueError("bad message")
        got.append(payload)

    got: list[bytes] = []

    async def scenario() -> None:
        b = transport.PeerTransport(2, "tok", on_frame)
        url = f"http://127.0.0.1:{free_port()}"
        await b.listen(url)
        host, port = transport.host_port(url)
        try:
            _, good = await asyncio.open_connection(host, port)
            good.write(_hello("tok", 1) + _frame(transport.RAFT, b"good 1"))
            await _until(lambda: got == [b"good 1"])
            bad_streams = {
                "wrong token": _hello("other", 3) + _frame(transport.RAFT, b"never"),
                "no hello": _frame(transport.RAFT, b"never"),
                "oversize": _hello("tok", 3) + struct.pack(">IB", transport.MAX_FRAME + 2, 2),
                "empty frame": _hello("tok", 3) + struct.pack(">I", 0) + b"\x00" * 8,
                "undecodable": _hello("tok", 3) + _frame(transport.RAFT, b"undecodable"),
                "hello not an object": _frame(transport.HELLO, b"[1, 2]"),
                "hello without sender": _frame(transport.HELLO, b'{"token": "tok"}'),
                "hello with a null sender": _frame(
                    transport.HELLO, b'{"token": "tok", "from": null}'
                ),
                "hello not JSON": _frame(transport.HELLO, b"\xff{"),
            }
            for name, data in bad_streams.items():
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(data + _frame(transport.RAFT, b"after " + name.encode()))
                assert await _closed_by_peer(reader), name
                writer.close()
            good.write(_frame(transport.RAFT, b"good 2"))
            await _until(lambda: got[-1:] == [b"good 2"])
            assert got == [b"good 1", b"good 2"]
            assert b._inbound == {1: 1}
            good.close()
        finally:
            await b.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("dropping connection" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_payload_larger_than_a_frame_arrives_whole_and_in_order(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload past ``PART_BYTES`` (a snapshot for a member far behind: it was one
    frame, and one past ``MAX_FRAME`` was refused forever) goes in parts and arrives as
    one frame of its kind; frames queued before and sent while it is being written
    keep their places."""
    monkeypatch.setattr(transport, "PART_BYTES", 256 << 10)  # many parts, fast
    big = bytes(range(256)) * (64 * 1024 + 7)  # 64 parts and a bit: the socket pushes back
    exact = b"x" * (2 * transport.PART_BYTES)  # a last part of exactly PART_BYTES

    async def scenario() -> None:
        got: list[tuple[int, bytes]] = []
        async with _pair(lambda s, k, p: got.append((k, p))) as (a, b):
            a.send(2, transport.RAFT, b"hello?")
            await _until(lambda: 2 in a._writers and got)
            a.send(2, transport.RAFT, b"before")
            a.send(2, transport.RAFT, [b"head", big])  # as buffers, as a snapshot goes
            a.send(2, transport.CALL, exact)
            for i in range(20):  # while the parts are being written
                a.send(2, transport.RAFT, b"during %d" % i)
                await asyncio.sleep(0.001)
            await _until(lambda: len(got) == 24)
            assert got[1] == (transport.RAFT, b"before")
            assert got[2] == (transport.RAFT, b"head" + big)
            assert got[3] == (transport.CALL, exact)
            assert got[4:] == [(transport.RAFT, b"during %d" % i) for i in range(20)]
            assert a.sent_bytes[2] == b.received_bytes[1]

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


def test_parts_past_the_largest_message_drop_the_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(transport, "MAX_MESSAGE", 100)
    got: list[bytes] = []

    async def scenario() -> None:
        b = transport.PeerTransport(2, "tok", lambda s, k, p: got.append(p))
        url = f"http://127.0.0.1:{free_port()}"
        await b.listen(url)
        try:
            reader, writer = await asyncio.open_connection(*transport.host_port(url))
            writer.write(
                _hello("tok", 3)
                + _frame(transport.PART, b"p" * 60)
                + _frame(transport.RAFT, b"fits")  # 60 + 4: joined, delivered
                + _frame(transport.PART, b"q" * 60)
                + _frame(transport.PART, b"r" * 60)  # 120 > 100
                + _frame(transport.RAFT, b"never")
            )
            assert await _closed_by_peer(reader)
            writer.close()
        finally:
            await b.close()

    asyncio.run(scenario())
    assert got == [b"p" * 60 + b"fits"]
    assert any("in parts; dropping connection" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "sizes",
    [[1, 25], [10, 0, 10], [8, 8], [3, 5, 8, 1], [0, 17, 0], [33]],
    ids=["short-head", "empty-between", "exact-parts", "many", "empty-ends", "one"],
)
def test_a_message_given_as_buffers_is_cut_into_parts_across_them(
    sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send`` takes a large payload as the buffers it is made of (a snapshot's data
    is never joined to its header): the parts cut across buffer borders, every PART
    frame but the last full, the last frame of the message's own kind."""
    monkeypatch.setattr(transport, "PART_BYTES", 8)
    buffers = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    payload = b"".join(buffers)
    frames = list(transport._Large(transport.RAFT, buffers, len(payload)).frames())
    parsed = [(struct.unpack(">IB", f[:5]), f[5:]) for f in frames]
    assert all(size == len(body) + 1 for (size, _), body in parsed)
    assert [kind for (_, kind), _ in parsed] == [transport.PART] * (len(frames) - 1) + [
        transport.RAFT
    ]
    assert all(len(body) == 8 for _, body in parsed[:-1])
    assert 0 < len(parsed[-1][1]) <= 8
    assert b"".join(body for _, body in parsed) == payload
    assert transport._Large(transport.RAFT, buffers, len(payload)).size() == sum(map(len, frames))


def test_a_payload_in_parts_is_tracked_until_written_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sending_large`` holds from the moment a payload in parts is queued until its
    last part is written (then ``on_sent`` is called, once), and is cleared when the
    connection fails and the queue is dropped (the snapshot may be sent again)."""
    monkeypatch.setattr(transport, "PART_BYTES", 64 << 10)
    big = b"s" * (1 << 20)

    async def scenario() -> None:
        got: list[bytes] = []
        sent: list[str] = []
        async with _pair(lambda s, k, p: got.append(p)) as (a, b):
            a.send(2, transport.RAFT, b"hi")
            await _until(lambda: got == [b"hi"])
            assert not a.sending_large(2)
            a.send(2, transport.RAFT, [big], on_sent=lambda: sent.append("one"))
            assert a.sending_large(2)
            a.send(2, transport.RAFT, [big], on_sent=lambda: sent.append("two"))
            await _until(lambda: len(got) == 3)
            assert not a.sending_large(2)
            assert sent == ["one", "two"]
            await b.close()  # the peer goes away: what is queued for it is dropped
            await _until(lambda: 2 not in a._writers)
            a.send(2, transport.RAFT, [big], on_sent=lambda: sent.append("lost"))
            await _until(lambda: not a.sending_large(2))
            assert sent == ["one", "two"]

    asyncio.run(scenario())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_removed_member_is_refused_and_told_so(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer refuses a removed member's hello with a GONE frame; the member hears it
    (``on_removed``) however many frames it had queued, and a new connection from it
    is refused again. The refusal is logged once per :data:`REFUSED_LOG_EVERY`; frames
    from it are never handed on."""

    async def scenario() -> None:
        got: list[bytes] = []
        told: list[int] = []
        async with _pair(lambda s, k, p: got.append(p)) as (a, b):
            b.is_removed = lambda peer: peer == 1
            a.on_removed = told.append
            for i in range(2000):  # frames behind the hello: no reset may eat GONE
                a.send(2, transport.RAFT, b"x" * 100 + b"%d" % i)
            await _until(lambda: len(told) >= 2)
            assert set(told) == {2}
            assert got == []
            b.is_removed = lambda peer: False  # added again: accepted as before
            await _until(lambda: 2 in a._writers and not a._writers[2].is_closing())
            a.send(2, transport.RAFT, b"back")
            await _until(lambda: got == [b"back"])

    with (
        caplog.at_level(logging.WARNING, logger="keel_store.transport"),
        asyncio.Runner(loop_factory=LOOPS[loop]) as runner,
    ):
        runner.run(scenario())
    refusals = [r for r in caplog.records if "since it was removed" in r.getMessage()]
    assert len(refusals) == 1, refusals


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_member_of_another_cluster_is_refused_and_told_so(
    loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same token, other cluster ID (etcd's ``X-Etcd-Cluster-ID`` check): the peer
    refuses the hello with a MISMATCH frame and hands on none of the frames behind it;
    the sender logs that it was ignored and dials again only every
    :data:`MISMATCH_RETRY` seconds. Each side logs it once per
    :data:`REFUSED_LOG_EVERY`. A hello without a cluster ID (a member that does not
    send one) is accepted, and so is the sender once the IDs agree."""
    dials = 0
    dial = transport._dial

    async def counted(url: str, context: object) -> object:
        nonlocal dials
        dials += 1
        return await dial(url, context)  # type: ignore[arg-type]

    monkeypatch.setattr(transport, "_dial", counted)

    async def scenario() -> None:
        got: list[bytes] = []
        async with _pair(lambda s, k, p: got.append(p), clusters=(0xA1, 0xB2)) as (a, b):
            for i in range(2000):  # frames behind the hello: no reset may eat MISMATCH
                a.send(2, transport.RAFT, b"x" * 100 + b"%d" % i)
            await asyncio.sleep(2.5)
            assert got == []
            assert 2 <= dials <= 4, dials  # at 0, ~1 and ~2 s: not every 50 ms
            host, port = transport.host_port(a.peers[2])
            _, older = await asyncio.open_connection(host, port)
            older.write(_hello("tok", 3) + _frame(transport.RAFT, b"no cluster ID"))
            await _until(lambda: got == [b"no cluster ID"])
            older.close()
            b.cluster_id = 0xA1
            a.send(2, transport.RAFT, b"agreed")  # dropped while a waits to dial again
            await _until(lambda: 2 in a._writers and not a._writers[2].is_closing())
            a.send(2, transport.RAFT, b"agreed")
            await _until(lambda: got[-1:] == [b"agreed"])

    with (
        caplog.at_level(logging.WARNING, logger="keel_store.transport"),
        asyncio.Runner(loop_factory=LOOPS[loop]) as runner,
    ):
        runner.run(scenario())
    here = [
        r.getMessage() for r in caplog.records if "request cluster ID mismatch" in r.getMessage()
    ]
    there = [r.getMessage() for r in caplog.records if "ignored by remote peer" in r.getMessage()]
    assert len(here) == 1, here
    assert "remote peer 1, its cluster a1; this member 2, cluster b2" in here[0]
    assert len(there) == 1, there
    assert "remote peer 2, its cluster b2; this member 1, cluster a1" in there[0]
