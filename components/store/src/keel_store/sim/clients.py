"""Simulated clients: each has at most one operation outstanding, sent to the node it
believes leads; reads go through ReadIndex, writes through the log."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from keel_store.sim.history import SimOp
from keel_store.sim.kv import ABSENT


@dataclass(slots=True)
class Client:
    """One client's state between steps."""

    id: int
    target: int
    op: SimOp | None = None
    next_at: int = 0


@dataclass(slots=True)
class Workload:
    """Picks the next operation: kind, key and values, from the run's random stream."""

    rng: random.Random
    keys: int
    written: dict[str, list[str]] = field(default_factory=dict)
    next_id: int = 1

    def next_op(self, client: int, now: int, timeout: int) -> SimOp:
        """A fresh operation invoked at ``now``."""
        rng = self.rng
        op_id = self.next_id
        self.next_id += 1
        key = f"k{rng.randrange(self.keys)}"
        roll = rng.random()
        op = SimOp(op_id, client, "get", key, now, deadline=now + timeout)
        if roll < 0.35:
            return op
        value = f"v{op_id}"
        if roll < 0.65:
            op.kind, op.value = "put", value
        elif roll < 0.75:
            op.kind = "delete"
        else:
            history = self.written.get(key, [])
            op.kind, op.value = "cas", value
            op.expected = rng.choice(history[-3:]) if history and rng.random() < 0.8 else ABSENT
        if op.value:
            self.written.setdefault(key, []).append(op.value)
        return op
