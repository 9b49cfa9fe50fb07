"""The in-memory disk keeps exactly what was made durable."""

from __future__ import annotations

import pytest

from keel_store.wal import MemoryFileSystem


def test_unsynced_writes_are_lost_and_synced_ones_kept():
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    f = fs.open("/d/a", create=True)
    f.write(0, b"kept")
    f.sync()
    fs.fsync_dir("/d")
    f.write(4, b"lost")
    assert fs.read("/d/a") == b"keptlost"
    fs.crash()
    assert fs.read("/d/a") == b"kept"


def test_a_new_name_needs_a_directory_sync():
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    f = fs.open("/d/a", create=True)
    f.write(0, b"data")
    f.sync()
    fs.crash()
    assert fs.list("/d") == []


def test_rename_is_durable_only_after_directory_sync():
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    f = fs.open("/d/tmp", create=True)
    f.write(0, b"x")
    f.sync()
    fs.fsync_dir("/d")
    fs.rename("/d/tmp", "/d/final")
    fs.crash()
    assert fs.list("/d") == ["tmp"]
    fs.rename("/d/tmp", "/d/final")
    fs.fsync_dir("/d")
    fs.crash()
    assert fs.list("/d") == ["final"]
    assert fs.read("/d/final") == b"x"


def test_tearing_keeps_a_prefix_of_the_unsynced_writes():
    seen = set()
    for seed in range(40):
        fs = MemoryFileSystem(seed)
        fs.makedirs("/d")
        f = fs.open("/d/a", create=True)
        f.sync()
        fs.fsync_dir("/d")
        f.write(0, b"abcd")
        f.write(4, b"efgh")
        fs.crash(tear=True)
        content = fs.read("/d/a")
        assert b"abcdefgh".startswith(content)
        seen.add(len(content))
    assert len(seen) > 4  # torn at many points, not only all-or-nothing


def test_handles_die_with_the_crash():
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    f = fs.open("/d/a", create=True)
    fs.crash()
    with pytest.raises(ValueError, match="after the crash"):
        f.write(0, b"x")


def test_injected_sync_failure():
    fs = MemoryFileSystem()
    fs.makedirs("/d")
    f = fs.open("/d/a", create=True)
    fs.fail_syncs = 1
    with pytest.raises(OSError, match="injected"):
        f.sync()
    f.sync()
    assert fs.syncs == 1
