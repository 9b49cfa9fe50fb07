"""The core driven through the real WAL (NodeStorage on a file system that forgets unsynced
writes): what a node acknowledged or voted survives a crash, and it catches up after."""

from __future__ import annotations

import random

from keel_store.raft import MemoryStorage, Message, RaftConfig, RaftNode, Role
from keel_store.raft.membership import bootstrap_entries
from keel_store.raft.types import EntryType, HardState
from keel_store.wal.memfs import MemoryFileSystem
from keel_store.wal.storage import NodeStorage

VOTERS = (1, 2, 3)


class DurableNode:
    """A RaftNode whose Ready goes to NodeStorage (durable) and MemoryStorage (reads)."""

    def __init__(self, nid: int) -> None:
        self.id = nid
        self.fs = MemoryFileSystem(seed=nid)
        self.applied: list[bytes] = []
        self.boot(founding=True)

    def boot(self, *, founding: bool = False) -> None:
        self.disk, restart = NodeStorage.open(self.fs, "/data")
        if founding:
            self.disk.save(bootstrap_entries(VOTERS), HardState(term=1, commit=len(VOTERS)))
            self.disk, restart = NodeStorage.open(self.fs, "/data")
        self.memory = MemoryStorage()
        applied = 0
        if restart.snapshot is not None:
            self.memory.apply_snapshot(restart.snapshot)
            applied = restart.snapshot.meta.index
        self.memory.append(restart.entries)
        self.memory.set_hard_state(restart.hard_state)
        cfg = RaftConfig(id=self.id, rng=random.Random(self.id), applied=applied)
        self.raft = RaftNode(cfg, self.memory)
        self.applied = []

    def crash(self) -> None:
        self.fs.crash(tear=True)
        self.boot()

    def flush(self) -> list[Message]:
        out: list[Message] = []
        while self.raft.has_ready():
            rd = self.raft.ready()
            if rd.snapshot is not None:
                self.disk.save_snapshot(rd.snapshot)
                self.memory.apply_snapshot(rd.snapshot)
            self.disk.save(rd.entries, rd.hard_state)  # durable before any message goes
            self.memory.append(rd.entries)
            if rd.hard_state is not None:
                self.memory.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            self.applied += [
                e.data for e in rd.committed_entries if e.data and e.type is EntryType.NORMAL
            ]
            self.raft.advance(rd)
        return out


def run(nodes: dict[int, DurableNode], messages: list[Message], down: set[int]) -> None:
    queue = list(messages)
    while queue:
        m = queue.pop(0)
        if m.to in down:
            continue
        nodes[m.to].raft.step(m)
        queue += nodes[m.to].flush()


def settle(nodes: dict[int, DurableNode], down: set[int] = frozenset(), ticks: int = 0) -> None:  # type: ignore[assignment]
    for _ in range(max(1, ticks)):
        for nid, node in nodes.items():
            if nid not in down:
                if ticks:
                    node.raft.tick()
                run(nodes, node.flush(), down)


def test_acknowledged_entries_and_votes_survive_a_crash_through_the_wal() -> None:
    nodes = {nid: DurableNode(nid) for nid in VOTERS}
    settle(nodes)
    nodes[1].raft.campaign()
    settle(nodes)
    leader = nodes[1].raft
    assert leader.role is Role.LEADER
    vote_term = nodes[3].raft.term
    for i in range(40):
        leader.propose(f"x{i}".encode())
    settle(nodes)
    acknowledged = leader.progress[3].match
    assert acknowledged >= 40

    nodes[3].crash()  # everything node 3 acknowledged had been synced
    restarted = nodes[3].raft
    assert restarted.log.last_index() >= acknowledged
    assert (restarted.term, restarted.vote) == (vote_term, 1)

    down = {2}
    for i in range(40, 60):
        leader.propose(f"x{i}".encode())
    settle(nodes, down, ticks=30)  # leader and restarted node 3 form the quorum
    expected = [f"x{i}".encode() for i in range(60)]
    assert nodes[1].applied[-60:] == expected
    assert nodes[3].applied[-20:] == expected[-20:]
    assert nodes[3].raft.log.committed == leader.log.committed
