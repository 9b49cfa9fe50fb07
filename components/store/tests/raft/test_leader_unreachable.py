"""report_leader_unreachable: followers that saw the leader's connections drop."""

from keel_store.raft import Role

from .conftest import Cluster

EARLY = 10 // 3
"""The latest tick of an early campaign with the default 10 election ticks."""


def test_followers_that_lose_the_leader_elect_a_new_one_within_a_few_ticks() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.down = {1}
    for nid in (2, 3):
        cluster.nodes[nid].report_leader_unreachable(1)
        assert cluster.nodes[nid].leader == 0
    cluster.tick(times=EARLY)
    leader = cluster.leader()
    assert leader.id in (2, 3)
    assert leader.term == 3
    assert all(cluster.nodes[n].leader == leader.id for n in (2, 3))


def test_without_reports_the_election_timeout_decides() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.down = {1}
    cluster.tick(times=9)  # under the 10-tick minimum election timeout
    assert all(cluster.nodes[n].role is Role.FOLLOWER for n in (2, 3))
    assert all(cluster.nodes[n].leader == 1 for n in (2, 3))


def test_a_follower_still_in_the_lease_ignores_an_early_campaign() -> None:
    """Only 2 saw the drop: 3 still honours 1's lease, so 2's pre-vote wins nothing."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.down = {1}
    cluster.nodes[2].report_leader_unreachable(1)
    cluster.tick(times=EARLY)
    assert all(n.role is not Role.LEADER for i, n in cluster.nodes.items() if i != 1)
    assert cluster.nodes[3].term == 2
    cluster.tick(times=30)  # the election timeouts still elect someone
    assert cluster.leader().id in (2, 3)


def test_a_wrong_report_leaves_a_live_leader_in_place() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.cut = {(1, 2)}  # 2 misses heartbeats long enough to campaign early
    cluster.nodes[2].report_leader_unreachable(1)
    cluster.tick(times=EARLY + 1)
    assert cluster.nodes[2].role is Role.PRE_CANDIDATE  # refused: 3 and 1 are in the lease
    cluster.cut = set()
    cluster.tick(times=2)
    assert cluster.nodes[1].role is Role.LEADER
    assert all(n.term == 2 for n in cluster.nodes.values())
    assert all(n.leader == 1 for n in cluster.nodes.values())


def test_a_report_about_another_node_or_from_a_non_follower_is_ignored() -> None:
    cluster = Cluster(3)
    leader = cluster.elect(1)
    cluster.nodes[2].report_leader_unreachable(3)
    cluster.nodes[2].report_leader_unreachable(0)
    assert cluster.nodes[2].leader == 1
    leader.report_leader_unreachable(1)
    assert leader.role is Role.LEADER
    assert leader.leader == 1


def test_without_pre_vote_a_report_only_forgets_the_leader() -> None:
    cluster = Cluster(3, pre_vote=False)
    cluster.elect(1)
    cluster.down = {1}
    cluster.nodes[2].report_leader_unreachable(1)
    assert cluster.nodes[2].leader == 0
    cluster.tick(times=EARLY)
    assert cluster.nodes[2].term == 2  # no early campaign: it would bump the term


def test_a_split_vote_after_an_early_campaign_is_retried_early() -> None:
    """Both followers saw 1 die and campaigned at once: each voted for itself."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.down = {1}
    a, b = cluster.nodes[2], cluster.nodes[3]
    for node in (a, b):
        node.report_leader_unreachable(1)
        node.campaign()  # as if their early ticks came together
    for _ in range(2):  # pre-votes cross and are granted; then the votes cross
        out = {2: cluster.flush(2), 3: cluster.flush(3)}
        for m in out[2] + out[3]:
            if m.to in (2, 3):
                cluster.nodes[m.to].step(m)
    for m in cluster.flush(2) + cluster.flush(3):
        if m.to in (2, 3):
            cluster.nodes[m.to].step(m)
    assert a.role is Role.CANDIDATE
    assert b.role is Role.CANDIDATE
    assert a.term == b.term == 3
    cluster.tick(times=EARLY)
    leader = cluster.leader()
    assert leader.id in (2, 3)
    assert leader.term == 4
