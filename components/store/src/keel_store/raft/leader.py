"""The leader's half of replication: heartbeats, APPENDs, acknowledgements, commit.

Split out of :mod:`keel_store.raft.node` to keep each module to one job; it is a mixin
of :class:`~keel_store.raft.node.RaftNode` and reads the node's state directly.
"""

from __future__ import annotations

from keel_store.raft.config import RaftConfig
from keel_store.raft.log import RaftLog
from keel_store.raft.membership import has_quorum, quorum_index
from keel_store.raft.messages import Message, MessageType, ReadState, Role
from keel_store.raft.progress import Progress, ProgressState
from keel_store.raft.read_only import PendingReads
from keel_store.raft.storage import CompactedError, SnapshotTemporarilyUnavailableError
from keel_store.raft.types import ConfState, Entry, EntryType

MT = MessageType


class ProposalDroppedError(Exception):
    """A proposal, read or transfer was refused; nothing was appended. Says why."""


class LeaderSide:
    """Leader behaviour of a RaftNode (see there for the state these attributes hold)."""

    id: int
    term: int
    role: Role
    leader: int
    config: RaftConfig
    log: RaftLog
    conf: ConfState
    progress: dict[int, Progress]
    lead_transferee: int
    election_elapsed: int
    heartbeat_elapsed: int
    reads: PendingReads
    read_states: list[ReadState]
    _broadcast_due: bool

    def _send(self, m: Message) -> None:
        raise NotImplementedError

    def _become_follower(self, term: int, leader: int) -> None:
        raise NotImplementedError

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise ProposalDroppedError(f"node {self.id} is not the leader ({self.leader})")
        if self.lead_transferee:
            raise ProposalDroppedError(f"leadership is moving to {self.lead_transferee}")

    def _append(self, kind: EntryType, payloads: list[bytes]) -> int:
        last = self.log.last_index()
        entries = [
            Entry(term=self.term, index=last + i, type=kind, data=data)
            for i, data in enumerate(payloads, start=1)
        ]
        last = self.log.append(entries)
        self.progress[self.id].maybe_update(last)
        self._maybe_commit()
        self._broadcast_due = True
        return last

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        et = self.config.election_ticks
        if self.election_elapsed >= et:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {nid for nid, pr in self.progress.items() if pr.recent_active}
                if not has_quorum(self.conf.voters, active | {self.id}):
                    self._become_follower(self.term, 0)
                    return
                for nid, pr in self.progress.items():
                    pr.recent_active = nid == self.id
            self.lead_transferee = 0
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= 2 * et:
                    pr.become_probe()  # the snapshot was lost; try again
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(b"")

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        if m.type is MT.APPEND_RESPONSE:
            self._handle_append_response(m, pr)
        elif m.type is MT.HEARTBEAT_RESPONSE:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.paused:
                pr.inflight.popleft()  # a lost APPEND must not stall the window forever
            if pr.match < self.log.last_index():
                self._send_append(m.sender)
            if m.context:
                self.read_states.extend(self.reads.ack(m.context, m.sender, self.conf.voters))

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.sender)
            return
        was_paused = pr.paused
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.free_inflight_to(m.index)
        if self._maybe_commit():
            self._broadcast_append(commit_notice=True)
        elif was_paused:
            self._send_append(m.sender)
        while self._send_append(m.sender, send_empty=False):
            pass
        if m.sender == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, m.sender, self.id, self.term))

    def _maybe_commit(self) -> bool:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = quorum_index(self.conf.voters, match)
        if index <= self.log.committed:
            return False
        # Only an entry of the current term is committed by counting replicas (§5.4.2).
        if (
            self.log.term(index) != self.term
            and not self.config.unsafe_commit_previous_term_entries
        ):
            return False
        self.log.commit_to(index)
        return True

    def _broadcast_append(self, *, commit_notice: bool = False) -> None:
        """APPEND to every follower; ``commit_notice``: the commit index moved, and a
        follower in REPLICATE with nothing new to receive gets a quiet notice."""
        for nid in self.progress:
            if nid != self.id and self._send_append(nid, quiet=commit_notice):
                # Pipelining: keep streaming batches while the window has room.
                while self._send_append(nid, send_empty=False):
                    pass

    def heartbeats(self, context: bytes = b"") -> list[Message]:
        """The HEARTBEATs a leader sends its followers now (none unless leader). Nothing
        changes: a caller that cannot wait for the next Ready (a member busy applying one
        long entry) may send these itself, to keep its followers from campaigning."""
        if self.role is not Role.LEADER:
            return []
        committed = self.log.committed
        return [
            Message(
                MT.HEARTBEAT,
                nid,
                self.id,
                self.term,
                commit=min(pr.match, committed),
                context=context,
            )
            for nid, pr in self.progress.items()
            if nid != self.id
        ]

    def alive_notices(self) -> list[Message]:
        """What a follower busy applying one long entry sends its leader now, since it
        cannot answer the leader's heartbeats until the apply ends: one
        HEARTBEAT_RESPONSE (none unless a follower with a known leader). The leader
        counts it as a reply to a heartbeat, so its check-quorum does not take the
        busy followers for lost ones (the followers apply the same long entry as it
        does, and may finish after it). Nothing changes here."""
        if self.role is not Role.FOLLOWER or self.leader == 0:
            return []
        return [Message(MT.HEARTBEAT_RESPONSE, self.leader, self.id, self.term)]

    def snapshot_sent(self, to: int, index: int) -> None:
        """The transport has written the last byte of the snapshot at ``index`` to
        ``to``: the wait for the follower's answer (two election timeouts, then the
        snapshot counts as lost and is sent again) starts now, not when the snapshot
        was handed over. A few hundred MB take a while to write, and a resend while
        the first copy is still on its way sends them all again (etcd raft learns the
        same from its transport through ``ReportSnapshot``)."""
        pr = self.progress.get(to) if self.role is Role.LEADER else None
        if pr is not None and pr.state is ProgressState.SNAPSHOT and pr.pending_snapshot == index:
            pr.snapshot_ticks = 0

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for m in self.heartbeats(context):
            self._send(m)

    def _send_append(self, to: int, *, send_empty: bool = True, quiet: bool = False) -> bool:
        pr = self.progress[to]
        if pr.paused:
            return False
        log = self.log
        prev = pr.next - 1
        prev_term = log.term(prev)
        entries = None
        if prev_term is not None:
            try:
                entries = log.slice(
                    pr.next, log.last_index() + 1, self.config.max_entries_per_message
                )
            except CompactedError:
                entries = None
        if entries is None:
            if not pr.recent_active:
                return False
            try:
                snap = log.snapshot()
            except SnapshotTemporarilyUnavailableError:
                return False  # being read; the follower's next heartbeat response asks again
            if snap.meta.index == 0:
                return False
            pr.become_snapshot(snap.meta.index)
            self._send(Message(MT.SNAPSHOT, to, self.id, self.term, snapshot=snap))
            return True
        if not entries and not send_empty:
            return False
        assert prev_term is not None
        self._send(
            Message(
                MT.APPEND,
                to,
                self.id,
                self.term,
                log_term=prev_term,
                index=prev,
                entries=tuple(entries),
                commit=log.committed,
                quiet=quiet and not entries and pr.state is ProgressState.REPLICATE,
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        return True
