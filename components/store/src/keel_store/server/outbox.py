"""Raft messages on their way to peers, and the one liberty taken with them: a leader's
commit notice may wait a moment for the next APPEND to the same follower.

When a quorum acknowledges an entry, the Raft core tells the followers the new commit
index with an APPEND without entries, a *commit notice* (``Message.quiet``: accepted,
it is not answered). Raft needs the follower to learn the index only eventually (the
paper carries it on the next AppendEntries or heartbeat), but a follower applies, and
so answers its watchers and the clients whose writes it forwarded, only once it knows.

So a notice waits up to :data:`NOTICE_DELAY_S` for the next APPEND to that follower,
which carries the same or a later commit index and replaces it; a follower that
forwarded a write gets the notice committing it at once. Under steady writes the
commit index rides on the next write's APPEND: each write costs the followers one
message instead of two, at the moment the leader answers its client. Measured with
``benchmarks/store_profile.py`` and ``nox -s bench -- store`` (docs/store.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from keel_store.raft import Message, MessageType
from keel_store.server import transport

log = logging.getLogger("keel_store.outbox")

NOTICE_DELAY_S = 0.002
"""Longest a commit notice waits: what an idle follower's watchers may lag the leader."""


class Outbox:
    """Encodes Raft messages onto the peer transport, holding commit notices back."""

    def __init__(self, peers: transport.PeerTransport, delay: float = NOTICE_DELAY_S) -> None:
        self.peers = peers
        self.delay = delay
        self._held: dict[int, Message] = {}
        """Follower ID -> its newest commit notice not sent yet."""
        self._timer: asyncio.TimerHandle | None = None
        self.on_snapshot_sent: Callable[[int, int], None] | None = None
        """Called with (peer, index) once a snapshot was written out to the peer."""
        self._forwarded: dict[int, int] = {}
        """Follower ID -> index of the last write it forwarded to us (this leader)."""

    def send(self, m: Message) -> None:
        """Send ``m`` now, or hold it if it is a commit notice nobody waits for."""
        if m.type is MessageType.APPEND:
            waiting = self._forwarded.get(m.to)
            urgent = waiting is not None and m.commit >= waiting
            if urgent:
                del self._forwarded[m.to]
            if m.quiet and not urgent:
                self._held[m.to] = m
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)
                return
            if m.to in self._held:  # m carries the same or a later commit index
                del self._held[m.to]
                if not self._held:
                    self._cancel_timer()
        if m.snapshot is not None:
            self._send_snapshot(m)
            return
        self.peers.send(m.to, transport.RAFT, transport.encode_message(m))

    def _send_snapshot(self, m: Message) -> None:
        """A snapshot (maybe hundreds of MB) goes as its buffers, cut into parts and
        never joined; not again while a copy is still being written to that peer (the
        Raft core sends it again once its wait for an answer runs out). Once written
        out, ``on_snapshot_sent(peer, index)`` is called."""
        assert m.snapshot is not None
        index, size = m.snapshot.meta.index, len(m.snapshot.data)
        if self.peers.sending_large(m.to):
            log.info(
                "snapshot at index %d for %x: the last one is still being written", index, m.to
            )
            return
        log.info("sending the snapshot at index %d (%d bytes) to %x", index, size, m.to)
        done = self.on_snapshot_sent
        self.peers.send(
            m.to,
            transport.RAFT,
            transport.encode_buffers(m),
            on_sent=None if done is None else lambda: done(m.to, index),
        )

    def forwarded(self, peer: int, index: int) -> None:
        """``peer`` forwarded a write, proposed here at ``index``: the notice that
        commits it goes out at once."""
        self._forwarded[peer] = index

    @property
    def holding(self) -> bool:
        """Whether any commit notice is held back now."""
        return bool(self._held)

    def flush(self) -> None:
        """Send every held notice."""
        self._cancel_timer()
        held, self._held = self._held, {}
        for m in held.values():
            self.peers.send(m.to, transport.RAFT, transport.encode_message(m))

    def close(self) -> None:
        """Drop held notices (the member is stopping; followers learn from the next
        leader)."""
        self._cancel_timer()
        self._held.clear()
        self._forwarded.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
