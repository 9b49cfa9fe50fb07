"""Raft's safety properties, checked while a simulated run goes on and at its end.

Each check raises :class:`InvariantViolation` with what was seen where, so the failing
seed's report says which property broke.
"""

from __future__ import annotations

from keel_store.raft.node import RaftNode
from keel_store.raft.storage import MemoryStorage, StorageError
from keel_store.raft.types import Entry


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold in this run."""


class Invariants:
    """What the run has established so far: leaders per term and the committed log."""

    __slots__ = ("applied", "elections", "leaders")

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        """Term → the one node that led it (election safety)."""
        self.applied: dict[int, tuple[int, bytes]] = {}
        """Index → (term, data) of the entry applied there, by whoever applied it first."""
        self.elections = 0

    def saw_leader(self, node: RaftNode) -> None:
        """``node`` is leader now: it must be the only one in its term and hold every
        committed entry (election safety, leader completeness)."""
        term = node.term
        known = self.leaders.get(term)
        if known == node.id:
            return
        if known is not None:
            raise InvariantViolation(
                f"election safety: nodes {known} and {node.id} both led term {term}"
            )
        self.leaders[term] = node.id
        self.elections += 1
        log = node.log
        first, last = log.first_index(), log.last_index()
        for index, (entry_term, _) in self.applied.items():
            if index < first:
                continue  # covered by the leader's snapshot
            have = log.term(index) if index <= last else None
            if have != entry_term:
                raise InvariantViolation(
                    f"leader completeness: node {node.id}, leader of term {term}, has term"
                    f" {have} at index {index} where term {entry_term} was committed"
                )

    def saw_apply(self, node_id: int, entry: Entry) -> None:
        """``node_id`` applies ``entry``: every node applies the same entry at an index
        (state-machine safety)."""
        seen = self.applied.get(entry.index)
        if seen is None:
            self.applied[entry.index] = (entry.term, entry.data)
        elif seen != (entry.term, entry.data):
            raise InvariantViolation(
                f"state-machine safety: node {node_id} applied term {entry.term}"
                f" {entry.data!r} at index {entry.index}, where term {seen[0]} {seen[1]!r}"
                " was applied before"
            )


def check_leader_view(leader: RaftNode, storages: dict[int, MemoryStorage]) -> None:
    """A leader of the newest term never believes a follower holds an entry it lacks.

    Commitment rests on this: the leader counts ``match`` indexes. (A deposed leader's view
    may go stale; so callers pass only a leader whose term no node has passed.)
    """
    log = leader.log
    for nid, pr in leader.progress.items():
        if nid == leader.id or pr.match == 0 or nid not in storages:
            continue
        storage = storages[nid]
        ours = log.term(pr.match)
        if ours is None or pr.match < storage.first_index():
            continue  # compacted on one side: the snapshot covers it
        try:
            theirs: int | None = storage.term(pr.match)
        except StorageError:
            theirs = None
        if theirs != ours:
            raise InvariantViolation(
                f"replication: leader {leader.id} (term {leader.term}) counts node {nid} as"
                f" holding index {pr.match} of term {ours}; its log has term {theirs} there"
                f" (last index {storage.last_index()})"
            )


def check_log_matching(storages: dict[int, MemoryStorage]) -> None:
    """Two durable logs with an entry of the same index and term agree up to it."""
    logs = {nid: _entries(s) for nid, s in storages.items()}
    ids = sorted(logs)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            _match_pair(a, logs[a], b, logs[b])


def _entries(storage: MemoryStorage) -> dict[int, Entry]:
    first, last = storage.first_index(), storage.last_index()
    if last < first:
        return {}
    return {e.index: e for e in storage.entries(first, last + 1, last + 1 - first)}


def _match_pair(a: int, log_a: dict[int, Entry], b: int, log_b: dict[int, Entry]) -> None:
    if not log_a or not log_b:
        return
    lo = max(min(log_a), min(log_b))
    hi = min(max(log_a), max(log_b))
    agreed = False
    for index in range(hi, lo - 1, -1):
        ea, eb = log_a[index], log_b[index]
        if agreed or ea.term == eb.term:
            agreed = True
            if ea != eb:
                raise InvariantViolation(
                    f"log matching: nodes {a} and {b} agree on a later entry but differ at"
                    f" index {index}: {ea} vs {eb}"
                )
