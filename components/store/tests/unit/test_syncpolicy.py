"""Where a member waits for its WAL fsync: on the loop for a fast disk, in a thread for a
slow one (keel_store.server.syncpolicy)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from keel_store.mvcc.commands import Kind
from keel_store.pb import rpcpb
from keel_store.server.node import StoreNode
from keel_store.server.syncpolicy import SyncPolicy

from .conftest import node_configs, until


def test_the_policy_follows_the_moving_average() -> None:
    policy = SyncPolicy(inline_below=0.001, weight=0.5)
    assert policy.inline()  # nothing measured yet: try the loop
    policy.observe(0.0002)
    assert policy.inline()
    policy.observe(0.01)  # one slow sync: average 0.0051
    assert not policy.inline()
    for _ in range(3):  # halves toward 0.0002: 0.00265, 0.00143, 0.00081
        policy.observe(0.0002)
    assert policy.inline()
    assert policy.average == pytest.approx(0.00081, abs=1e-5)


def test_the_weight_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="weight must be in"):
        SyncPolicy(weight=0)
    with pytest.raises(ValueError, match="weight must be in"):
        SyncPolicy(weight=1.5)


def test_a_member_syncs_a_fast_disk_on_the_loop_and_a_slow_one_in_a_thread(
    tmp_path: Path,
) -> None:
    """With real fsyncs a member waits for the disk on its loop; once the disk turns
    slow (50 ms more per sync) the syncs move to a thread and the loop keeps running
    while one is under way; when the disk is fast again they come back to the loop.
    Every put is applied."""

    async def scenario() -> None:
        node = StoreNode(node_configs(tmp_path, 1)[0])
        await node.start()
        try:
            await until(lambda: node.is_leader)
            on_loop: list[bool] = []
            slow = 0.0
            entered = threading.Event()
            release = threading.Event()
            release.set()
            real_sync = node.disk.sync

            def sync() -> None:
                on_loop.append(threading.current_thread() is threading.main_thread())
                entered.set()
                time.sleep(slow)
                # Blocks only when the test holds it; on the loop this could never be
                # released (the test's coroutine could not run), hence the timeout.
                assert release.wait(5), "the sync blocked the loop"
                real_sync()

            node.disk.sync = sync  # type: ignore[method-assign]
            # A fresh policy (the start-up syncs may have been slow on a busy machine),
            # with a threshold that real fsyncs stay under even then: "slow" below is
            # ten times it.
            node.sync_policy = SyncPolicy(inline_below=0.005)

            async def put(i: int) -> None:
                await node.propose(Kind.PUT, rpcpb.PutRequest(key=b"k%d" % i, value=b"v"))

            await put(0)
            assert on_loop == [True]

            slow = 0.05  # 50 ms per sync: the average passes 5 ms after a sync or two
            for i in range(1, 6):
                await put(i)
            assert on_loop[-1] is False
            assert node.sync_policy.average > node.sync_policy.inline_below

            # While a sync runs in its thread the loop is free.
            entered.clear()
            release.clear()
            pending = asyncio.ensure_future(put(6))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            assert not pending.done()
            assert node.sm.kv.get(b"k5") is not None  # the loop answers meanwhile
            release.set()
            await pending

            slow = 0.0
            for i in range(7, 60):
                await put(i)
                if on_loop[-1]:
                    break
            assert on_loop[-1] is True, "the syncs did not come back to the loop"
            assert all(node.sm.kv.get(b"k%d" % i) is not None for i in range(i + 1))
        finally:
            await node.stop()

    asyncio.run(scenario())
