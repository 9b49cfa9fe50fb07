"""Elections: voting rules, pre-vote, check-quorum, terms."""

from keel_store.raft import Message, MessageType, Role

from .conftest import Cluster


def test_campaign_elects_a_leader_and_commits_its_noop(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    assert leader.role is Role.LEADER
    assert leader.term == 2  # term 1 is the founding configuration's
    cluster3.tick(times=2)
    for node in cluster3.nodes.values():
        assert node.leader == 1
        assert node.log.committed == 4  # three founding entries and the no-op


def test_election_timeout_elects_someone_without_help() -> None:
    cluster = Cluster(3)
    cluster.tick(times=40)
    leaders = [n for n in cluster.nodes.values() if n.role is Role.LEADER]
    assert len(leaders) == 1
    assert all(n.leader == leaders[0].id for n in cluster.nodes.values())


def test_vote_is_persisted_before_the_response_is_sent(cluster3: Cluster) -> None:
    cluster3.nodes[1].campaign()
    # Pre-vote round first, then the real vote request from 1 reaches 2.
    cluster3.deliver(cluster3.flush(1))
    assert cluster3.storages[2].hard_state.vote == 1
    assert cluster3.storages[2].hard_state.term == 2


def test_a_node_votes_once_per_term() -> None:
    cluster = Cluster(3, pre_vote=False)
    node = cluster.nodes[3]
    node.step(Message(MessageType.VOTE, 3, 1, term=5, log_term=1, index=3))
    node.step(Message(MessageType.VOTE, 3, 2, term=5, log_term=1, index=3))
    rd = node.ready()
    verdicts = [(m.to, m.reject) for m in rd.messages]
    assert verdicts == [(1, False), (2, True)]
    assert rd.hard_state is not None
    assert rd.hard_state.vote == 1


def test_vote_refused_to_a_less_up_to_date_log() -> None:
    cluster = Cluster(3, check_quorum=False)
    leader = cluster.elect(1)
    leader.propose(b"x")
    cluster.settle()
    node = cluster.nodes[3]
    node.step(Message(MessageType.VOTE, 3, 2, term=9, log_term=1, index=3))
    [reply] = node.ready().messages
    assert reply.reject


def test_partitioned_node_with_pre_vote_does_not_bump_terms(cluster3: Cluster) -> None:
    cluster3.elect(1)
    cluster3.cut = {(3, 1), (1, 3), (3, 2), (2, 3)}
    cluster3.tick(3, times=100)
    assert cluster3.nodes[3].term == 2  # pre-votes never won, so no campaign
    cluster3.cut = set()
    cluster3.tick(times=5)
    assert cluster3.nodes[1].role is Role.LEADER
    assert cluster3.nodes[1].term == 2


def test_without_pre_vote_a_partitioned_node_disrupts_on_return() -> None:
    cluster = Cluster(3, pre_vote=False, check_quorum=False)
    cluster.elect(1)
    cluster.cut = {(3, 1), (1, 3), (3, 2), (2, 3)}
    cluster.tick(3, times=100)
    assert cluster.nodes[3].term > 2  # the mechanism pre-vote exists to prevent


def test_check_quorum_makes_an_isolated_leader_step_down(cluster3: Cluster) -> None:
    cluster3.elect(1)
    cluster3.cut = {(1, 2), (1, 3), (2, 1), (3, 1)}
    cluster3.tick(1, times=25)
    assert cluster3.nodes[1].role is Role.FOLLOWER


def test_alive_notices_of_busy_followers_keep_a_leader_under_check_quorum(
    cluster3: Cluster,
) -> None:
    """Followers busy with one long apply read nothing (no heartbeat reaches them, no
    tick runs) but send ``alive_notices``: a HEARTBEAT_RESPONSE to their leader, at
    their term. Their leader keeps leading through many election timeouts; without
    the notices it steps down (check-quorum). Only a follower with a leader sends one."""
    leader = cluster3.elect(1)
    cluster3.cut = {(1, 2), (1, 3)}  # the followers are busy: what the leader sends waits
    notices = [cluster3.nodes[n].alive_notices() for n in (2, 3)]
    assert [(m.type, m.to, m.sender, m.term) for ms in notices for m in ms] == [
        (MessageType.HEARTBEAT_RESPONSE, 1, 2, leader.term),
        (MessageType.HEARTBEAT_RESPONSE, 1, 3, leader.term),
    ]
    assert leader.alive_notices() == []
    for _ in range(5 * leader.config.election_ticks):
        cluster3.tick(1)
        for n in (2, 3):
            cluster3.deliver(cluster3.nodes[n].alive_notices())
    assert leader.role is Role.LEADER
    cluster3.tick(1, times=3 * leader.config.election_ticks)  # the notices stop
    assert leader.role is Role.FOLLOWER
    assert cluster3.nodes[2].leader == 1
    cluster3.nodes[2].leader = 0
    assert cluster3.nodes[2].alive_notices() == []


def test_leader_lease_ignores_disruptive_vote_requests(cluster3: Cluster) -> None:
    cluster3.elect(1)
    node = cluster3.nodes[2]
    node.step(Message(MessageType.VOTE, 2, 3, term=7, log_term=1, index=99))
    assert node.term == 2  # heard from leader recently: request ignored
    assert node.ready().messages == []


def test_stale_leader_learns_the_new_term_and_steps_down(cluster3: Cluster) -> None:
    cluster3.elect(1)
    cluster3.down = {1}
    cluster3.tick(times=40)
    new_leader = cluster3.leader()
    assert new_leader.id != 1
    cluster3.down = set()
    cluster3.tick(1, times=1)  # old leader heartbeats with its old term
    cluster3.settle()
    assert cluster3.nodes[1].role is Role.FOLLOWER
    assert cluster3.nodes[1].term == new_leader.term
