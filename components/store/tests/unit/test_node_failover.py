"""Three StoreNodes in one process: the leader stops, the followers fail over early."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from keel_core.testing import free_port
from keel_store import daemon
from keel_store.mvcc import errors
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.raft import Role
from keel_store.server.node import StoreNode


def _configs(tmp_path: Path) -> list[daemon.NodeConfig]:
    peers = {f"n{i}": f"http://127.0.0.1:{free_port()}" for i in range(3)}
    initial = ",".join(f"{name}={url}" for name, url in peers.items())
    configs = []
    for name, url in peers.items():
        args = daemon.parse_args(
            [
                f"--name={name}",
                f"--data-dir={tmp_path / name}",
                f"--initial-advertise-peer-urls={url}",
                f"--listen-peer-urls={url}",
                f"--initial-cluster={initial}",
                "--unsafe-no-fsync",
            ],
            {},
        )
        configs.append(daemon.node_config(args))
    return configs


async def _until(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_followers_campaign_well_before_the_election_timeout(tmp_path: Path) -> None:
    """When the leader's connections close, the followers forget it and one campaigns
    within a few heartbeats, far sooner than any election timeout (at least 10
    heartbeats after the last one heard); a put through a follower then succeeds."""

    async def scenario() -> None:
        nodes = [StoreNode(c) for c in _configs(tmp_path)]
        for node in nodes:
            # A third of a heartbeat apart, as separate processes would be: in one loop,
            # tickers started together tick together, and two followers that pick the
            # same early tick would split the vote (then the election timeout decides).
            await node.start()
            await asyncio.sleep(node.config.heartbeat_ms / 3000)
        try:
            await _until(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            followers = [n for n in nodes if n is not leader]
            await _until(lambda: all(f.leader_id == leader.member_id for f in followers))
            await followers[0].propose(Kind.PUT, rpcpb.PutRequest(key=b"warm", value=b"v"))
            term = leader.term
            await leader.stop()  # its connections close, as when its process dies
            start = time.monotonic()
            await _until(lambda: all(f.leader_id != leader.member_id for f in followers))
            await _until(lambda: any(f.raft.role is not Role.FOLLOWER for f in followers))
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
