"""Messages exchanged between Raft nodes, and the local inputs that travel the same path.

Messages are plain dataclasses so that the caller may encode them any way it likes (the
simulator passes them as objects; the peer transport serialises them). Once handed to
:meth:`RaftNode.step` or returned in a ``Ready``, a message is never mutated again, so a
network may deliver the same object twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from keel_store.raft.types import Entry, HardState, Snapshot


class MessageType(enum.IntEnum):
    """What a message asks for or reports."""

    APPEND = 1
    """Leader → follower: entries after (index, log_term), and the leader's commit index."""
    APPEND_RESPONSE = 2
    """Follower → leader: the last index it now matches, or a rejection with a hint."""
    VOTE = 3
    """Candidate → all: vote for me in ``term``; my last entry is (index, log_term)."""
    VOTE_RESPONSE = 4
    PRE_VOTE = 5
    """Would-be candidate → all: would you vote for me in ``term`` (not yet my term)?"""
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    """Leader → follower: I am alive; commit up to ``commit``; ``context`` is a read round."""
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    """Leader → follower: install ``snapshot``; the log it needs is compacted away."""
    TIMEOUT_NOW = 10
    """Leader → transferee: campaign now, skipping pre-vote and the leader lease."""


@dataclass(slots=True)
class Message:
    """One Raft message. Fields a type does not use keep their defaults."""

    type: MessageType
    to: int
    sender: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    """Read-round id on heartbeats; ``b"transfer"`` on votes caused by a leader transfer."""
    quiet: bool = False
    """APPEND without entries telling a follower the new commit index: accepted, it is not
    answered (the leader learns nothing from the answer: the follower's acks of the
    entries are on their way, and a lost one is recovered by the APPEND that a heartbeat
    response triggers, which is answered)."""


TRANSFER_CONTEXT = b"transfer"
"""Vote context of a campaign started by ``TIMEOUT_NOW``: voters skip the leader lease."""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed linearizable read: serve ``context`` once applied index >= ``index``."""

    index: int
    context: bytes


class Role(enum.Enum):
    """A node's role in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the caller may want to watch (leader, role); never persisted."""

    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """Everything the caller must do before calling :meth:`RaftNode.advance`.

    Order: install ``snapshot``, append ``entries`` and save ``hard_state`` durably (one
    fsync); only then send ``messages``; then apply ``committed_entries`` and serve
    ``read_states`` once applied far enough. No ``step``/``tick``/``propose`` may happen
    between :meth:`RaftNode.ready` and :meth:`RaftNode.advance`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    @property
    def must_sync(self) -> bool:
        """True when this Ready carries anything that must reach disk before messages go."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None
