"""Membership changes, one server at a time, carried in CONF_CHANGE entries.

A change takes effect when its entry is applied. The leader proposes a new change only
after the previous one is applied, and not before it has applied an entry of its own term:
together these keep any two successive configurations' majorities overlapping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from keel_store.raft.types import ConfState, Entry, EntryType


class ConfChangeType(enum.Enum):
    """What a membership change does to one node."""

    ADD_VOTER = "add-voter"
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = "add-learner"
    """Add a non-voting member that receives the log (to catch up before promotion)."""
    REMOVE = "remove"


class ConfChangeError(ValueError):
    """A membership change is malformed or not allowed in the current configuration."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change."""

    type: ConfChangeType
    node_id: int

    def encode(self) -> bytes:
        """Entry data for a CONF_CHANGE entry."""
        return f"{self.type.value}:{self.node_id}".encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Parse entry data written by :meth:`encode`."""
        try:
            kind, _, node = data.decode().partition(":")
            return cls(ConfChangeType(kind), int(node))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfChangeError(f"malformed conf change entry {data!r}: {exc}") from exc

    def apply(self, conf: ConfState) -> ConfState:
        """The configuration after this change (a no-op if it changes nothing)."""
        voters = [v for v in conf.voters if v != self.node_id]
        learners = [n for n in conf.learners if n != self.node_id]
        if self.type is ConfChangeType.ADD_VOTER:
            voters.append(self.node_id)
        elif self.type is ConfChangeType.ADD_LEARNER:
            if self.node_id in conf.voters:
                raise ConfChangeError(f"node {self.node_id} is a voter; cannot demote it")
            learners.append(self.node_id)
        elif not voters:
            raise ConfChangeError(f"removing node {self.node_id} would leave no voters")
        return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)))


def quorum_index(voters: tuple[int, ...], match: dict[int, int]) -> int:
    """Highest index stored on a majority of ``voters``."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[len(voters) // 2]


def has_quorum(voters: tuple[int, ...], granted: set[int] | dict[int, bool]) -> bool:
    """Do the members of ``granted`` that are voters form a majority of ``voters``?"""
    return sum(1 for v in voters if v in granted) > len(voters) // 2


def bootstrap_entries(voters: tuple[int, ...]) -> list[Entry]:
    """The log every founding member starts with: one committed ADD_VOTER per voter, term 1.

    Keeping the founding configuration in the log (rather than only in the founders'
    storage) lets a node added later learn it by replaying the log from index 1.
    """
    return [
        Entry(
            term=1,
            index=i,
            type=EntryType.CONF_CHANGE,
            data=ConfChange(ConfChangeType.ADD_VOTER, v).encode(),
        )
        for i, v in enumerate(voters, start=1)
    ]
