"""The WAL and snapshot files on this machine's real disk (tmp dirs, real fsync)."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from keel_store.raft.types import HardState, Snapshot, SnapshotMeta
from keel_store.wal import CorruptionError, OSFileSystem, SnapshotStore, WriteAheadLog
from keel_store.wal import records as rec

from .conftest import entries


@pytest.fixture
def wal_dir(tmp_path):
    return str(tmp_path / "wal")


def only_segment(wal_dir):
    (name,) = os.listdir(wal_dir)
    return os.path.join(wal_dir, name)


def test_reopen_replays_what_was_synced(wal_dir):
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir)
    wal.save(entries(1, 100), HardState(3, 1, 90))
    wal.close()
    _, replay = WriteAheadLog.open(OSFileSystem(), wal_dir)
    assert replay.entries == entries(1, 100)
    assert replay.hard_state == HardState(3, 1, 90)


def test_torn_tail_is_cut_and_the_log_goes_on(wal_dir):
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir)
    wal.save(entries(1, 10), HardState(1, 1, 5))
    wal.close()
    path = only_segment(wal_dir)
    good_size = os.path.getsize(path)
    partial = rec.encode_entry(entries(11, 11)[0])[:13]
    with open(path, "ab") as f:
        f.write(partial)
    wal, replay = WriteAheadLog.open(OSFileSystem(), wal_dir)
    assert replay.torn_bytes == len(partial.rstrip(b"\x00"))
    assert replay.entries == entries(1, 10)
    assert os.path.getsize(path) == good_size
    wal.save(entries(11, 12))
    wal.close()
    _, replay = WriteAheadLog.open(OSFileSystem(), wal_dir)
    assert replay.entries == entries(1, 12)


def test_a_flipped_byte_in_the_middle_is_refused_and_nothing_changes(wal_dir):
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir)
    wal.save(entries(1, 50), HardState(1, 1, 50))
    wal.close()
    path = only_segment(wal_dir)
    with open(path, "rb") as f:
        content = bytearray(f.read())
    records = rec.scan(bytes(content)).records
    victim = records[len(records) // 2]
    content[victim.offset + 12] ^= 0x01
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog.open(OSFileSystem(), wal_dir)
    assert caught.value.path == path
    assert caught.value.offset == victim.offset
    assert f"{path}: offset {victim.offset}: checksum mismatch" in str(caught.value)
    assert "a valid record follows" in str(caught.value)
    with open(path, "rb") as f:
        assert f.read() == bytes(content)


def test_a_damaged_tail_of_an_older_segment_is_refused(wal_dir):
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir, segment_bytes=512)
    wal.save(entries(1, 40))
    wal.close()
    first = os.path.join(wal_dir, sorted(os.listdir(wal_dir))[0])
    size = os.path.getsize(first)
    with open(first, "r+b") as f:
        f.truncate(size - 5)
    with pytest.raises(CorruptionError, match=rf"{first}: offset \d+: "):
        WriteAheadLog.open(OSFileSystem(), wal_dir, segment_bytes=512)


def test_preallocated_segment_on_disk(wal_dir):
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir, segment_bytes=1 << 16, preallocate=True)
    wal.save(entries(1, 20), HardState(1, 0, 20))
    wal.close()
    assert os.path.getsize(only_segment(wal_dir)) == 1 << 16
    wal, replay = WriteAheadLog.open(
        OSFileSystem(), wal_dir, segment_bytes=1 << 16, preallocate=True
    )
    assert replay.entries == entries(1, 20)
    wal.save(entries(21, 21))
    wal.close()
    _, replay = WriteAheadLog.open(OSFileSystem(), wal_dir, segment_bytes=1 << 16)
    assert replay.entries == entries(1, 21)


def test_newest_valid_snapshot_file_is_loaded(tmp_path):
    store = SnapshotStore(OSFileSystem(), str(tmp_path / "snap"))
    older = Snapshot(SnapshotMeta(10, 2), b"older state")
    newer = Snapshot(SnapshotMeta(20, 3), b"newer state" * 100)
    store.save(older)
    newest_path = store.save(newer)
    assert store.load() == newer
    with open(newest_path, "r+b") as f:
        f.seek(-50, os.SEEK_END)
        f.write(b"X")
    assert store.load() == older
    assert os.path.exists(newest_path + ".broken")
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path / "snap"))


def test_verify_command_reports_without_changing_anything(tmp_path, capsys):
    from keel_store.wal.__main__ import main
    from keel_store.wal.storage import NodeStorage

    data = str(tmp_path / "node")
    storage, _ = NodeStorage.open(OSFileSystem(), data)
    storage.save(entries(1, 20), HardState(2, 1, 15))
    storage.save_snapshot(Snapshot(SnapshotMeta(15, 1), b"state"))
    storage.close()
    (segment,) = os.listdir(os.path.join(data, "wal"))
    path = os.path.join(data, "wal", segment)
    with open(path, "ab") as f:
        f.write(rec.encode_entry(entries(21, 21)[0])[:11])
    with open(path, "rb") as f:
        before = f.read()
    assert main([data]) == 0
    out = capsys.readouterr().out
    assert "index 15, term 1" in out
    assert "5 entries after it, last index 20; term 2, vote 1, commit 15" in out
    assert "torn" in out
    content = bytearray(before)
    content[len(content) // 2] ^= 0x08
    with open(path, "wb") as f:
        f.write(content)
    assert main([data]) == 1
    assert f"DAMAGED  {path}: offset " in capsys.readouterr().out
    with open(path, "rb") as f:
        assert f.read() == bytes(content)
    assert main([str(tmp_path / "nothing")]) == 2


def test_write_sync_lands_where_asked_and_falls_back_without_the_flag(tmp_path, monkeypatch):
    fs = OSFileSystem()
    path = str(tmp_path / "f")
    file = fs.open(path, create=True)
    file.allocate(4096)
    file.write_sync(0, b"head")
    file.write_sync(100, b"x" * 300)
    assert fs.read(path)[:4] == b"head"
    assert fs.read(path)[100:400] == b"x" * 300

    def no_flags(*_args):  # a file system that refuses per-write flags
        raise OSError(95, "Operation not supported")

    synced = []
    monkeypatch.setattr(os, "pwritev", no_flags)
    monkeypatch.setattr(os, "fdatasync", synced.append)
    file.write_sync(500, b"fallback")
    assert fs.read(path)[500:508] == b"fallback"
    assert synced, "the fallback must fdatasync"
    file.close()


def test_each_sync_of_a_ready_loop_is_one_durable_write(wal_dir, monkeypatch):
    calls = []
    real = os.pwritev

    def counting(fd, buffers, offset, flags=0):
        calls.append(flags)
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "pwritev", counting)
    wal, _ = WriteAheadLog.open(OSFileSystem(), wal_dir)
    for i in range(1, 21):
        wal.append(entries(i, i), HardState(1, 1, i - 1))
        wal.sync()
    wal.close()
    assert calls.count(os.RWF_DSYNC) == 20
    _, replay = WriteAheadLog.open(OSFileSystem(), wal_dir)
    assert replay.entries == entries(1, 20)


def test_discard_removes_in_a_background_thread(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"x" * 4096)
    started, release = threading.Event(), threading.Event()
    real_remove = os.remove

    def slow_remove(path):
        started.set()
        assert release.wait(10)
        real_remove(path)

    monkeypatch.setattr(os, "remove", slow_remove)
    fs = OSFileSystem()
    fs.discard(str(tmp_path), ["a", "b", "gone-already"])  # returns while removing
    assert started.wait(10)
    assert threading.current_thread().name != "keel-store-discard"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]
    release.set()
    fs.settle()
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_a_failed_discard_is_logged_and_later_ones_still_run(tmp_path, caplog):
    (tmp_path / "old").write_bytes(b"x")
    fs = OSFileSystem()
    with caplog.at_level(logging.WARNING, logger="keel_store.wal.fs"):
        fs.discard(str(tmp_path / "no-such-dir"), ["old"])
        fs.discard(str(tmp_path), ["old"])
        fs.settle()
    assert [r.getMessage() for r in caplog.records] == ["could not remove old files"]
    assert caplog.records[0].directory == str(tmp_path / "no-such-dir")
    assert not (tmp_path / "old").exists()


def test_a_wal_in_its_own_directory_is_opened_and_checked_there(tmp_path, capsys):
    """``wal_dir`` (``--wal-dir``): the WAL lives there, the snapshots under the data
    directory; reopening and the offline check (``--wal-dir``) find both."""
    from keel_store.wal.__main__ import main
    from keel_store.wal.storage import NodeStorage

    data, wal = str(tmp_path / "node"), str(tmp_path / "other-disk" / "wal")
    storage, _ = NodeStorage.open(OSFileSystem(), data, wal_dir=wal)
    storage.save(entries(1, 20), HardState(2, 1, 15))
    storage.save_snapshot(Snapshot(SnapshotMeta(15, 1), b"state"))
    storage.close()
    assert os.listdir(wal)
    assert sorted(os.listdir(data)) == ["snap"]
    _, restart = NodeStorage.open(OSFileSystem(), data, wal_dir=wal)
    assert restart.snapshot is not None
    assert [e.index for e in restart.entries] == list(range(16, 21))
    assert main([data, f"--wal-dir={wal}"]) == 0
    assert "5 entries after it, last index 20" in capsys.readouterr().out
    assert main([data]) == 2  # no wal/ under the data directory
