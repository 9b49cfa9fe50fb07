"""Membership: learners, promotion, removal, one change at a time."""

import pytest

from keel_store.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    MemoryStorage,
    MessageType,
    ProposalDroppedError,
    Role,
)

from .conftest import Cluster

ADD_LEARNER = ConfChangeType.ADD_LEARNER
ADD_VOTER = ConfChangeType.ADD_VOTER
REMOVE = ConfChangeType.REMOVE


def ready_cluster() -> Cluster:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.tick(times=2)
    return cluster


def test_learner_receives_the_log_but_does_not_vote_or_count() -> None:
    cluster = ready_cluster()
    leader = cluster.nodes[1]
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    cluster.start(4, MemoryStorage())
    cluster.settle()
    cluster.tick(times=3)
    assert leader.conf == ConfState(voters=(1, 2, 3), learners=(4,))
    learner = cluster.nodes[4]
    assert learner.log.last_index() == leader.log.last_index()
    assert not learner.promotable
    learner.tick()
    for _ in range(50):
        learner.tick()
    assert learner.role is Role.FOLLOWER  # never campaigns


def test_promoted_learner_becomes_a_voter_everywhere() -> None:
    cluster = ready_cluster()
    leader = cluster.nodes[1]
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    cluster.start(4, MemoryStorage())
    cluster.tick(times=3)
    leader.propose_conf_change(ConfChange(ADD_VOTER, 4))
    cluster.tick(times=3)
    for node in cluster.nodes.values():
        assert node.conf.voters == (1, 2, 3, 4)
        assert node.conf.learners == ()
    # Four voters: a commit now needs three acknowledgements.
    cluster.down = {2, 3}
    leader.propose(b"needs three")
    cluster.settle()
    assert b"needs three" not in cluster.applied[1]
    cluster.down = {3}
    cluster.tick(times=2)
    assert b"needs three" in cluster.applied[1]


def test_only_one_change_may_be_pending() -> None:
    cluster = ready_cluster()
    leader = cluster.nodes[1]
    cluster.down = {2, 3}
    leader.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    with pytest.raises(ProposalDroppedError, match="not applied yet"):
        leader.propose_conf_change(ConfChange(ADD_LEARNER, 5))


def test_new_leader_waits_for_its_first_entry_before_a_change() -> None:
    cluster = Cluster(3)
    cluster.rewrite = lambda m: None if m.type is MessageType.APPEND else m
    leader = cluster.elect(1)
    assert leader.role is Role.LEADER
    assert leader.log.applied < leader.log.last_index()
    with pytest.raises(ProposalDroppedError, match="not applied yet"):
        leader.propose_conf_change(ConfChange(REMOVE, 3))


def test_removed_leader_steps_down_and_the_rest_elect() -> None:
    cluster = ready_cluster()
    leader = cluster.nodes[1]
    leader.propose_conf_change(ConfChange(REMOVE, 1))
    cluster.tick(times=2)
    assert leader.role is Role.FOLLOWER
    assert not leader.promotable
    cluster.down = {1}
    cluster.tick(times=50)
    new = cluster.leader()
    assert new.id in (2, 3)
    assert new.conf.voters == (2, 3)


def test_invalid_changes_are_refused() -> None:
    with pytest.raises(ConfChangeError, match="demote"):
        ConfChange(ADD_LEARNER, 1).apply(ConfState(voters=(1, 2)))
    with pytest.raises(ConfChangeError, match="no voters"):
        ConfChange(REMOVE, 1).apply(ConfState(voters=(1,)))
    with pytest.raises(ConfChangeError, match="malformed"):
        ConfChange.decode(b"bogus")
    assert ConfChange.decode(ConfChange(ADD_VOTER, 7).encode()) == ConfChange(ADD_VOTER, 7)
