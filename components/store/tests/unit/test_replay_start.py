"""A restarted member applies its WAL's committed entries again before the daemon
goes on (``StoreNode.replayed``), and the daemon lets that replay run without the
cyclic collector (``daemon.serve``)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import grpc
import pytest

from keel_store import daemon
from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcgrpc, rpcpb
from keel_store.server.config import NodeConfig
from keel_store.server.node import StoreNode

from .conftest import node_configs, solo_daemon_flags, until

ENTRIES = 60


async def _write(config: NodeConfig) -> int:
    """``ENTRIES`` puts on a fresh member; its last applied index."""
    node = StoreNode(config)
    await node.start()
    try:
        assert node.replayed.is_set()  # nothing to replay on a fresh member
        await until(lambda: node.is_leader)
        for i in range(ENTRIES):
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))
        return node.sm.applied_index
    finally:
        await node.stop()


def test_replayed_is_set_once_the_entries_committed_before_the_start_are_applied(
    tmp_path: Path,
) -> None:
    (config,) = node_configs(tmp_path, 1, "--snapshot-count=100000")

    async def scenario() -> tuple[bool, int, int, int]:
        end = await _write(config)
        node = StoreNode(config)
        await node.start()
        try:
            pending = node.replayed.is_set()
            await asyncio.wait_for(node.replayed.wait(), 10)
            return pending, node.sm.applied_index, end, node.sm.kv.revision
        finally:
            await node.stop()

    pending, applied, end, revision = asyncio.run(scenario())
    assert not pending  # started, with the entries still to apply
    assert applied >= end
    assert revision == ENTRIES + 1


def test_the_daemon_replays_without_the_collector_and_turns_it_back_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, flags = solo_daemon_flags(tmp_path, "--snapshot-count=100000")
    args = daemon.parse_args(flags, {})
    asyncio.run(_write(daemon.node_config(args)))
    created: list[StoreNode] = []
    collector_on: list[bool] = []

    class Recorded(StoreNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config)
            created.append(self)

        def _apply_entry(self, index: int, data: bytes) -> None:
            collector_on.append(gc.isenabled())
            super()._apply_entry(index, data)

    monkeypatch.setattr(daemon, "StoreNode", Recorded)

    async def scenario() -> int:
        serving = asyncio.ensure_future(daemon.serve(daemon.parse_args(flags, {})))
        await until(lambda: bool(created) and created[0].is_leader)
        async with grpc.aio.insecure_channel(client) as channel:
            await rpcgrpc.KVStub(channel).Put(rpcpb.PutRequest(key=b"after", value=b"v"))
        assert created[0].on_failure is not None
        created[0].on_failure(RuntimeError("the test is done"))
        return await asyncio.wait_for(serving, 10)

    assert gc.isenabled()
    asyncio.run(scenario())
    replayed = collector_on[:ENTRIES]
    assert len(replayed) == ENTRIES
    assert not any(replayed)
    assert collector_on[-1]  # the put after the start: the collector is back
    assert gc.isenabled()
