"""etcd's ``hasleader`` rules: calls made with clientv3's ``WithRequireLeader`` (etcdctl's
watch, every clientv3 lease keep-alive stream) need a member that has a leader.

etcd's interceptors refuse such a call with ``etcdserver: no leader`` (Unavailable)
when the member has no leader, and cancel the streams already open with the same
status once the member has been without one for three election timeouts in a row
(``monitorLeader``, ``maxNoLeaderCnt``): a client watching through a member cut off
from the cluster is told so, and moves to another member.

One difference in timing needs care. An etcd follower keeps its leader until its own
election timeout runs out after the leader stopped, so a client that reconnects to it
at once (its member was just killed) is accepted, and the election happens later. A
keel-store member notices its leader's connections closing and campaigns at once, so
that same client arrived in the middle of an election and was refused: etcdctl's
watch ended with "watch was canceled (etcdserver: no leader)" on every leader kill.
So a call that arrives within one election timeout of the loss of the leader waits
(for the rest of that timeout at most) for the next one; later, or on a member that
never had a leader, it is refused at once, as etcd refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from keel_store.mvcc import errors

NO_LEADER_TIMEOUTS = 3
"""Election timeouts in a row without a leader before open streams are cancelled
(etcd's ``maxNoLeaderCnt``)."""


def wants_leader(context: Any) -> bool:
    """Whether the call carries etcd's ``hasleader`` metadata (clientv3 ``WithRequireLeader``)."""
    return any(k == "hasleader" and v == "true" for k, v in context.invocation_metadata() or ())


class LeaderGate:
    """The ``hasleader`` checks of one member.

    ``leader``: the member's current leader (0: none); ``election_s``: its election
    timeout. The member calls :meth:`leader_seen` whenever its leader changes.
    """

    def __init__(self, leader: Callable[[], int], election_s: float) -> None:
        self._leader = leader
        self.election_s = election_s
        self._lost_at: float | None = None
        self._changed = asyncio.Event()
        self.streams: set[Any] = set()
        """Contexts of the open streams that asked for a leader."""

    def leader_seen(self, leader: int) -> None:
        """The member's leader is now ``leader`` (0: lost)."""
        if leader:
            self._lost_at = None
        elif self._lost_at is None:
            self._lost_at = time.monotonic()
        self._changed.set()
        self._changed = asyncio.Event()

    async def has_leader(self) -> bool:
        """Whether the member has a leader, waiting for the next one within one
        election timeout of losing the last (see the module's docstring)."""
        while not self._leader():
            if self._lost_at is None:
                return False  # never had one (or not since the gate started)
            left = self._lost_at + self.election_s - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def check(self, context: Any) -> None:
        """Raise ``etcdserver: no leader`` for a ``hasleader`` call without a leader."""
        if not self._leader() and wants_leader(context) and not await self.has_leader():
            raise errors.NO_LEADER

    @contextlib.asynccontextmanager
    async def stream(self, context: Any) -> AsyncIterator[None]:
        """Around the body of a streaming call (Watch, LeaseKeepAlive, Observe): a
        ``hasleader`` call without a leader is refused (:meth:`check`, the call aborted
        with ``Unavailable "etcdserver: no leader"``); one that passes and whose context
        can be cancelled (``cancel_with``) is cancelled by :meth:`monitor` when the
        member later stays without a leader."""
        try:
            await self.check(context)
        except errors.EtcdError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
            raise  # abort raises; a context whose abort returns still ends here
        with self._registered(context):
            yield

    @contextlib.contextmanager
    def _registered(self, context: Any) -> Iterator[None]:
        registered = wants_leader(context) and hasattr(context, "cancel_with")
        if registered:
            self.streams.add(context)
        try:
            yield
        finally:
            if registered:
                self.streams.discard(context)

    async def monitor(self) -> None:
        """etcd's ``monitorLeader``: every election timeout, count whether the member
        has a leader; after :data:`NO_LEADER_TIMEOUTS` without, cancel every
        registered stream with ``etcdserver: no leader``."""
        without = 0
        while True:
            await asyncio.sleep(self.election_s)
            without = 0 if self._leader() else without + 1
            if without >= NO_LEADER_TIMEOUTS and self.streams:
                streams, self.streams = self.streams, set()
                for context in streams:
                    context.cancel_with(grpc.StatusCode.UNAVAILABLE, errors.NO_LEADER.message)
