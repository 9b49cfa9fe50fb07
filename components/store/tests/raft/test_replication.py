"""Replication: batching, pipelining, conflicts, commit rules, restart from storage."""

from dataclasses import replace

import pytest

from keel_store.raft import Entry, Message, MessageType, ProposalDroppedError, Role

from .conftest import Cluster


def test_replication_commits_on_every_node(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    for i in range(100):
        leader.propose(f"x{i}".encode())
    cluster3.settle()
    cluster3.tick(times=2)
    for nid in cluster3.nodes:
        assert cluster3.applied[nid] == [f"x{i}".encode() for i in range(100)]


def test_entries_are_batched_and_pipelined() -> None:
    cluster = Cluster(3, max_entries_per_message=10, max_inflight=3)
    leader = cluster.elect(1)
    cluster.tick(times=2)
    for i in range(100):
        leader.propose(f"x{i}".encode())  # nothing delivered in between
    appends = [m for m in cluster.flush(1) if m.type is MessageType.APPEND and m.to == 2]
    # In replicate state: the window allows 3 messages in flight, the first carrying all
    # queued entries up to the batch limit.
    assert len(appends) == 3
    assert all(len(m.entries) <= 10 for m in appends)
    assert appends[0].entries[0].data == b"x0"
    cluster.deliver(appends)
    cluster.settle()
    cluster.tick(times=3)
    assert cluster.applied[2][-1] == b"x99"


def test_follower_rejects_a_gap_and_the_leader_backs_up(cluster3: Cluster) -> None:
    leader = cluster3.leave_behind(30)
    cluster3.down = set()
    cluster3.tick(times=3)
    assert cluster3.nodes[3].log.last_index() == leader.log.last_index()
    assert cluster3.applied[3] == cluster3.applied[1]


def test_conflicting_uncommitted_entries_are_replaced() -> None:
    cluster = Cluster(3)
    leader = cluster.elect(1)
    cluster.tick(times=2)
    cluster.down = {2, 3}
    leader.propose(b"lost")
    cluster.settle()
    cluster.down = {1}
    cluster.tick(times=40)
    new = cluster.leader()
    new.propose(b"kept")
    cluster.settle()
    cluster.down = set()
    cluster.tick(times=40)
    for nid in cluster.nodes:
        assert b"lost" not in cluster.applied[nid]
    assert b"kept" in cluster.applied[1]


def test_follower_refuses_to_overwrite_committed_entries() -> None:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.tick(times=2)
    node = cluster.nodes[2]
    bogus = Message(MessageType.APPEND, 2, 1, term=2, index=0, log_term=0, entries=(Entry(9, 1),))
    node.step(bogus)  # index 0 < committed: answered with the commit index, not applied
    [reply] = [m for m in node.ready().messages if m.type is MessageType.APPEND_RESPONSE]
    assert reply.index == node.log.committed
    assert node.log.term(1) == 1


@pytest.mark.parametrize("unsafe", [False, True])
def test_old_term_entries_commit_only_with_a_current_term_entry(unsafe: bool) -> None:
    cluster = Cluster(
        3,
        check_quorum=False,
        max_entries_per_message=1,
        unsafe_commit_previous_term_entries=unsafe,
    )
    old_leader = cluster.elect(1)
    cluster.tick(times=2)
    cluster.down = {2, 3}
    old_term = old_leader.term
    old = old_leader.propose(b"old")  # only on node 1
    cluster.settle()
    cluster.down = set()
    node = cluster.nodes[1]
    node.step(Message(MessageType.APPEND_RESPONSE, 1, 2, term=old_term + 1))  # deposed
    # Re-elected; followers get the old entry but never the new term's no-op.
    new_term = old_term + 2
    cluster.rewrite = lambda m: replace(m, entries=tuple(e for e in m.entries if e.term < new_term))
    node.campaign()
    cluster.settle()
    assert node.role is Role.LEADER
    assert node.term == new_term
    assert cluster.nodes[2].log.term(old) == old_term  # a majority holds the old entry
    # Counting replicas of an older term's entry must not commit it (Raft §5.4.2).
    assert node.log.committed == (old if unsafe else old - 1)
    cluster.rewrite = lambda m: m
    cluster.tick(times=3)
    assert node.log.committed == old + 1


def test_proposal_on_a_follower_is_dropped_with_a_reason(cluster3: Cluster) -> None:
    cluster3.elect(1)
    with pytest.raises(ProposalDroppedError, match="not the leader"):
        cluster3.nodes[2].propose(b"x")


def test_restart_recovers_term_vote_log_and_commit(cluster3: Cluster) -> None:
    leader = cluster3.elect(1)
    for i in range(5):
        leader.propose(f"x{i}".encode())
    cluster3.settle()
    cluster3.tick(times=2)
    before = cluster3.nodes[2]
    node = cluster3.start(2)
    assert (node.term, node.vote) == (before.term, before.vote)
    assert node.log.last_index() == before.log.last_index()
    assert node.log.committed == before.log.committed
    assert node.role is Role.FOLLOWER


def test_commit_notices_are_quiet_and_unanswered(cluster3: Cluster) -> None:
    """When the commit index moves, followers in replicate state learn it from a quiet
    APPEND without entries, and do not answer it when they accept it."""
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    cluster3.sent.clear()
    leader.propose(b"x")
    cluster3.settle()
    appends = [m for m in cluster3.sent if m.type is MessageType.APPEND]
    with_entries = [m for m in appends if m.entries]
    notices = [m for m in appends if not m.entries]
    assert {m.to for m in with_entries} == {2, 3}
    assert not any(m.quiet for m in with_entries)
    assert {m.to for m in notices} == {2, 3}
    assert all(m.quiet for m in notices)
    assert all(m.commit == leader.log.committed for m in notices)
    answers = [m for m in cluster3.sent if m.type is MessageType.APPEND_RESPONSE]
    assert sorted(m.sender for m in answers) == [2, 3]  # one per APPEND with entries
    for nid in (2, 3):
        assert cluster3.nodes[nid].log.committed == leader.log.committed
        assert cluster3.applied[nid] == [b"x"]


def test_a_quiet_notice_that_does_not_match_is_still_answered(cluster3: Cluster) -> None:
    """Only an accepted notice goes unanswered: one the follower cannot match (it lost
    the entries) gets its rejection, and the leader backs up and repairs it."""
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    cluster3.cut = {(1, 3)}  # 3 misses x1, x2
    leader.propose(b"x1")
    leader.propose(b"x2")
    cluster3.settle()
    cluster3.cut = set()
    last = leader.log.last_index()
    notice = Message(
        MessageType.APPEND,
        3,
        1,
        leader.term,
        log_term=leader.term,
        index=last,
        commit=leader.log.committed,
        quiet=True,
    )
    cluster3.sent.clear()
    cluster3.deliver([notice])
    rejections = [m for m in cluster3.sent if m.type is MessageType.APPEND_RESPONSE]
    assert rejections
    assert rejections[0].sender == 3
    assert rejections[0].reject
    assert cluster3.nodes[3].log.last_index() == last
    assert cluster3.applied[3] == [b"x1", b"x2"]


def test_a_lost_acknowledgement_is_recovered_through_the_heartbeat(cluster3: Cluster) -> None:
    """Notices are not answered, so a lost ack of the entries themselves must be made
    good by the APPEND a heartbeat response triggers, which is answered."""
    leader = cluster3.elect(1)
    cluster3.tick(times=2)
    cluster3.down = {2}  # the commit needs 3's acknowledgement...
    cluster3.rewrite = lambda m: None if m.type is MessageType.APPEND_RESPONSE else m
    leader.propose(b"x")
    cluster3.settle()  # ...which is lost
    assert leader.log.committed < leader.log.last_index()
    cluster3.rewrite = lambda m: m
    cluster3.tick(times=3)  # heartbeats
    assert leader.log.committed == leader.log.last_index()
    assert cluster3.applied[1] == cluster3.applied[3] == [b"x"]


def test_heartbeats_can_be_taken_without_changing_anything(cluster3: Cluster) -> None:
    """``heartbeats()`` gives what the leader's next heartbeat tick would send (commit
    capped at each follower's match), changes no state and queues nothing; a follower
    gets none. The followers accept them as from a live leader."""
    leader = cluster3.elect(1)
    leader.propose(b"x")
    cluster3.settle()
    cluster3.down.add(3)  # 3 misses the next entry: its match stays behind
    leader.propose(b"y")
    cluster3.settle()
    state = (leader.term, leader.log.committed, leader.heartbeat_elapsed, leader.election_elapsed)
    beats = leader.heartbeats()
    assert (
        leader.term,
        leader.log.committed,
        leader.heartbeat_elapsed,
        leader.election_elapsed,
    ) == state
    assert not leader.has_ready()  # nothing queued to send
    assert {m.to: m.commit for m in beats} == {
        2: leader.log.committed,
        3: leader.progress[3].match,
    }
    assert leader.progress[3].match < leader.log.committed
    assert all(m.type is MessageType.HEARTBEAT and m.term == leader.term for m in beats)
    assert cluster3.nodes[2].heartbeats() == []
    follower = cluster3.nodes[2]
    follower.election_elapsed = 5
    follower.step(beats[0] if beats[0].to == 2 else beats[1])
    assert follower.election_elapsed == 0
    assert follower.leader == 1
