"""The members of a cluster take their snapshots at different indexes
(server.snapshot_schedule): each voter has a phase, intervals stay within
--snapshot-count, a single member keeps etcd's indexes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server import snapshot_schedule
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members


def taken(count: int, offset: int, upto: int, batch: int = 1, start: int = 0) -> list[int]:
    """The indexes a member with ``offset`` snapshots at, applying ``batch`` entries per
    Ready up to ``upto``, its last snapshot at ``start``."""
    last, out = start, []
    for applied in range(start + batch, upto + 1, batch):
        if snapshot_schedule.due(applied, last, count, offset):
            out.append(applied)
            last = applied
    return out


def apart(indexes: list[Iterable[int]]) -> bool:
    """Whether no index is in two of the lists."""
    flat = [i for one in indexes for i in set(one)]
    return len(flat) == len(set(flat))


def test_phases_spread_the_voters_in_id_order() -> None:
    voters = (907, 12, 55)
    assert [snapshot_schedule.phase(m, voters, 90) for m in (12, 55, 907)] == [0, 30, 60]
    assert snapshot_schedule.phase(12, (12,), 100_000) == 0  # one member: etcd's indexes
    assert snapshot_schedule.phase(4, voters, 90) == 0  # a learner
    assert snapshot_schedule.phase(55, voters, 1) == 0


def test_phase_zero_is_etcds_schedule() -> None:
    assert taken(100, 0, 500) == [100, 200, 300, 400, 500]


def test_members_snapshot_apart_and_never_more_than_count_entries_apart() -> None:
    count, voters = 90, (1, 2, 3)
    seen: dict[int, list[int]] = {}
    for member in voters:
        offset = snapshot_schedule.phase(member, voters, count)
        seen[member] = indexes = taken(count, offset, 1000)
        gaps = [b - a for a, b in zip([0, *indexes], indexes, strict=False)]
        assert max(gaps) <= count
        assert all(gap == count for gap in gaps[1:])  # on its phase after the first
        assert all((i + offset) % count == 0 for i in indexes)
    assert [seen[m][:2] for m in voters] == [[90, 180], [60, 150], [30, 120]]
    assert apart(list(seen.values()))


def test_a_late_snapshot_returns_to_the_phase() -> None:
    # Seven entries per Ready: a snapshot lands up to six entries past its phase's
    # index (it is checked once per Ready, as etcd's), the next one at the next index
    # of the phase again, so the gaps stay within the count plus that Ready.
    indexes = taken(100, 30, 1000, batch=7)
    gaps = [b - a for a, b in zip([0, *indexes], indexes, strict=False)]
    assert max(gaps) < 100 + 7
    assert len(indexes) == 10
    assert all((i + 30) % 100 < 7 for i in indexes)
    # After a snapshot installed from the leader (at the leader's phase), the next
    # one is at this member's own phase.
    assert taken(100, 30, 400, start=200) == [270, 370]


def test_three_members_take_their_snapshots_at_different_indexes(tmp_path: Path) -> None:
    """Three members in one process, --snapshot-count=30, sequential puts: every
    member snapshots (in its forked child), each at its own indexes."""

    async def scenario() -> dict[int, set[int]]:
        configs = node_configs(tmp_path, 3, "--snapshot-count=30", "--unsafe-no-fsync")
        nodes = [StoreNode(c) for c in configs]
        indexes: dict[int, set[int]] = {id(n): set() for n in nodes}
        try:
            leader = await start_members(nodes)
            deadline = time.monotonic() + 30
            i = 0
            while min(len(s) for s in indexes.values()) < 3:
                assert time.monotonic() < deadline, indexes
                await leader.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))
                i += 1
                for node in nodes:
                    if node.last_snapshot_index:
                        indexes[id(node)].add(node.last_snapshot_index)
                await asyncio.sleep(0.002)
            return {n.member_id: indexes[id(n)] for n in nodes}
        finally:
            for node in nodes:
                await node.stop()

    by_member = asyncio.run(scenario())
    assert apart(list(by_member.values())), by_member
