"""Durable storage for a Raft node: the write-ahead log and snapshot files.

- :mod:`.log`: :class:`WriteAheadLog`, segments of checksummed records with explicit
  sync, torn-tail recovery, refusal of real corruption, and compaction.
- :mod:`.committer`: :class:`GroupCommitter`, one fsync for many concurrent callers.
- :mod:`.snapshots`: :class:`SnapshotStore`, atomic checksummed snapshot files.
- :mod:`.fs` and :mod:`.memfs`: the file operations behind both, real and in-memory
  (the latter can ``crash()`` and lose what was not synced, for tests and simulation).

Restarting a node::

    snapshot = SnapshotStore(fs, snap_dir).load()
    wal, replay = WriteAheadLog.open(fs, wal_dir, snapshot=snapshot.meta if snapshot else None)
    # state machine <- snapshot; raft <- replay.hard_state, replay.entries
"""

from .committer import GroupCommitter
from .fs import File, FileSystem, OSFileSystem
from .log import CorruptionError, Replay, WALError, WriteAheadLog
from .memfs import MemoryFileSystem
from .snapshots import SnapshotError, SnapshotStore

__all__ = [
    "CorruptionError",
    "File",
    "FileSystem",
    "GroupCommitter",
    "MemoryFileSystem",
    "OSFileSystem",
    "Replay",
    "SnapshotError",
    "SnapshotStore",
    "WALError",
    "WriteAheadLog",
]
