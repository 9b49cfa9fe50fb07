"""Raft core throughput: entries committed per second in a lossless in-process cluster.

Measures the pure core (no disk, no sockets): a leader proposes entries, messages are
delivered at once, every node persists to MemoryStorage and applies. Reported for 3 and 5
nodes, one proposal per round (latency-bound) and 64 per round (batching/pipelining).
There is no real peer for the core alone on this machine (etcd's raft is a Go library
without a standalone binary), so the ratios compare our own configurations. The last
lines time the faulty simulator itself (what CI's seed runs cost).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from keel_store.raft import MemoryStorage, Message, RaftConfig, RaftNode, Role
from keel_store.raft.membership import bootstrap_entries
from keel_store.raft.types import HardState
from keel_store.sim import SimOptions, run_seed


class Bench:
    """``n`` nodes on a perfect, instantaneous network."""

    def __init__(self, n: int) -> None:
        voters = tuple(range(1, n + 1))
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RaftNode] = {}
        self.applied = dict.fromkeys(voters, 0)
        for nid in voters:
            storage = MemoryStorage()
            storage.append(bootstrap_entries(voters))
            storage.set_hard_state(HardState(term=1, commit=n))
            self.storages[nid] = storage
            self.nodes[nid] = RaftNode(
                RaftConfig(id=nid, rng=random.Random(nid), max_inflight=256), storage
            )
        self.queue: deque[Message] = deque()
        self.pump()
        self.nodes[1].campaign()
        self.pump()
        assert self.nodes[1].role is Role.LEADER

    def pump(self) -> None:
        """Deliver until quiet."""
        while True:
            for nid, node in self.nodes.items():
                while node.has_ready():
                    rd = node.ready()
                    storage = self.storages[nid]
                    storage.append(rd.entries)
                    if rd.hard_state is not None:
                        storage.set_hard_state(rd.hard_state)
                    self.queue.extend(rd.messages)
                    self.applied[nid] += len(rd.committed_entries)
                    node.advance(rd)
            if not self.queue:
                return
            while self.queue:
                m = self.queue.popleft()
                self.nodes[m.to].step(m)

    def run(self, entries: int, batch: int) -> float:
        """Entries committed and applied on every node per second (``entries`` rounded
        down to whole batches)."""
        entries -= entries % batch
        leader = self.nodes[1]
        payload = b"x" * 64
        target = {nid: count + entries for nid, count in self.applied.items()}
        began = time.perf_counter()
        for _ in range(entries // batch):
            for _ in range(batch):
                leader.propose(payload)
            self.pump()
        for _ in range(leader.config.heartbeat_ticks):
            leader.tick()  # the heartbeat tells followers the final commit index
        self.pump()
        elapsed = time.perf_counter() - began
        assert all(self.applied[nid] >= target[nid] for nid in self.nodes)
        return entries / elapsed


def main(argv: list[str]) -> int:
    """Print entries/s for 3 and 5 nodes, unbatched and batched, and their ratios."""
    parser = argparse.ArgumentParser(prog="bench raft")
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=20)
    args, _ = parser.parse_known_args(argv)
    rates: dict[tuple[int, int], float] = {}
    for nodes in (3, 5):
        for batch in (1, 64):
            rates[nodes, batch] = Bench(nodes).run(args.entries, batch)
            print(
                f"raft core, {nodes} nodes, {batch:2} proposals/round:"
                f" {rates[nodes, batch]:9.0f} entries committed/s"
            )
    for batch in (1, 64):
        print(f"ratio 5/3 nodes at batch {batch}: {rates[5, batch] / rates[3, batch]:.2f}")
    for nodes in (3, 5):
        print(f"ratio batch 64/1 at {nodes} nodes: {rates[nodes, 64] / rates[nodes, 1]:.2f}")
    for nodes in (3, 5):
        began = time.perf_counter()
        results = [run_seed(seed, SimOptions(nodes=nodes)) for seed in range(args.seeds)]
        elapsed = time.perf_counter() - began
        committed = sum(r.committed for r in results)
        print(
            f"faulty simulator, {nodes} nodes, {args.seeds} seeds: {committed / elapsed:9.0f}"
            f" entries committed/s of wall time, {args.seeds / elapsed:.1f} seeds/s"
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
