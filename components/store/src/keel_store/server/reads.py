"""Linearizable reads for a member: ReadIndex rounds, batched, forwarded by followers.

Every read waiting when the loop turns joins one round: the leader confirms its
leadership with a quorum (Raft's ReadIndex) and the read is served once this member
has applied up to the index the round returned. A follower asks the leader for the
index; a round whose answer does not come within an election timeout is retried.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from keel_store.mvcc import errors
from keel_store.raft import ProposalDroppedError, RaftNode, ReadState
from keel_store.server import transport
from keel_store.server.calls import _CALL, CALL_READ_INDEX

if TYPE_CHECKING:
    from keel_store.mvcc.store import StateMachine
    from keel_store.server.config import NodeConfig


class ReadIndexMixin:
    """Read barriers for :class:`~keel_store.server.node.StoreNode`."""

    raft: RaftNode
    sm: StateMachine
    config: NodeConfig
    transport: transport.PeerTransport
    _wake: asyncio.Event
    _reads: list[asyncio.Future[None]]
    _read_rounds: dict[bytes, list[asyncio.Future[None]]]
    _remote_reads: dict[bytes, tuple[int, int]]
    _apply_waits: list[tuple[int, asyncio.Future[None]]]
    _calls: dict[int, asyncio.Future[bytes]]

    @property
    def is_leader(self) -> bool:
        raise NotImplementedError

    def _submit(self, action: Callable[[], None]) -> None:
        raise NotImplementedError

    async def read_barrier(self) -> None:
        """Wait until this member has applied everything committed before the call."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._reads.append(fut)
        self._wake.set()
        # A timer rather than asyncio.wait_for, whose extra future costs a loop turn.
        timer = loop.call_later(self.config.request_timeout, _time_out, fut)
        try:
            await fut
        finally:
            timer.cancel()

    def _start_read_round(self) -> None:
        if not self._reads:
            return
        leader = self.raft.leader
        if leader == 0:
            asyncio.get_running_loop().call_later(self.config.heartbeat_ms / 1000, self._wake.set)
            return
        batch, self._reads = self._reads, []
        ctx = os.urandom(8)
        self._read_rounds[ctx] = batch
        if self.is_leader:
            try:
                self.raft.read_index(ctx)
            except ProposalDroppedError:
                self._reads.extend(self._read_rounds.pop(ctx))
                asyncio.get_running_loop().call_later(0.01, self._wake.set)
        else:
            call_id = int.from_bytes(ctx, "big")
            fut = asyncio.get_running_loop().create_future()
            self._calls[call_id] = fut
            self.transport.send(leader, transport.CALL, _CALL.pack(call_id, CALL_READ_INDEX))
            fut.add_done_callback(lambda f: self._remote_read_done(ctx, f))
            # A lost request or reply must not strand the reads: give up on this round
            # after an election timeout and start another.
            asyncio.get_running_loop().call_later(
                self.config.election_ms / 1000,
                lambda: None if fut.done() else fut.set_exception(errors.TIMEOUT),
            )

    def _remote_read_done(self, ctx: bytes, fut: asyncio.Future[bytes]) -> None:
        self._calls.pop(int.from_bytes(ctx, "big"), None)
        batch = self._read_rounds.pop(ctx, [])
        if fut.cancelled() or fut.exception() is not None:
            self._reads.extend(batch)
            self._wake.set()
            return
        index = struct.unpack(">Q", fut.result())[0]
        self._wait_applied(index, batch)

    def _read_ready(self, rs: ReadState) -> None:
        remote = self._remote_reads.pop(rs.context, None)
        if remote is not None:
            peer, call_id = remote
            self.transport.send(
                peer, transport.REPLY, struct.pack(">Q", call_id) + struct.pack(">Q", rs.index)
            )
            return
        self._wait_applied(rs.index, self._read_rounds.pop(rs.context, []))

    def _wait_applied(self, index: int, batch: list[asyncio.Future[None]]) -> None:
        for fut in batch:
            self._apply_waits.append((index, fut))
        self._release_apply_waits()

    def _release_apply_waits(self) -> None:
        applied = self.sm.applied_index
        still = []
        for index, fut in self._apply_waits:
            if index <= applied:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((index, fut))
        self._apply_waits = still

    def _remote_read_index(self, ctx: bytes, attempts: int) -> None:
        """ReadIndex for a follower; a new leader must first commit an entry of its term,
        so retry for a little while instead of dropping the follower's read."""
        if ctx not in self._remote_reads:
            return
        try:
            self.raft.read_index(ctx)
        except ProposalDroppedError:
            if attempts > 0 and self.is_leader:
                asyncio.get_running_loop().call_later(
                    0.02, lambda: self._submit(lambda: self._remote_read_index(ctx, attempts - 1))
                )
            else:
                self._remote_reads.pop(ctx, None)


def _time_out(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(errors.TIMEOUT)
