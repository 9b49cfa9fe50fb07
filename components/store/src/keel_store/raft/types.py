"""Values shared by the Raft core, the write-ahead log and the state machine.

This module is the contract between :mod:`keel_store.raft` (the algorithm),
:mod:`keel_store.wal` (durable storage) and the MVCC state machine. Fields may be added
with defaults; existing ones keep their meaning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryType(enum.IntEnum):
    """What an entry carries."""

    NORMAL = 0
    """An opaque command for the state machine (empty data: a leader's no-op)."""
    CONF_CHANGE = 1
    """A membership change, encoded by the core."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. Index and term start at 1; index 0 / term 0 is 'nothing'."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent."""

    term: int = 0
    vote: int = 0
    """Node ID voted for in ``term``; 0 for none."""
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """Cluster membership at a point of the log."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    """Old voters while a joint-consensus change is in progress; empty otherwise."""


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot stands in the log, and the membership at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering the log up to and including ``meta.index``."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""
