"""ReadIndex: a read is released only after a quorum confirms the leader."""

import pytest

from keel_store.raft import MessageType, ProposalDroppedError, Role

from .conftest import Cluster


def collect_reads(cluster: Cluster, nid: int) -> list[tuple[int, bytes]]:
    cluster.deliver(cluster.flush(nid))
    out = [(rs.index, rs.context) for rs in cluster.read_states[nid]]
    cluster.read_states[nid].clear()
    return out


def test_read_is_released_after_a_heartbeat_quorum(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    leader.propose(b"x")
    cluster3.settle()
    leader.read_index(b"r1")
    reads = collect_reads(cluster3, 1)
    assert reads == [(leader.log.committed, b"r1")]


def test_read_waits_while_the_leader_cannot_reach_a_quorum(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    cluster3.cut = {(1, 2), (1, 3)}
    leader.read_index(b"r1")
    assert collect_reads(cluster3, 1) == []
    cluster3.cut = set()
    cluster3.tick(1, times=1)  # the next heartbeat round does not carry r1
    assert collect_reads(cluster3, 1) == []


def test_unsafe_switch_serves_reads_without_confirmation() -> None:
    cluster = Cluster(3, unsafe_skip_read_index_heartbeat=True)
    leader = cluster.elect(1)
    cluster.tick(times=2)
    cluster.cut = {(1, 2), (1, 3)}
    leader.read_index(b"r1")
    assert collect_reads(cluster, 1) == [(leader.log.committed, b"r1")]


def test_heartbeats_of_a_read_round_carry_its_context(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    leader.read_index(b"ctx")
    beats = [m for m in leader.ready().messages if m.type is MessageType.HEARTBEAT]
    assert {m.to for m in beats} == {2, 3}
    assert all(m.context == b"ctx" for m in beats)


def test_read_refused_before_the_leader_commits_in_its_term(cluster3: Cluster) -> None:
    # Node 1 wins, but its no-op never reaches the others.
    cluster3.rewrite = lambda m: None if m.type is MessageType.APPEND else m
    leader = cluster3.elect(1)
    assert leader.role is Role.LEADER
    assert leader.log.committed < leader.log.last_index()
    with pytest.raises(ProposalDroppedError, match="not committed an entry of its term"):
        leader.read_index(b"r")


def test_read_on_a_follower_is_refused(cluster3: Cluster) -> None:
    cluster3.elect(1)
    with pytest.raises(ProposalDroppedError):
        cluster3.nodes[2].read_index(b"r")
