"""A tiny lossless in-process network for driving RaftNodes in unit tests."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from keel_store.raft import (
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    RaftConfig,
    RaftNode,
    ReadState,
    Role,
)
from keel_store.raft.membership import bootstrap_entries


class Cluster:
    """Nodes 1..n on a perfect network; ``drop`` filters messages out."""

    def __init__(self, n: int, **options: object) -> None:
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.applied: dict[int, list[bytes]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.sent: list[Message] = []
        self.options = options
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()
        self.rewrite: Callable[[Message], Message | None] = lambda m: m
        voters = tuple(range(1, n + 1))
        for nid in voters:
            storage = MemoryStorage()
            storage.append(bootstrap_entries(voters))
            storage.set_hard_state(HardState(term=1, commit=len(voters)))
            self.storages[nid] = storage
            self.start(nid)

    def start(self, nid: int, storage: MemoryStorage | None = None) -> RaftNode:
        if storage is not None:
            self.storages[nid] = storage
        cfg = RaftConfig(id=nid, rng=random.Random(nid), **self.options)  # type: ignore[arg-type]
        node = RaftNode(cfg, self.storages[nid])
        self.nodes[nid] = node
        self.applied[nid] = []
        self.read_states[nid] = []
        self.down.discard(nid)
        self.deliver(self.flush(nid))  # apply the committed founding configuration
        return node

    def deliver(self, messages: list[Message]) -> None:
        queue = list(messages)
        while queue:
            m = queue.pop(0)
            if m.to in self.down or (m.sender, m.to) in self.cut or m.to not in self.nodes:
                continue
            rewritten = self.rewrite(m)
            if rewritten is None:
                continue
            m = rewritten
            self.sent.append(m)
            self.nodes[m.to].step(m)
            queue.extend(self.flush(m.to))

    def flush(self, nid: int) -> list[Message]:
        node = self.nodes[nid]
        out: list[Message] = []
        while node.has_ready():
            rd = node.ready()
            storage = self.storages[nid]
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            self.applied[nid].extend(
                e.data for e in rd.committed_entries if e.data and e.type is EntryType.NORMAL
            )
            self.read_states[nid].extend(rd.read_states)
            node.advance(rd)
        return out

    def settle(self) -> None:
        for nid in sorted(self.nodes):
            if nid not in self.down:
                self.deliver(self.flush(nid))

    def tick(self, nid: int | None = None, times: int = 1) -> None:
        for _ in range(times):
            for i in sorted(self.nodes) if nid is None else [nid]:
                if i not in self.down:
                    self.nodes[i].tick()
            self.settle()

    def leader(self) -> RaftNode:
        """The one live leader with the highest term."""
        live = [n for i, n in self.nodes.items() if i not in self.down]
        leaders = [n for n in live if n.role is Role.LEADER]
        assert leaders, "no leader"
        return max(leaders, key=lambda n: n.term)

    def elect(self, nid: int) -> RaftNode:
        self.nodes[nid].campaign()
        self.settle()
        return self.nodes[nid]

    def leave_behind(self, count: int) -> RaftNode:
        """Elect node 1, then commit ``count`` proposals ``x0``, ``x1``... while node 3
        is down (it stays down); returns the leader."""
        leader = self.elect(1)
        self.tick(times=2)
        self.down = {3}
        for i in range(count):
            leader.propose(f"x{i}".encode())
        self.settle()
        return leader


@pytest.fixture
def cluster3() -> Cluster:
    return Cluster(3)
