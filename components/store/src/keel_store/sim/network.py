"""A faulty network in simulated time: drops, delays, reorders, duplicates, partitions."""

from __future__ import annotations

import heapq
import random

from keel_store.raft.messages import Message


class Network:
    """Messages in flight, ordered by delivery step (ties by send order)."""

    __slots__ = (
        "_queue",
        "_rng",
        "_seq",
        "delivered",
        "drop_rate",
        "dropped",
        "duplicate_rate",
        "groups",
        "max_delay",
        "sent",
        "straggler_factor",
        "straggler_rate",
    )

    def __init__(
        self,
        rng: random.Random,
        *,
        max_delay: int,
        drop_rate: float,
        duplicate_rate: float,
        straggler_rate: float = 0.02,
        straggler_factor: int = 5,
    ) -> None:
        self._rng = rng
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.max_delay = max_delay
        self.drop_rate = drop_rate
        self.duplicate_rate = duplicate_rate
        self.straggler_rate = straggler_rate
        self.straggler_factor = straggler_factor
        self.groups: dict[int, int] = {}
        """Node → partition group; nodes in different groups cannot talk. Empty: healed."""
        self.sent = self.dropped = self.delivered = 0

    def connected(self, a: int, b: int) -> bool:
        """Can ``a`` and ``b`` talk right now?"""
        groups = self.groups
        return not groups or groups.get(a, 0) == groups.get(b, 0)

    def send(self, m: Message, now: int) -> None:
        """Put ``m`` on the wire (it may be dropped, delayed or duplicated)."""
        self.sent += 1
        rng = self._rng
        if not self.connected(m.sender, m.to) or rng.random() < self.drop_rate:
            self.dropped += 1
            return
        copies = 2 if rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            delay = rng.randint(1, self.max_delay)
            if rng.random() < self.straggler_rate:
                delay *= self.straggler_factor  # a straggler, overtaken by later messages
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, m))

    def due(self, now: int) -> list[Message]:
        """Messages arriving at step ``now`` whose ends are still connected."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            m = heapq.heappop(queue)[2]
            if self.connected(m.sender, m.to):
                out.append(m)
            else:
                self.dropped += 1
        self.delivered += len(out)
        return out

    def partition(self, nodes: list[int]) -> None:
        """Split ``nodes`` into two random non-empty sides."""
        shuffled = list(nodes)
        self._rng.shuffle(shuffled)
        cut = self._rng.randint(1, len(shuffled) - 1)
        self.groups = {n: (0 if i < cut else 1) for i, n in enumerate(shuffled)}

    def heal(self) -> None:
        """Everyone can talk again."""
        self.groups = {}
