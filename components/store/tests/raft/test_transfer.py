"""Leader transfer: the transferee catches up, gets TIMEOUT_NOW, and wins at once."""

import pytest

from keel_store.raft import ProposalDroppedError, Role

from .conftest import Cluster


def test_transfer_to_an_up_to_date_follower(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    leader.transfer_leadership(3)
    cluster3.settle()
    assert cluster3.nodes[3].role is Role.LEADER
    assert cluster3.nodes[1].role is Role.FOLLOWER
    assert cluster3.nodes[3].term == leader.term


def test_transfer_waits_for_a_lagging_follower_to_catch_up(cluster3: Cluster) -> None:
    leader = cluster3.leave_behind(20)
    cluster3.down = set()
    leader.transfer_leadership(3)
    with pytest.raises(ProposalDroppedError, match="moving to 3"):
        leader.propose(b"during")
    cluster3.settle()
    new = cluster3.nodes[3]
    assert new.role is Role.LEADER
    assert new.log.last_index() >= 22


def test_transfer_is_abandoned_after_an_election_timeout(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    cluster3.down = {3}
    leader.transfer_leadership(3)
    cluster3.tick(1, times=12)
    assert leader.role is Role.LEADER
    assert leader.lead_transferee == 0
    leader.propose(b"accepted again")


def test_transfer_to_a_non_voter_is_refused(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    with pytest.raises(ProposalDroppedError, match="not another voter"):
        leader.transfer_leadership(9)
