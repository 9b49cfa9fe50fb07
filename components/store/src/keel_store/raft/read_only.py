"""ReadIndex bookkeeping: reads waiting for a quorum to confirm the leader's leadership.

A read is recorded with the leader's commit index at the time it arrived, then a round of
heartbeats carrying the read's context goes out. Once a majority of voters (the leader
included) answers that round, no newer leader can have existed when the read arrived, so
the read (and every read queued before it) may be served at that index.
"""

from __future__ import annotations

from keel_store.raft.membership import has_quorum
from keel_store.raft.messages import ReadState


class PendingReads:
    """Reads waiting for their heartbeat round, in arrival order."""

    __slots__ = ("_acks", "_index", "_queue")

    def __init__(self) -> None:
        self._index: dict[bytes, int] = {}
        self._acks: dict[bytes, set[int]] = {}
        self._queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, context: bytes) -> bool:
        return context in self._index

    def add(self, context: bytes, index: int, leader: int) -> None:
        """Queue a read that arrived when the commit index was ``index``."""
        self._index[context] = index
        self._acks[context] = {leader}
        self._queue.append(context)

    def ack(self, context: bytes, voter: int, voters: tuple[int, ...]) -> list[ReadState]:
        """``voter`` answered the round of ``context``; reads now confirmed, in order."""
        acks = self._acks.get(context)
        if acks is None:
            return []
        acks.add(voter)
        if not has_quorum(voters, acks):
            return []
        upto = self._queue.index(context) + 1
        done, self._queue = self._queue[:upto], self._queue[upto:]
        released = []
        for ctx in done:
            released.append(ReadState(self._index.pop(ctx), ctx))
            del self._acks[ctx]
        return released

    def clear(self) -> None:
        """Leadership changed: pending reads are dropped (their clients time out)."""
        self._index.clear()
        self._acks.clear()
        self._queue.clear()
