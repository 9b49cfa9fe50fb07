"""A pure, deterministic Raft core in the manner of etcd's raft library.

The core does no I/O and reads no clock: the caller feeds it messages, proposals and
ticks, and takes back what to persist, what to send and what to apply.
"""

from keel_store.raft.config import ConfigError, RaftConfig
from keel_store.raft.membership import ConfChange, ConfChangeError, ConfChangeType
from keel_store.raft.messages import Message, MessageType, ReadState, Ready, Role, SoftState
from keel_store.raft.node import ProposalDroppedError, RaftNode
from keel_store.raft.storage import MemoryStorage, Storage
from keel_store.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

__all__ = [
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProposalDroppedError",
    "RaftConfig",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Storage",
]
