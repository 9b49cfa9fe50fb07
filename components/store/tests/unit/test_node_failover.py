"""Three StoreNodes in one process: the leader stops, the followers fail over early."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.raft import Role
from keel_store.server.node import StoreNode

from .conftest import node_configs, start_members, until


def test_followers_campaign_well_before_the_election_timeout(tmp_path: Path) -> None:
    """When the leader's connections close, the followers forget it and one campaigns
    within a few heartbeats, far sooner than any election timeout (at least 10
    heartbeats after the last one heard); a put through a follower then succeeds."""

    async def scenario() -> None:
        nodes = [StoreNode(c) for c in node_configs(tmp_path, 3, "--unsafe-no-fsync")]
        try:
            leader = await start_members(nodes)
            followers = [n for n in nodes if n is not leader]
            await until(lambda: all(f.leader_id == leader.member_id for f in followers))
            await followers[0].propose(Kind.PUT, rpcpb.PutRequest(key=b"warm", value=b"v"))
            term = leader.term
            await leader.stop()  # its connections close, as when its process dies
            start = time.monotonic()
            await until(lambda: all(f.leader_id != leader.member_id for f in followers))
            await until(lambda: any(f.raft.role is not Role.FOLLOWER for f in followers))
            campaign = time.monotonic() - start
            failures: list[errors.EtcdError] = []
            while True:
                try:
                    await followers[len(failures) % 2].propose(
                        Kind.PUT, rpcpb.PutRequest(key=b"after", value=b"v")
                    )
                    break
                except errors.EtcdError as exc:
                    failures.append(exc)
            # Only writes forwarded to the dead leader fail, and at once.
            assert set(failures) <= {errors.LEADER_CHANGED}
            assert campaign < 0.8 * leader.config.election_ms / 1000, campaign
            assert any(f.is_leader and f.term > term for f in followers)
        finally:
            for node in nodes:
                if not node.stopped:
                    await node.stop()

    asyncio.run(scenario())
