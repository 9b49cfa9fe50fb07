from keel_store.raft import Role

from .conftest import Cluster


def test_campaign_elects_a_leader_and_commits_its_noop(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    assert leader.role is Role.LEADER
    assert leader.term == 1
    cluster3.tick(times=2)
    for node in cluster3.nodes.values():
        assert node.leader == 1
        assert node.log.committed == 1


def test_replication_commits_on_every_node(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    for i in range(100):
        leader.propose(f"x{i}".encode())
    cluster3.settle()
    cluster3.tick(times=2)
    for nid in cluster3.nodes:
        assert cluster3.applied[nid] == [f"x{i}".encode() for i in range(100)]
