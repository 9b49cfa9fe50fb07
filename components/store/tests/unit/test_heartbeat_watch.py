"""A leader whose heartbeats leave late says so, as etcd's does (heartbeat_watch)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from keel_store.server import metrics
from keel_store.server.exposition import render
from keel_store.server.heartbeat_watch import HeartbeatWatch
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members, until

WARNING = (
    "leader failed to send out heartbeat on time; took too long, leader is overloaded"
    " likely from slow disk"
)


def test_a_gap_over_twice_the_interval_is_late_by_the_excess() -> None:
    watch = HeartbeatWatch(0.1)
    assert watch.observe(2, 10.0) == 0.0  # the first heartbeat to a follower
    assert watch.observe(2, 10.1) == 0.0
    assert watch.observe(2, 10.29) == 0.0  # just under twice the interval: on time
    assert abs(watch.observe(2, 10.74) - 0.25) < 1e-9
    assert watch.observe(3, 10.75) == 0.0  # followers are timed apart


def test_a_new_term_as_leader_starts_afresh() -> None:
    watch = HeartbeatWatch(0.1)
    watch.observe(2, 1.0)
    watch.reset()
    assert watch.observe(2, 9.0) == 0.0


def test_a_leader_held_up_warns_and_counts(tmp_path: Path, caplog: Any) -> None:
    async def run() -> tuple[StoreNode, list[StoreNode]]:
        nodes = [
            StoreNode(c)
            for c in node_configs(tmp_path, 3, "--heartbeat-interval=50", "--election-timeout=1000")
        ]
        leader = await start_members(nodes)
        try:
            await asyncio.sleep(0.2)  # a few heartbeats on time
            with caplog.at_level(logging.WARNING, logger="keel_store"):
                time.sleep(0.4)  # the event loop (every member's, in here) held up
                await until(lambda: leader.stats.heartbeat_send_failures >= 1)
        finally:
            for node in nodes:
                await node.stop()
        return leader, [n for n in nodes if n is not leader]

    leader, followers = asyncio.run(run())
    late = [r for r in caplog.records if r.getMessage() == WARNING]
    assert late, [r.getMessage() for r in caplog.records]
    assert {r.to for r in late} <= {f"{f.member_id:x}" for f in followers}
    for record in late:
        assert record.__dict__["expected-duration"] == "100ms"
        assert float(record.__dict__["exceeded-duration"].removesuffix("ms")) > 0
    assert all(f.stats.heartbeat_send_failures == 0 for f in followers)
    text = render(metrics.server_families(leader)).decode()
    line = next(
        x for x in text.splitlines() if x.startswith("etcd_server_heartbeat_send_failures_total ")
    )
    assert float(line.split()[1]) == leader.stats.heartbeat_send_failures >= 1
