"""The peer transport over real loopback sockets: order, reconnects, direct writes."""

from __future__ import annotations

import asyncio

from keel_core.testing import free_port
from keel_store.server import transport


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


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
