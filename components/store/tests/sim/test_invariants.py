"""The invariant checks themselves notice violations (so a passing run means something)."""

import random

import pytest

from keel_store.raft import Entry, MemoryStorage, RaftConfig, RaftNode, Role
from keel_store.raft.membership import bootstrap_entries
from keel_store.raft.progress import Progress
from keel_store.raft.types import HardState
from keel_store.sim.invariants import (
    Invariants,
    InvariantViolation,
    check_leader_view,
    check_log_matching,
)


def storage_with(terms: list[int]) -> MemoryStorage:
    storage = MemoryStorage()
    storage.append([Entry(term=t, index=i, data=b"%d" % t) for i, t in enumerate(terms, 1)])
    return storage


def leader_of(voters: tuple[int, ...]) -> RaftNode:
    storage = MemoryStorage()
    storage.append(bootstrap_entries(voters))
    storage.set_hard_state(HardState(term=1, commit=len(voters)))
    node = RaftNode(RaftConfig(id=1, rng=random.Random(1)), storage)
    rd = node.ready()
    node.advance(rd)
    node.campaign()
    node.campaign()
    return node


def test_two_leaders_in_one_term_are_caught() -> None:
    inv = Invariants()
    single = leader_of((1,))
    assert single.role is Role.LEADER
    inv.saw_leader(single)
    impostor = leader_of((1,))
    impostor.id = 2
    with pytest.raises(InvariantViolation, match="election safety"):
        inv.saw_leader(impostor)


def test_different_entries_applied_at_one_index_are_caught() -> None:
    inv = Invariants()
    inv.saw_apply(1, Entry(term=2, index=5, data=b"a"))
    inv.saw_apply(2, Entry(term=2, index=5, data=b"a"))
    with pytest.raises(InvariantViolation, match="state-machine safety"):
        inv.saw_apply(3, Entry(term=3, index=5, data=b"b"))


def test_leader_missing_a_committed_entry_is_caught() -> None:
    inv = Invariants()
    inv.saw_apply(2, Entry(term=9, index=2, data=b"x"))  # index 2 committed at term 9
    leader = leader_of((1,))
    with pytest.raises(InvariantViolation, match="leader completeness"):
        inv.saw_leader(leader)


def test_logs_that_agree_later_but_differ_earlier_are_caught() -> None:
    check_log_matching({1: storage_with([1, 1, 2]), 2: storage_with([1, 1, 3])})  # fine
    with pytest.raises(InvariantViolation, match="log matching"):
        check_log_matching({1: storage_with([1, 2, 2]), 2: storage_with([1, 1, 2])})


def test_leader_counting_an_entry_a_follower_lacks_is_caught() -> None:
    leader = leader_of((1,))
    leader.progress[2] = Progress(1, 8, is_learner=False)
    leader.progress[2].match = leader.log.last_index()  # the founding entry and the no-op
    follower = MemoryStorage()
    follower.append(bootstrap_entries((1,)))  # the founding entry only
    check_leader_view(leader, {2: storage_with([1, 2]), 3: follower})  # node 3 not counted
    with pytest.raises(InvariantViolation, match="replication"):
        check_leader_view(leader, {2: follower})
    with pytest.raises(InvariantViolation, match="replication"):
        check_leader_view(leader, {2: follower})
