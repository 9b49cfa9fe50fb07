"""The members of a cluster take their snapshots at different indexes
(server.snapshot_schedule): each voter has a phase, intervals stay within
--snapshot-count, a single member keeps etcd's indexes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from keel_store import daemon
from keel_store.flags import FlagError
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server import snapshot_schedule
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members, until


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


# --- by bytes (--experimental-snapshot-bytes) -----------------------------------------


def taken_by_bytes(
    entry: int, grows: int, limit: int, offset: int, entries: int
) -> tuple[list[int], int]:
    """The entries after which a member snapshots by bytes alone, applying ``entries``
    entries of ``entry`` bytes, each adding ``grows`` bytes to its key space; and the
    longest run of bytes it would have replayed after a crash."""
    since, base, first, out, longest = 0, 0, True, [], 0
    for i in range(1, entries + 1):
        since += entry
        longest = max(longest, since)
        if snapshot_schedule.bytes_due(since, base, limit, offset if first else 0):
            out.append(i)
            since, base, first = 0, i * grows, False
    return out, longest


def test_bytes_due_needs_the_limit_or_the_key_space_whichever_is_larger() -> None:
    assert not snapshot_schedule.bytes_due(999, 0, 1000)
    assert snapshot_schedule.bytes_due(1000, 0, 1000)
    assert not snapshot_schedule.bytes_due(4999, 5000, 1000)  # a larger key space
    assert snapshot_schedule.bytes_due(5000, 5000, 1000)
    assert snapshot_schedule.bytes_due(700, 0, 1000, offset=300)  # a phase: early
    assert not snapshot_schedule.bytes_due(10**12, 0, 0)  # 0: never


def test_a_small_key_space_snapshots_every_limit_bytes() -> None:
    # Updates of the same few keys: the key space stays small, so the replay after a
    # crash stays within the limit (and one entry), however many entries were written.
    indexes, longest = taken_by_bytes(entry=1000, grows=0, limit=10_000, offset=0, entries=95)
    assert indexes == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert longest == 10_000


def test_a_growing_key_space_snapshots_at_most_once_per_its_size() -> None:
    # Every entry adds keys: the snapshots come further apart as the key space grows
    # (each costs about its size), and a replay is never longer than the key space at
    # the last snapshot, or the limit.
    indexes, longest = taken_by_bytes(entry=1000, grows=1000, limit=10_000, offset=0, entries=200)
    assert indexes == [10, 20, 40, 80, 160]
    assert longest == 80_000  # from 80 to 160: the key space's size at 80


def test_members_take_their_first_snapshot_by_bytes_apart() -> None:
    voters, limit = (1, 2, 3), 9000
    firsts = []
    for member in voters:
        offset = snapshot_schedule.phase(member, voters, limit)
        indexes, _ = taken_by_bytes(entry=1000, grows=0, limit=limit, offset=offset, entries=40)
        firsts.append(indexes)
    assert [one[:2] for one in firsts] == [[9, 18], [6, 15], [3, 12]]
    assert apart(firsts)


def big_txn(i: int, values: int = 8, size: int = 1024) -> rpcpb.TxnRequest:
    """A txn of ``values`` puts of ``size`` bytes (keys rewritten every 8 txns: the key
    space stays small)."""
    return rpcpb.TxnRequest(
        success=[
            rpcpb.RequestOp(
                request_put=rpcpb.PutRequest(key=b"k%d/%d" % (i % 8, j), value=b"x" * size)
            )
            for j in range(values)
        ]
    )


def test_a_member_written_in_large_entries_snapshots_by_bytes_and_replays_less(
    tmp_path: Path,
) -> None:
    """One member, --snapshot-count far away: 200 txns of 8 KiB (1.6 MiB), compacted as
    they go, take snapshots by bytes (128 KiB), and a restart applies at most that
    again; without the limit, it took none and replays every entry."""
    limit = 128 << 10

    async def run(flag: str, data: Path) -> tuple[int, int, int]:
        (config,) = node_configs(data, 1, "--snapshot-count=100000", flag)
        node = StoreNode(config)
        await node.start()
        try:
            await until(lambda: node.is_leader)
            for i in range(200):
                await node.propose(Kind.TXN, big_txn(i))
                if i % 8 == 7:  # the old versions go: a key space of about 64 KiB
                    revision = node.sm.kv.revision
                    await node.propose(Kind.COMPACT, rpcpb.CompactionRequest(revision=revision))
            assert node.sm.kv.size < limit
            # A snapshot due while another one's child runs is taken at the next
            # Ready after that one is recorded: one more entry makes that Ready.
            await until(lambda: node._snapshot_child is None)
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"last", value=b"v"))
            await until(lambda: node._snapshot_child is None)
            taken_at = node.last_snapshot_index
            end = node.sm.applied_index
        finally:
            await node.stop()
        again = StoreNode(config)
        await again.start()
        try:
            await until(lambda: again.sm.applied_index >= end)
            return taken_at, again._applied_bytes, end
        finally:
            await again.stop()

    taken_at, replayed, end = asyncio.run(
        run(f"--experimental-snapshot-bytes={limit}", tmp_path / "a")
    )
    assert end - 200 < taken_at <= end  # its latest snapshot is from the last entries
    assert 0 <= replayed <= limit + len(big_txn(0).SerializeToString()) + 64
    none_at, replayed_all, end = asyncio.run(run("--experimental-snapshot-bytes=0", tmp_path / "b"))
    assert none_at == 0
    assert replayed_all >= 200 * 8 * 1024


def test_the_flag_takes_bytes_from_the_command_line_and_the_environment() -> None:
    assert daemon.node_config(daemon.parse_args([], {})).snapshot_bytes == 32 << 20
    env = {"ETCD_EXPERIMENTAL_SNAPSHOT_BYTES": "1048576"}
    assert daemon.node_config(daemon.parse_args([], env)).snapshot_bytes == 1 << 20
    off = daemon.parse_args(["--experimental-snapshot-bytes=0"], {})
    assert daemon.node_config(off).snapshot_bytes == 0
    negative = daemon.parse_args(["--experimental-snapshot-bytes=-1"], {})
    with pytest.raises(FlagError, match="--experimental-snapshot-bytes=-1: must be 0"):
        daemon.node_config(negative)
