"""etcd's hasleader rules (server.leader_gate): refused without a leader, a grace of one
election timeout after losing one (keel-store elects faster than an etcd follower
notices), and open streams cancelled after three election timeouts without one."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from keel_store.mvcc import errors
from keel_store.mvcc.errors import EtcdError
from keel_store.server.leader_gate import NO_LEADER_TIMEOUTS, LeaderGate


class Context:
    """A call's context, with or without ``hasleader`` metadata."""

    def __init__(self, has_leader: bool = True) -> None:
        self.metadata = (("hasleader", "true"),) if has_leader else ()
        self.cancelled: list[tuple[grpc.StatusCode, str]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def cancel_with(self, code: grpc.StatusCode, details: str) -> None:
        self.cancelled.append((code, details))

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Aborted(Exception):
    """What the context's ``abort`` raised."""


def gate(election_s: float = 0.2) -> tuple[LeaderGate, list[int]]:
    leader = [1]
    return LeaderGate(lambda: leader[0], election_s), leader


def lost(election_s: float) -> tuple[LeaderGate, list[int]]:
    """A gate whose member has just lost its leader."""
    g, leader = gate(election_s)
    leader[0] = 0
    g.leader_seen(0)
    return g, leader


def test_a_member_that_never_had_a_leader_refuses_at_once() -> None:
    async def scenario() -> None:
        g, leader = gate(election_s=30)
        leader[0] = 0
        with pytest.raises(EtcdError) as refused:
            await asyncio.wait_for(g.check(Context()), 1)
        assert refused.value is errors.NO_LEADER
        await g.check(Context(has_leader=False))  # without the metadata: no rule

    asyncio.run(scenario())


def test_a_call_soon_after_the_leader_is_lost_waits_for_the_next() -> None:
    async def scenario() -> float:
        g, leader = lost(election_s=5)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def elect() -> None:
            await asyncio.sleep(0.05)
            leader[0] = 2
            g.leader_seen(2)

        election = asyncio.create_task(elect())
        await g.check(Context())
        await election
        return loop.time() - started

    assert asyncio.run(scenario()) < 1.0  # the election's 50 ms, not the 5 s grace


def test_no_leader_after_the_grace_is_refused() -> None:
    async def scenario() -> float:
        g, _ = lost(election_s=0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(EtcdError):
            await g.check(Context())
        waited = loop.time() - started
        with pytest.raises(EtcdError):
            await asyncio.wait_for(g.check(Context()), 0.05)  # later: at once
        return waited

    assert asyncio.run(scenario()) >= 0.09


def test_open_streams_are_cancelled_after_three_timeouts_without_a_leader() -> None:
    async def scenario() -> tuple[Any, Any, Any, int]:
        g, leader = gate(election_s=0.02)
        monitor = asyncio.create_task(g.monitor())
        open_one, plain, gone = Context(), Context(has_leader=False), Context()
        async with g.stream(open_one), g.stream(plain):
            async with g.stream(gone):
                pass
            await asyncio.sleep(0.2)
            assert open_one.cancelled == [], "cancelled while the member has a leader"
            leader[0] = 0
            g.leader_seen(0)
            timeouts = 0
            while not open_one.cancelled and timeouts < 20:
                await asyncio.sleep(0.02)
                timeouts += 1
        monitor.cancel()
        return open_one, plain, gone, timeouts

    open_one, plain, gone, timeouts = asyncio.run(scenario())
    assert open_one.cancelled == [(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")]
    assert timeouts >= NO_LEADER_TIMEOUTS - 1
    assert (plain.cancelled, gone.cancelled) == ([], [])


def test_a_stream_without_a_leader_is_aborted_and_not_registered() -> None:
    async def scenario() -> tuple[Aborted, bool]:
        g, leader = gate(election_s=30)
        leader[0] = 0
        refused = Context()
        entered = False
        with pytest.raises(Aborted) as aborted:
            async with g.stream(refused):
                entered = True
        async with g.stream(Context(has_leader=False)):  # without the metadata: served
            pass
        return aborted.value, entered or bool(g.streams)

    aborted, entered = asyncio.run(scenario())
    assert aborted.args == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    assert not entered
