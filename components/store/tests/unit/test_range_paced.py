"""A large range's versions are copied into its response a slice at a time, the loop
free in between (keel_store.server.kv_service.fill_paced), and the answer is the one
the store gave at the read, whatever is written meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server.kv_service import RANGE_SLICE, KVService
from keel_store.server.node import StoreNode

from .conftest import LoopTurns, node_configs, until

KEYS = 5 * RANGE_SLICE + 17


@pytest.mark.parametrize(
    "options",
    [{}, {"keys_only": True}, {"sort_target": rpcpb.RangeRequest.MOD, "limit": KEYS - 3}],
    ids=["key-order", "keys-only", "sorted-limited"],
)
def test_a_large_range_lets_the_loop_turn_and_answers_as_of_its_read(
    tmp_path: Path, options: dict[str, object]
) -> None:
    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1, "--unsafe-no-fsync")[0])
        await node.start()
        try:
            await until(lambda: node.is_leader)
            for start in range(0, KEYS, 100):
                ops = [
                    rpcpb.RequestOp(request_put=rpcpb.PutRequest(key=b"k/%06d" % i, value=b"v"))
                    for i in range(start, min(KEYS, start + 100))
                ]
                await node.propose(Kind.TXN, rpcpb.TxnRequest(success=ops))
            request = rpcpb.RangeRequest(key=b"k/", range_end=b"k0", serializable=True, **options)
            expected = node.sm.range(request)
            service = KVService(node)
            context = SimpleNamespace(invocation_metadata=lambda: ())
            async with LoopTurns() as turns:
                alone = await service.Range(request, context)
            assert turns.count >= KEYS // RANGE_SLICE, turns.count  # one per slice
            assert (alone.kvs, alone.count, alone.more) == (
                expected.kvs,
                expected.count,
                expected.more,
            )
            answer = asyncio.create_task(service.Range(request, context))
            await asyncio.sleep(0)  # read: the versions are chosen
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k/000000", value=b"new"))
            resp = await answer
            assert resp.kvs == expected.kvs
            assert (resp.count, resp.more) == (expected.count, expected.more)
            assert resp.header.revision == expected.header.revision
            assert node.sm.kv.get(b"k/000000").value == b"new"  # written meanwhile,
            assert b"new" not in [kv.value for kv in resp.kvs]  # not in the answer
        finally:
            await node.stop()

    asyncio.run(scenario())


def test_a_short_range_is_answered_in_one_step(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1, "--unsafe-no-fsync")[0])
        await node.start()
        try:
            await until(lambda: node.is_leader)
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"a", value=b"1"))
            request = rpcpb.RangeRequest(key=b"a", serializable=True)
            context = SimpleNamespace(invocation_metadata=lambda: ())
            async with LoopTurns() as turns:
                resp = await KVService(node).Range(request, context)
            assert turns.count <= 1
            assert [kv.value for kv in resp.kvs] == [b"1"]
        finally:
            await node.stop()

    asyncio.run(scenario())
