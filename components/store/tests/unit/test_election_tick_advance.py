"""--initial-election-tick-advance: how far a starting member fast-forwards its
election clock (etcd's adjustTicks), on a real Raft core with a stand-in member."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from types import SimpleNamespace

from keel_store.raft import (
    ConfState,
    MemoryStorage,
    RaftConfig,
    RaftNode,
    Role,
    Snapshot,
    SnapshotMeta,
)
from keel_store.server.node import StoreNode

TICKS = 10


def advanced(voters: tuple[int, ...], connected: set[int], flag: bool, seed: int = 0) -> int | str:
    """Election ticks a member 1 with ``voters`` has after the advance (within 0.3 s),
    or ``"leader"`` if it campaigned and won."""
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMeta(index=1, term=1, conf=ConfState(voters=voters))))
    rng = random.Random(seed)
    raft = RaftNode(RaftConfig(id=1, election_ticks=TICKS, applied=1, rng=rng), storage)
    actions: list[Callable[[], None]] = []
    member = SimpleNamespace(
        raft=raft,
        member_id=1,
        config=SimpleNamespace(initial_election_tick_advance=flag),
        transport=SimpleNamespace(active_since=lambda p: 1.0 if p in connected else None),
        _submit=actions.append,
    )
    member._fast_forward = lambda n: StoreNode._fast_forward(member, n)  # type: ignore[arg-type]
    member._campaign_alone = lambda: StoreNode._campaign_alone(member)  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.wait_for(StoreNode._advance_election_ticks(member), 0.3)  # type: ignore[arg-type]

    with contextlib.suppress(TimeoutError):  # still waiting for peers: no advance
        asyncio.run(run())
    for action in actions:
        action()
    return "leader" if raft.role is Role.LEADER else raft.election_elapsed


def test_the_only_voter_campaigns_at_once_whatever_the_flag() -> None:
    for flag in (True, False):
        for seed in range(20):  # whatever its randomized election timeout
            assert advanced((1,), set(), flag=flag, seed=seed) == "leader"


def test_a_member_of_three_advances_once_a_quorum_is_connected() -> None:
    assert advanced((1, 2, 3), {2}, flag=True) == TICKS - 2
    assert advanced((1, 2, 3), set(), flag=True) == 0
    assert advanced((1, 2, 3), {2, 3}, flag=False) == 0
