"""Helpers for tests that run StoreNodes in the test's own process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keel_core.testing import free_port
from keel_store import daemon
from keel_store.server.config import NodeConfig
from keel_store.server.node import StoreNode


@pytest.fixture(autouse=True)
def _collector_left_unfrozen() -> Iterator[None]:
    """A test that runs ``daemon.serve`` in this process installs the daemon's collector
    policy, which freezes the heap (``gc_policy``); unfreeze after it, or a later test in
    the same worker (``mvcc/test_gc_freeze.py`` checks that nothing is frozen) fails."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


def solo_daemon_flags(tmp_path: Path, *extra: str) -> tuple[str, list[str]]:
    """``keel-store`` flags of a one-member cluster ``solo`` on loopback (data under
    ``tmp_path``): its client address and the flags."""
    client, peer = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    return client, [
        "--name=solo",
        f"--data-dir={tmp_path / 'solo'}",
        f"--listen-client-urls=http://{client}",
        f"--advertise-client-urls=http://{client}",
        f"--initial-advertise-peer-urls={peer}",
        f"--listen-peer-urls={peer}",
        f"--initial-cluster=solo={peer}",
        *extra,
    ]


def node_configs(tmp_path: Path, n: int, *flags: str) -> list[NodeConfig]:
    """Settings of an ``n``-member cluster on loopback, data under ``tmp_path``."""
    peers = {f"n{i}": f"http://127.0.0.1:{free_port()}" for i in range(n)}
    initial = ",".join(f"{name}={url}" for name, url in peers.items())
    return [
        daemon.node_config(
            daemon.parse_args(
                [
                    f"--name={name}",
                    f"--data-dir={tmp_path / name}",
                    f"--initial-advertise-peer-urls={url}",
                    f"--listen-peer-urls={url}",
                    f"--initial-cluster={initial}",
                    *flags,
                ],
                {},
            )
        )
        for name, url in peers.items()
    ]


class LoopTurns:
    """Counts the event loop's turns inside an ``async with`` block: a task that adds
    one and yields, every turn (a loop held by one long step counts one turn)."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)  # the counter's first step
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def start_members(nodes: list[StoreNode]) -> StoreNode:
    """Start ``nodes`` a third of a heartbeat apart and return the leader they elect.

    Apart, as separate processes would be: in one loop, tickers started together tick
    together, and two followers that pick the same early tick would split the vote
    (then the election timeout decides)."""
    for node in nodes:
        await node.start()
        await asyncio.sleep(node.config.heartbeat_ms / 3000)
    await until(lambda: any(n.is_leader for n in nodes))
    return next(n for n in nodes if n.is_leader)
