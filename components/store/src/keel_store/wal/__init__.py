"""Durable storage for a Raft node: the write-ahead log and snapshot files.

- :mod:`.log`: :class:`WriteAheadLog`, segments of checksummed records with explicit
  sync, torn-tail recovery, refusal of real corruption, and compaction.
- :mod:`.committer`: :class:`GroupCommitter`, one fsync for many concurrent callers.
- :mod:`.snapshots`: :class:`SnapshotStore`, atomic checksummed snapshot files.
- :mod:`.storage`: :class:`NodeStorage`, a node's data directory (WAL + snapshots)
  with the order of writes and the compaction policy in one place.
- :mod:`.fs` and :mod:`.memfs`: the file operations behind both, real and in-memory
  (the latter can ``crash()`` and lose what was not synced, for tests and simulation).

Restarting a node::

    storage, restart = NodeStorage.open(OSFileSystem(), "/var/lib/keel-store")
    # state machine <- restart.snapshot; raft <- restart.hard_state, restart.entries
    storage.save(ready.entries, ready.hard_state)   # durable: now send ready.messages
    storage.save_snapshot(snapshot)                 # file, WAL marker, purge, compaction
"""

from .committer import GroupCommitter
from .fs import File, FileSystem, OSFileSystem
from .log import CorruptionError, Replay, WALError, WriteAheadLog
from .memfs import MemoryFileSystem
from .snapshots import SnapshotError, SnapshotStore
from .storage import NodeStorage, Restart

__all__ = [
    "CorruptionError",
    "File",
    "FileSystem",
    "GroupCommitter",
    "MemoryFileSystem",
    "NodeStorage",
    "OSFileSystem",
    "Replay",
    "Restart",
    "SnapshotError",
    "SnapshotStore",
    "WALError",
    "WriteAheadLog",
]
