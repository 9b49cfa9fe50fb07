"""``endpoint status``'s DB size (``StoreNode.disk_bytes``): snapshot files and WAL
records, not the WAL segment's preallocated zero fill."""

from __future__ import annotations

import asyncio
from pathlib import Path

from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server.node import StoreNode

from .conftest import node_configs, until


def test_the_db_size_counts_records_not_the_preallocated_fill(tmp_path: Path) -> None:
    (config,) = node_configs(tmp_path, 1, "--snapshot-count=100000")

    async def scenario() -> tuple[int, int, int, int]:
        node = StoreNode(config)
        await node.start()
        try:
            await until(lambda: node.is_leader)
            await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"first", value=b"v"))
            empty = node.disk_bytes()
            for i in range(200):
                value = b"x" * 1000
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=value))
            written = node.disk_bytes()
        finally:
            await node.stop()
        files = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
        again = StoreNode(config)
        await again.start()
        try:
            return empty, written, files, again.disk_bytes()
        finally:
            await again.stop()

    empty, written, files, restarted = asyncio.run(scenario())
    assert files >= 64 << 20  # the preallocated segment is on disk
    assert empty < 64 << 10  # etcd's empty member: 20 kB
    assert 200_000 < written - empty < 260_000  # 200 puts of 1 kB, framed
    assert restarted == written  # the same records found again on a restart
