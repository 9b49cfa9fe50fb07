"""The outbox: commit notices wait for the next APPEND, a delay, or a forwarded write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from keel_store.raft import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from keel_store.server import transport
from keel_store.server.outbox import Outbox

DELAY = 0.02


class Recorder:
    """Stands in for the peer transport: records what would go on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Message]] = []

    def send(self, to: int, kind: int, payload: bytes) -> None:
        assert kind == transport.RAFT
        self.sent.append((to, transport.decode_message(payload)))


def notice(to: int, commit: int) -> Message:
    return Message(
        MessageType.APPEND, to, 1, 2, log_term=2, index=commit, commit=commit, quiet=True
    )


def append(to: int, index: int, commit: int) -> Message:
    entry = Entry(2, index + 1, EntryType.NORMAL, b"x")
    return Message(
        MessageType.APPEND, to, 1, 2, log_term=2, index=index, entries=(entry,), commit=commit
    )


def outbox() -> tuple[Outbox, Recorder]:
    recorder = Recorder()
    return Outbox(cast(Any, recorder), delay=DELAY), recorder


def test_the_next_append_carries_the_commit_instead_of_the_notice() -> None:
    async def scenario() -> None:
        box, wire = outbox()
        box.send(notice(2, 10))
        box.send(notice(3, 10))
        assert wire.sent == []
        assert box.holding
        box.send(append(2, 10, 10))
        box.send(append(3, 10, 10))
        assert not box.holding
        await asyncio.sleep(DELAY * 3)
        assert [(to, m.entries != ()) for to, m in wire.sent] == [(2, True), (3, True)]

    asyncio.run(scenario())


def test_a_notice_nobody_replaces_leaves_after_the_delay() -> None:
    async def scenario() -> None:
        box, wire = outbox()
        box.send(notice(2, 10))
        box.send(notice(2, 11))  # the newer one replaces the older
        heartbeat = Message(MessageType.HEARTBEAT, 2, 1, 2, commit=11)
        box.send(heartbeat)  # other messages leave at once and replace nothing
        assert [m.type for _, m in wire.sent] == [MessageType.HEARTBEAT]
        await asyncio.sleep(DELAY * 3)
        assert [(to, m.commit, m.quiet) for to, m in wire.sent[1:]] == [(2, 11, True)]

    asyncio.run(scenario())


def test_the_notice_committing_a_forwarded_write_leaves_at_once() -> None:
    async def scenario() -> None:
        box, wire = outbox()
        box.forwarded(3, 12)
        box.send(notice(3, 11))  # does not commit the forwarded write yet: held
        box.send(notice(2, 12))  # 2 forwarded nothing: held
        assert wire.sent == []
        box.send(notice(3, 12))
        assert [(to, m.commit) for to, m in wire.sent] == [(3, 12)]
        box.send(notice(3, 13))  # nothing forwarded any more: held again
        assert len(wire.sent) == 1
        box.flush()
        assert sorted((to, m.commit) for to, m in wire.sent[1:]) == [(2, 12), (3, 13)]

    asyncio.run(scenario())


def test_an_append_that_commits_a_forwarded_write_ends_the_wait() -> None:
    async def scenario() -> None:
        box, wire = outbox()
        box.forwarded(2, 5)
        box.send(append(2, 5, 5))
        box.send(notice(2, 6))
        assert len(wire.sent) == 1  # the notice is held: the forwarded write is committed

    asyncio.run(scenario())


def test_close_drops_what_is_held() -> None:
    async def scenario() -> None:
        box, wire = outbox()
        box.send(notice(2, 10))
        box.close()
        await asyncio.sleep(DELAY * 3)
        assert wire.sent == []

    asyncio.run(scenario())


class BusyWire:
    """A transport with a payload in parts still being written to peer 3."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, Any]] = []

    def sending_large(self, to: int) -> bool:
        return to == 3

    def send(self, to: int, kind: int, payload: Any, *, on_sent: Any = None) -> None:
        self.sent.append((to, b"".join(payload), on_sent))


def test_a_snapshot_goes_as_buffers_once_per_peer_and_reports_when_written() -> None:
    snap = Snapshot(SnapshotMeta(40, 2, ConfState((1, 2, 3))), b"state" * 10)
    wire = BusyWire()
    box = Outbox(cast(Any, wire), delay=DELAY)
    reports: list[tuple[int, int]] = []
    box.on_snapshot_sent = lambda peer, index: reports.append((peer, index))
    for to in (2, 3):
        box.send(Message(MessageType.SNAPSHOT, to, 1, 2, snapshot=snap))
    assert [to for to, _, _ in wire.sent] == [2]  # 3 still gets the last copy
    to, payload, on_sent = wire.sent[0]
    assert transport.decode_message(payload).snapshot == snap
    assert reports == []
    on_sent()
    assert reports == [(2, 40)]
