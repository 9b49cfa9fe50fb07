"""Snapshot files on the in-memory disk: atomic under crashes, damage detected."""

from __future__ import annotations

import posixpath

import pytest

from keel_store.raft.types import ConfState, Snapshot, SnapshotMeta
from keel_store.wal import MemoryFileSystem, SnapshotError, SnapshotStore
from keel_store.wal.snapshots import decode, encode

SNAP = Snapshot(SnapshotMeta(7, 2, ConfState((1, 2, 3), (9,))), b"\x00state\xff" * 50)


def test_round_trip():
    assert decode(encode(SNAP)) == SNAP


@pytest.mark.parametrize("position", [0, 9, 20, 60, 100, -1])
def test_any_flipped_byte_is_caught(position):
    content = bytearray(encode(SNAP))
    content[position] ^= 0x10
    with pytest.raises(SnapshotError, match=r"^f: offset \d+: "):
        decode(bytes(content), "f")


def test_a_cut_file_is_caught():
    with pytest.raises(SnapshotError, match="data should be"):
        decode(encode(SNAP)[:-3], "f")


def test_a_power_cut_before_the_rename_is_durable_leaves_the_previous_snapshot():
    for seed in range(20):
        fs = MemoryFileSystem(seed)
        store = SnapshotStore(fs, "/snap")
        store.save(Snapshot(SnapshotMeta(3, 1), b"old"))

        def power_cut(directory):
            raise RuntimeError("power cut")

        fs.fsync_dir = power_cut  # the last step of save never happens
        with pytest.raises(RuntimeError):
            store.save(SNAP)
        fs.crash(tear=True)
        del fs.fsync_dir
        loaded = store.load()
        assert loaded is not None
        assert loaded.meta.index == 3
        assert store.names() == [f"{3:016x}-{1:016x}.snap"]


def test_a_saved_snapshot_survives_a_crash():
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    store.save(SNAP)
    fs.crash(tear=True)
    assert store.load() == SNAP


def test_purge_keeps_the_newest():
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    for index in range(1, 6):
        store.save(Snapshot(SnapshotMeta(index, 1), b"s"))
    removed = store.purge(keep=2)
    assert len(removed) == 3
    assert [n[:16] for n in store.names()] == [f"{4:016x}", f"{5:016x}"]


@pytest.mark.parametrize(
    "chunks",
    [[], [b""], [SNAP.data], [SNAP.data[:1], b"", SNAP.data[1:100], SNAP.data[100:]]],
)
def test_a_file_written_in_chunks_is_the_file_of_the_joined_data(chunks):
    """A snapshot child writes the data as it is serialized, its length and checksum
    (which come first) last: the same file, the same checks."""
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    store.write_tmp_chunks(SNAP.meta, iter(chunks))
    path = store.commit_tmp(SNAP.meta)
    snap = Snapshot(SNAP.meta, b"".join(chunks))
    assert fs.read(path) == encode(snap)
    fs.crash(tear=True)
    assert store.load() == snap


def test_a_crash_while_writing_chunks_leaves_the_previous_snapshot():
    """Cut short before the header (written last) or the sync: the ``.tmp`` file is
    never taken for a snapshot."""
    for seed in range(10):
        fs = MemoryFileSystem(seed)
        store = SnapshotStore(fs, "/snap")
        store.save(Snapshot(SnapshotMeta(3, 1), b"old"))

        def chunks():
            yield SNAP.data[:100]
            raise RuntimeError("the child is killed")

        with pytest.raises(RuntimeError):
            store.write_tmp_chunks(SNAP.meta, chunks())
        fs.crash(tear=True)
        loaded = store.load()
        assert loaded is not None
        assert loaded.meta.index == 3


@pytest.mark.parametrize("position", [0, 9, 20, 60, 100, -1])
def test_a_stored_file_is_checked_as_decode_checks_it(position):
    """The store reads the data apart from the head of the file (no copy cut out of
    the whole): the same damage is caught, with the same message."""
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    path = store.save(SNAP)
    assert store.read(SNAP.meta) == SNAP
    content = bytearray(fs.read(path))
    content[position] ^= 0x10
    file = fs.open(path, create=False)
    file.write(0, bytes(content))
    file.sync()
    with pytest.raises(SnapshotError) as expected:
        decode(bytes(content), path)
    with pytest.raises(SnapshotError) as got:
        store.read(SNAP.meta)
    assert str(got.value) == str(expected.value)
    assert store.load() is None  # set aside as .broken
    assert fs.list("/snap") == [posixpath.basename(path) + ".broken"]


def test_a_cut_stored_file_is_caught():
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    path = store.save(SNAP)
    fs.open(path, create=False).truncate(fs.size(path) - 3)
    with pytest.raises(SnapshotError, match="data should be"):
        store.read(SNAP.meta)


def test_metadata_longer_than_the_first_read_is_read_whole():
    """A conf state of 10,000 voters (80 kB of IDs) does not fit the first 64 KiB read."""
    big = Snapshot(SnapshotMeta(5, 1, ConfState(tuple(range(1, 10_001)), ())), b"data" * 9)
    fs = MemoryFileSystem()
    store = SnapshotStore(fs, "/snap")
    store.save(big)
    assert store.read(big.meta) == big
    assert store.load() == big


def test_the_data_is_read_into_its_own_buffer_not_cut_from_the_whole_file():
    """Two reads: the head (up to 64 KiB) and then the data alone, whose bytes become
    the snapshot's, where a read of the whole file and a slice of it cost a second copy
    of the snapshot (0.43-0.46 s -> 0.25 s and 661 -> 341 MB peak for 336 MB)."""
    reads: list[tuple[int, int]] = []

    class Recording(MemoryFileSystem):
        def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
            data = super().read(path, offset, size)
            reads.append((offset, len(data)))
            return data

    fs = Recording()
    store = SnapshotStore(fs, "/snap")
    data = bytes(range(256)) * 1000
    path = store.save(Snapshot(SNAP.meta, data))
    size = fs.size(path)
    got = store.read(SNAP.meta)
    assert got.data == data
    assert reads == [(0, min(size, 64 << 10)), (size - len(data), len(data))]
