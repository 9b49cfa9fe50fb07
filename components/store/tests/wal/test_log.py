"""The WAL on the in-memory disk: replay, overwrites, segments, compaction, failures."""

from __future__ import annotations

import pytest

from keel_store.raft.types import HardState, Snapshot, SnapshotMeta
from keel_store.wal import (
    CorruptionError,
    MemoryFileSystem,
    SnapshotStore,
    WALError,
    WriteAheadLog,
)

from .conftest import entries

D = "/node/wal"


def fresh(segment_bytes: int = 1 << 20, **kw):
    fs = MemoryFileSystem()
    wal, replay = WriteAheadLog.open(fs, D, segment_bytes=segment_bytes, **kw)
    assert replay.entries == []
    assert replay.hard_state == HardState()
    return fs, wal


def reopen(fs, **kw):
    return WriteAheadLog.open(fs, D, **kw)


def test_synced_entries_and_hard_state_replay():
    fs, wal = fresh()
    wal.save(entries(1, 5), HardState(1, 1, 3))
    fs.crash()
    _, replay = reopen(fs)
    assert replay.entries == entries(1, 5)
    assert replay.hard_state == HardState(1, 1, 3)
    assert replay.torn_bytes == 0


def test_appended_but_unsynced_is_lost_on_crash():
    fs, wal = fresh()
    wal.save(entries(1, 2), HardState(1, 1, 0))
    wal.append(entries(3, 4), HardState(2, 2, 1))
    fs.crash()
    _, replay = reopen(fs)
    assert replay.entries == entries(1, 2)
    assert replay.hard_state == HardState(1, 1, 0)


def test_a_new_leaders_entries_replace_the_conflicting_suffix():
    fs, wal = fresh()
    wal.save(entries(1, 6, term=1), HardState(1, 0, 2))
    wal.save(entries(4, 5, term=2), HardState(2, 0, 2))
    fs.crash()
    wal, replay = reopen(fs)
    assert replay.entries == entries(1, 3, term=1) + entries(4, 5, term=2)
    assert wal.last_index == 5


def test_overwrite_across_segments_and_compaction():
    fs, wal = fresh(segment_bytes=256)
    wal.save(entries(1, 30, term=1), HardState(1, 0, 10))
    assert len(wal.segments) > 3
    wal.save(entries(12, 14, term=2), HardState(2, 0, 12))
    fs.crash()
    wal, replay = reopen(fs, segment_bytes=256)
    assert replay.entries == entries(1, 11, term=1) + entries(12, 14, term=2)
    store = SnapshotStore(fs, "/node/snap")
    meta = SnapshotMeta(12, 2)
    store.save(Snapshot(meta, b"state"))
    wal.save_snapshot(meta)
    wal.sync()
    before = len(wal.segments)
    removed = wal.compact(12)
    assert removed > 0
    assert len(wal.segments) == before - removed
    wal.save(entries(15, 16, term=2), HardState(2, 0, 14))
    fs.crash()
    loaded = store.load()
    assert loaded is not None
    assert loaded.meta == meta
    _, replay = reopen(fs, snapshot=loaded.meta, segment_bytes=256)
    assert replay.entries == entries(13, 14, term=2) + entries(15, 16, term=2)
    assert replay.hard_state == HardState(2, 0, 14)


def test_compaction_keeps_segments_whose_entries_are_still_needed():
    fs, wal = fresh(segment_bytes=256)
    wal.save(entries(1, 30), HardState(1, 0, 30))
    wal.save_snapshot(SnapshotMeta(3, 1))
    wal.sync()
    wal.compact(3)
    fs.crash()
    _, replay = reopen(fs, snapshot=SnapshotMeta(3, 1), segment_bytes=256)
    assert replay.entries == entries(4, 30)


def test_compaction_needs_a_synced_snapshot_marker():
    _, wal = fresh()
    wal.save(entries(1, 5), HardState(1, 0, 5))
    wal.save_snapshot(SnapshotMeta(5, 1))
    with pytest.raises(ValueError, match="past the last synced snapshot 0"):
        wal.compact(5)


def test_replay_from_a_snapshot_the_wal_was_compacted_past_is_refused():
    fs, wal = fresh(segment_bytes=256)
    wal.save(entries(1, 40), HardState(1, 0, 40))
    wal.save_snapshot(SnapshotMeta(30, 1))
    wal.sync()
    assert wal.compact(30) > 0
    fs.crash()
    with pytest.raises(CorruptionError, match=r"entries 3\.\.\d+ after snapshot 2 are not in"):
        reopen(fs, snapshot=SnapshotMeta(2, 1))


def test_an_installed_snapshot_replaces_the_log():
    fs, wal = fresh()
    wal.save(entries(1, 3, term=1), HardState(1, 0, 1))
    meta = SnapshotMeta(10, 3)
    wal.save_snapshot(meta)
    wal.save(entries(11, 12, term=3), HardState(3, 0, 10))
    fs.crash()
    _, replay = reopen(fs, snapshot=meta)
    assert replay.entries == entries(11, 12, term=3)


def test_entries_after_a_disagreeing_snapshot_point_are_dropped():
    # The WAL holds (5, term 1) but the snapshot says (5, term 2): what follows in the
    # WAL came after another history.
    fs, wal = fresh()
    wal.save(entries(1, 8, term=1), HardState(1, 0, 1))
    fs.crash()
    _, replay = reopen(fs, snapshot=SnapshotMeta(5, 2))
    assert replay.entries == []


@pytest.mark.parametrize(
    ("first", "last", "commit", "message"),
    [
        (4, 5, 0, "gap after 2"),
        (1, 1, 0, "overwrite committed entries"),
        (3, 3, 9, "commit 9 is past the last entry 3"),
    ],
)
def test_misuse_is_refused(first, last, commit, message):
    _, wal = fresh()
    wal.save(entries(1, 2), HardState(1, 0, 1))
    with pytest.raises(ValueError, match=message):
        wal.append(entries(first, last), HardState(1, 0, commit))
    wal.save(entries(3, 3), HardState(1, 0, 1))  # still usable


def test_a_failed_fsync_makes_the_wal_unusable():
    fs, wal = fresh()
    wal.save(entries(1, 2))
    wal.append(entries(3, 3))
    fs.fail_syncs = 1
    with pytest.raises(WALError, match=r"sync failed: .*injected"):
        wal.sync()
    with pytest.raises(WALError, match="unusable"):
        wal.sync()
    fs.crash()
    _, replay = reopen(fs)
    assert replay.entries == entries(1, 2)


def test_missing_segment_is_corruption():
    fs, wal = fresh(segment_bytes=256)
    wal.save(entries(1, 30))
    assert len(wal.segments) >= 3
    fs.remove(f"{D}/{wal.segments[1]}")
    with pytest.raises(CorruptionError, match=r"segment 1 is missing"):
        reopen(fs)


def test_preallocated_segments_replay():
    fs, wal = fresh(segment_bytes=512, preallocate=True)
    wal.save(entries(1, 40), HardState(1, 0, 20))
    assert fs.size(f"{D}/{wal.segments[-1]}") >= 512
    fs.crash()
    wal, replay = reopen(fs, segment_bytes=512, preallocate=True)
    assert replay.entries == entries(1, 40)
    wal.save(entries(41, 41))
    fs.crash()
    _, replay = reopen(fs, segment_bytes=512, preallocate=True)
    assert replay.entries == entries(1, 41)


def test_a_failure_while_cutting_a_segment_stops_the_log():
    fs, wal = fresh(segment_bytes=256)
    wal.save(entries(1, 3), HardState(1, 0, 1))
    real_rename = fs.rename

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")

    fs.rename = broken_rename
    with pytest.raises(WALError, match="creating the next segment failed"):
        wal.save(entries(4, 20), HardState(1, 0, 3))
    with pytest.raises(WALError, match="unusable"):
        wal.save(entries(4, 4))
    fs.rename = real_rename
    fs.crash()
    wal, replay = reopen(fs, segment_bytes=256)
    assert replay.entries[:3] == entries(1, 3)
    wal.save(entries(len(replay.entries) + 1, 30))
    fs.crash()
    _, replay = reopen(fs, segment_bytes=256)
    assert replay.entries == entries(1, 30)
