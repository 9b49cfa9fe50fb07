"""The Raft state machine: election, replication, ReadIndex, transfer, snapshots, membership.

:class:`RaftNode` is pure: it never touches a socket, file or clock. The caller feeds it
``tick()`` (its clock), ``step(message)`` (its network) and proposals, and drains
:meth:`RaftNode.ready` (what to persist, send and apply), then calls
:meth:`RaftNode.advance`. The structure follows etcd's raft library.
"""

from __future__ import annotations

from keel_store.raft.config import RaftConfig
from keel_store.raft.leader import LeaderSide, ProposalDroppedError
from keel_store.raft.log import RaftLog
from keel_store.raft.membership import ConfChange, ConfChangeError, has_quorum
from keel_store.raft.messages import (
    TRANSFER_CONTEXT,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from keel_store.raft.progress import Progress
from keel_store.raft.read_only import PendingReads
from keel_store.raft.storage import Storage
from keel_store.raft.types import ConfState, Entry, EntryType, HardState

MT = MessageType
MAX_APPLY_BATCH = 256
__all__ = ["ProposalDroppedError", "RaftNode"]


class RaftNode(LeaderSide):
    """One member of a Raft group, driven entirely by its caller."""

    def __init__(self, config: RaftConfig, storage: Storage) -> None:
        config.validate()
        self.config = config
        self.id = config.id
        self._rng = config.rng
        self.log = RaftLog(storage, config.applied)
        hard_state, conf = storage.initial_state()
        self.term = hard_state.term
        self.vote = hard_state.vote
        if hard_state.commit:
            self.log.commit_to(hard_state.commit)
        self.conf: ConfState = conf
        self.role = Role.FOLLOWER
        self.leader = 0
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = config.election_ticks
        self._early_retry = False
        """An early campaign is under way: if it becomes a candidate and the vote splits
        (two followers saw the same leader die), retry early once more too."""
        self.pending_conf_index = 0
        self.lead_transferee = 0
        self.reads = PendingReads()
        self.messages: list[Message] = []
        self._broadcast_due = False
        """New entries wait for ready(): proposals between two Readies share APPENDs."""
        self.read_states: list[ReadState] = []
        self._prev_hard_state = hard_state
        self._prev_soft_state = SoftState(0, Role.FOLLOWER)
        self._become_follower(self.term, 0)

    # --- public API ---------------------------------------------------------------------

    @property
    def promotable(self) -> bool:
        """Can this node become leader (is it a voter)?"""
        return self.id in self.conf.voters

    def tick(self) -> None:
        """Advance the node's logical clock by one tick."""
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.promotable and self.election_elapsed >= self.randomized_election_ticks:
                self.election_elapsed = 0
                self.campaign()

    def campaign(self, *, transfer: bool = False) -> None:
        """Start an election now (pre-vote first unless ``transfer``)."""
        if self.role is Role.LEADER or not self.promotable:
            return
        if self._has_unapplied_conf_change():
            return  # the configuration it would campaign in is about to change
        if self.config.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def report_leader_unreachable(self, leader: int) -> None:
        """The caller lost its connection to ``leader`` (its process died, most likely).

        The follower side of etcd-raft's ``ReportUnreachable``: a follower of ``leader``
        forgets it (so it stops honouring the leader lease on votes, and its caller
        stops forwarding to a dead leader) and, with pre-vote, campaigns after 1 to
        ``max(1, election_ticks // 3)`` ticks (random, so that two followers that saw the
        same death rarely split the vote) instead of a whole election timeout; if
        that campaign reaches the vote and the vote splits, the retry is early too (once).
        Safety
        does not depend on the report: when it is wrong (the leader is alive), the pre-vote
        is refused by every follower still in the lease and ignored by the leader, and
        the leader's next heartbeat restores it. Without pre-vote the node only forgets
        the leader: a campaign would bump the term and depose a live leader.
        """
        if self.role is not Role.FOLLOWER or leader == 0 or self.leader != leader:
            return  # stale: we already moved on from that leader
        self.leader = 0
        if self.config.pre_vote and self.promotable:
            self._campaign_early()
            self._early_retry = True

    def _campaign_early(self) -> None:
        early = 1 + self._rng.randrange(max(1, self.config.election_ticks // 3))
        self.election_elapsed = max(self.election_elapsed, self.randomized_election_ticks - early)

    def propose(self, data: bytes) -> int:
        """Append a command to the log; returns its index. Leader only."""
        self._check_can_propose()
        return self._append(EntryType.NORMAL, [data])

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose one membership change; returns its index. One at a time, leader only."""
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDroppedError(
                f"membership change at {self.pending_conf_index} is not applied yet"
            )
        try:
            change.apply(self.conf)
        except ConfChangeError as exc:
            raise ProposalDroppedError(str(exc)) from exc
        index = self._append(EntryType.CONF_CHANGE, [change.encode()])
        self.pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ReadState with ``context`` comes out of ready()."""
        if self.role is not Role.LEADER:
            raise ProposalDroppedError(f"node {self.id} is not the leader ({self.leader})")
        if (
            not self.config.unsafe_read_before_term_commit
            and self.log.term(self.log.committed) != self.term
        ):
            raise ProposalDroppedError("leader has not committed an entry of its term yet")
        if context in self.reads:
            raise ProposalDroppedError(f"read {context!r} is already pending")
        index = self.log.committed
        if self.conf.voters == (self.id,) or self.config.unsafe_skip_read_index_heartbeat:
            self.read_states.append(ReadState(index, context))
            return
        self.reads.add(context, index, self.id)
        self._broadcast_heartbeat(context)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter ``to`` once it has caught up (TIMEOUT_NOW)."""
        if self.role is not Role.LEADER:
            raise ProposalDroppedError(f"node {self.id} is not the leader")
        if to == self.id or to not in self.conf.voters:
            raise ProposalDroppedError(f"node {to} is not another voter")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to, self.id, self.term))
        else:
            self._send_append(to)

    def step(self, m: Message) -> None:
        """Handle a message from a peer."""
        if m.term > self.term:
            if m.type is MT.VOTE or m.type is MT.PRE_VOTE:
                in_lease = (
                    self.config.check_quorum
                    and self.leader != 0
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and m.context != TRANSFER_CONTEXT:
                    return  # we heard from a live leader recently: ignore the disruptor
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESPONSE and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.sender)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # Tell a stale leader about the newer term so it steps down.
                self._send(Message(MT.APPEND_RESPONSE, m.sender, self.id, self.term))
                return
            if m.type is MT.PRE_VOTE:
                self._send(Message(MT.PRE_VOTE_RESPONSE, m.sender, self.id, self.term, reject=True))
                return
            if not (
                m.type is MT.APPEND_RESPONSE
                and self.role is Role.LEADER
                and self.config.unsafe_skip_append_response_term_check
            ):
                return

        if m.type is MT.VOTE or m.type is MT.PRE_VOTE:
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def has_ready(self) -> bool:
        """Is there anything for the caller to persist, send or apply?"""
        return bool(
            self.messages
            or self._broadcast_due
            or self.read_states
            or self.log.has_unstable()
            or self.log.has_next_committed()
            or self._hard_state() != self._prev_hard_state
            or SoftState(self.leader, self.role) != self._prev_soft_state
        )

    def ready(self) -> Ready:
        """Collect what the caller must do now; hand it back with :meth:`advance`."""
        if self._broadcast_due:
            self._broadcast_due = False
            if self.role is Role.LEADER:
                self._broadcast_append()
        rd = Ready()
        soft = SoftState(self.leader, self.role)
        if soft != self._prev_soft_state:
            rd.soft_state = soft
        hard = self._hard_state()
        if hard != self._prev_hard_state:
            rd.hard_state = hard
        rd.entries = self.log.unstable_entries()
        rd.snapshot = self.log.unstable_snapshot()
        rd.committed_entries = self.log.next_committed(MAX_APPLY_BATCH)
        rd.messages, self.messages = self.messages, []
        rd.read_states, self.read_states = self.read_states, []
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied everything in ``rd``."""
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snapshot_to(rd.snapshot.meta.index)
            self.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for entry in rd.committed_entries:
            self.log.applied_to(entry.index)
            if entry.type is EntryType.CONF_CHANGE:
                self._apply_conf_change(entry)

    # --- roles ----------------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        vote = 0 if self.config.unsafe_skip_persist_vote else self.vote
        return HardState(term=self.term, vote=vote, commit=self.log.committed)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        et = self.config.election_ticks
        self.randomized_election_ticks = et + self._rng.randrange(et)
        self.lead_transferee = 0
        self.votes = {}
        self.pending_conf_index = 0
        self.reads.clear()
        self.progress = {}
        last = self.log.last_index()
        for nid in (*self.conf.voters, *self.conf.learners):
            pr = Progress(last + 1, self.config.max_inflight, is_learner=nid in self.conf.learners)
            if nid == self.id:
                pr.match = last
            self.progress[nid] = pr

    def _become_follower(self, term: int, leader: int) -> None:
        self._early_retry = False
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_leader(self) -> None:
        self._early_retry = False
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        me = self.progress[self.id]
        me.become_replicate()
        me.recent_active = True
        # No membership change until this term's first entry is applied (see membership):
        # this closes the single-server-change bug Ongaro described in 2015.
        self.pending_conf_index = self._append(EntryType.NORMAL, [b""])

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            self.leader = 0
            self.votes = {}
            term, kind = self.term + 1, MT.PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            if self._early_retry:
                # A split vote would otherwise wait for a whole election timeout.
                self._early_retry = False
                self._campaign_early()
            term, kind = self.term, MT.VOTE
        self.votes[self.id] = True
        if has_quorum(self.conf.voters, {self.id}):
            self._won_election(pre_vote)
            return
        context = TRANSFER_CONTEXT if transfer else b""
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in self.conf.voters:
            if voter != self.id:
                self._send(
                    Message(kind, voter, self.id, term, last_term, last_index, context=context)
                )

    def _won_election(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False, transfer=False)
        else:
            self._become_leader()

    def _handle_vote_request(self, m: Message) -> None:
        response = MT.VOTE_RESPONSE if m.type is MT.VOTE else MT.PRE_VOTE_RESPONSE
        can_vote = (
            self.vote == m.sender
            or (self.vote == 0 and self.leader == 0)
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(response, m.sender, self.id, m.term))
            if m.type is MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(Message(response, m.sender, self.id, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        if m.type is MT.APPEND:
            self._become_follower(self.term, m.sender)
            self._handle_append(m)
        elif m.type is MT.HEARTBEAT:
            self._become_follower(self.term, m.sender)
            self._handle_heartbeat(m)
        elif m.type is MT.SNAPSHOT:
            self._become_follower(self.term, m.sender)
            self._handle_snapshot(m)
        elif (m.type is MT.PRE_VOTE_RESPONSE and self.role is Role.PRE_CANDIDATE) or (
            m.type is MT.VOTE_RESPONSE and self.role is Role.CANDIDATE
        ):
            self.votes.setdefault(m.sender, not m.reject)
            granted = {v for v, ok in self.votes.items() if ok}
            rejected = {v for v, ok in self.votes.items() if not ok}
            if has_quorum(self.conf.voters, granted):
                self._won_election(self.role is Role.PRE_CANDIDATE)
            elif has_quorum(self.conf.voters, rejected):
                self._become_follower(self.term, 0)

    def _step_follower(self, m: Message) -> None:
        if m.type is MT.APPEND:
            self.election_elapsed = 0
            self.leader = m.sender
            self._handle_append(m)
        elif m.type is MT.HEARTBEAT:
            self.election_elapsed = 0
            self.leader = m.sender
            self._handle_heartbeat(m)
        elif m.type is MT.SNAPSHOT:
            self.election_elapsed = 0
            self.leader = m.sender
            self._handle_snapshot(m)
        elif m.type is MT.TIMEOUT_NOW:
            self.campaign(transfer=True)

    # --- follower side of replication ---------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(
                Message(MT.APPEND_RESPONSE, m.sender, self.id, self.term, index=log.committed)
            )
            return
        last = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            if not m.quiet:
                self._send(Message(MT.APPEND_RESPONSE, m.sender, self.id, self.term, index=last))
            return
        hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(
            Message(
                MT.APPEND_RESPONSE,
                m.sender,
                self.id,
                self.term,
                log_term=hint_term,
                index=m.index,
                reject=True,
                reject_hint=hint,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(MT.HEARTBEAT_RESPONSE, m.sender, self.id, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        log = self.log
        if snap.meta.index <= log.committed:
            index = log.committed
        elif log.match_term(snap.meta.index, snap.meta.term):
            log.commit_to(snap.meta.index)  # we already have the entries: fast-forward
            index = log.committed
        else:
            log.restore(snap)
            self.conf = snap.meta.conf
            index = log.last_index()
        self._send(Message(MT.APPEND_RESPONSE, m.sender, self.id, self.term, index=index))

    # --- membership -----------------------------------------------------------------------

    def _has_unapplied_conf_change(self) -> bool:
        log = self.log
        if log.committed <= log.applied:
            return False
        lo = max(log.applied + 1, log.first_index())
        entries = log.slice(lo, log.committed + 1, log.committed + 1 - lo)
        return any(e.type is EntryType.CONF_CHANGE for e in entries)

    def _apply_conf_change(self, entry: Entry) -> None:
        try:
            conf = ConfChange.decode(entry.data).apply(self.conf)
        except ConfChangeError:
            return  # committed but invalid: every node ignores it alike
        self.conf = conf
        if self.role is not Role.LEADER:
            return
        members = (*conf.voters, *conf.learners)
        for nid in members:
            pr = self.progress.get(nid)
            if pr is None:
                pr = Progress(self.log.last_index() + 1, self.config.max_inflight, is_learner=False)
                pr.recent_active = True
                self.progress[nid] = pr
            pr.is_learner = nid in conf.learners
        for nid in [n for n in self.progress if n not in members]:
            del self.progress[nid]
        if self.id not in conf.voters:
            self._become_follower(self.term, 0)
            return
        if self.lead_transferee and self.lead_transferee not in conf.voters:
            self.lead_transferee = 0
        if self._maybe_commit():
            self._broadcast_append()

    def _send(self, m: Message) -> None:
        self.messages.append(m)
