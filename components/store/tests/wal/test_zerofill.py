"""Zeros written ahead of a WAL segment's writer (keel_store.wal.zerofill), on real files.

The point of it is on the disk: the blocks ahead of the writer must be *written*
extents, not the unwritten ones ``posix_fallocate`` leaves, which ``filefrag -v``
(e2fsprogs) shows. The danger of it is a zero landing on data: a writer racing the
thread with tiny chunks checks every byte.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import time

import pytest

from keel_store.raft.types import HardState
from keel_store.wal import zerofill
from keel_store.wal.fs import OSFileSystem
from keel_store.wal.log import WriteAheadLog

from .conftest import entries

BLOCK = 4096


def unwritten_blocks(path: str) -> set[int]:
    """The file's blocks that are allocated but unwritten, per ``filefrag -v``."""
    if shutil.which("filefrag") is None:
        pytest.skip("filefrag (e2fsprogs) is not installed")
    out = subprocess.run(
        ["filefrag", "-b4096", "-v", path], check=True, capture_output=True, text=True
    ).stdout
    blocks: set[int] = set()
    for line in out.splitlines():
        m = re.match(r"\s*\d+:\s*(\d+)\.\.\s*(\d+):.*:\s*(\S*)\s*$", line)
        if m and "unwritten" in m.group(3):
            blocks.update(range(int(m.group(1)), int(m.group(2)) + 1))
    return blocks


def zeroed_ahead(end: int) -> set[int]:
    """The blocks the thread must have written once the writer stopped at ``end``:
    from the chunk after its claim to AHEAD past it."""
    lo = zerofill._round_up(end + zerofill.CHUNK)
    return set(range(lo // BLOCK, (end + zerofill.AHEAD) // BLOCK))


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def unwritten_extents(tmp_path) -> None:
    """Skips unless a fallocated file here gets unwritten extents (ext4, xfs: yes)."""
    path = str(tmp_path / "probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
    finally:
        os.close(fd)
    found = unwritten_blocks(path)
    os.unlink(path)
    if not found:
        pytest.skip("this file system leaves no unwritten extents")


@pytest.mark.usefixtures("unwritten_extents")
def test_segment_blocks_ahead_of_the_writer_are_written_zeros(tmp_path):
    segment = 64 << 20
    wal, _ = WriteAheadLog.open(
        OSFileSystem(), str(tmp_path / "wal"), segment_bytes=segment, preallocate=True
    )
    wal.save(entries(1, 100), HardState(1, 0, 100))
    wal.sync()
    path, end = wal.tail
    ahead = zeroed_ahead(end)
    assert unwritten_blocks(path) & ahead  # fallocated, at first
    wait_for(lambda: not unwritten_blocks(path) & ahead)
    # Past AHEAD (and a chunk's rounding): still only reserved. The thread follows the
    # writer; it does not write the whole segment.
    beyond = end + 3 * zerofill.CHUNK + zerofill.AHEAD
    assert set(range(beyond // BLOCK, segment // BLOCK)) <= unwritten_blocks(path)
    # Everything after the records still reads as zero fill, so a replay ends there.
    with open(path, "rb") as f:
        f.seek(end)
        assert f.read(beyond - end) == bytes(beyond - end)
    wal.close()
    _, replay = WriteAheadLog.open(OSFileSystem(), str(tmp_path / "wal"), segment_bytes=segment)
    assert replay.entries == entries(1, 100)


@pytest.mark.usefixtures("unwritten_extents")
def test_the_thread_follows_the_writer_through_the_segment(tmp_path):
    fs = OSFileSystem()
    path = str(tmp_path / "f")
    size = 24 << 20
    file = fs.open(path, create=True)
    file.allocate(size, free_from=0)
    data = os.urandom(64 << 10)
    offset = 0
    while offset < 12 << 20:  # the writer goes 12 MiB in: the thread keeps ahead
        file.write_sync(offset, data)
        offset += len(data)
    wait_for(lambda: not unwritten_blocks(path) & zeroed_ahead(offset))
    file.close()
    with open(path, "rb") as f:
        content = f.read()
    assert content[:offset] == data * (offset // len(data))
    assert content[offset:] == bytes(size - offset)


@pytest.mark.parametrize("seed", range(10))
def test_zeros_never_land_on_what_the_writer_wrote(tmp_path, monkeypatch, seed):
    """Chunks of 4 kB, 16 kB ahead: the thread and the writer meet all the time."""
    monkeypatch.setattr(zerofill, "CHUNK", BLOCK)
    monkeypatch.setattr(zerofill, "AHEAD", 4 * BLOCK)
    rnd = random.Random(seed)
    fs = OSFileSystem()
    path = str(tmp_path / "f")
    size = 1 << 20
    file = fs.open(path, create=True)
    head = os.urandom(rnd.randrange(1, 3 * BLOCK))
    file.write(0, head)  # what was there before: below free_from
    file.allocate(size, free_from=len(head))
    expected = bytearray(head)
    offset = len(head)
    while offset < size - 2 * BLOCK:
        data = os.urandom(rnd.randrange(1, 2 * BLOCK))
        if rnd.random() < 0.5:
            file.write_sync(offset, data)
        else:
            file.write(offset, data)
        expected += data
        offset += len(data)
        if rnd.random() < 0.05:
            time.sleep(0.001)  # let the thread run ahead
    file.sync()
    file.close()
    with open(path, "rb") as f:
        content = f.read()
    assert content[:offset] == bytes(expected)
    assert content[offset:] == bytes(size - offset)


def test_a_cut_stops_the_zeros(tmp_path):
    fs = OSFileSystem()
    path = str(tmp_path / "f")
    file = fs.open(path, create=True)
    file.allocate(16 << 20, free_from=0)
    file.write_sync(0, b"records")
    file.truncate(7)  # waits for a chunk in progress; nothing is written afterwards
    file.sync()
    time.sleep(0.2)
    assert os.path.getsize(path) == 7
    file.close()


def test_the_thread_has_its_own_descriptor_and_closes_it(tmp_path):
    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    before = fds()
    fs = OSFileSystem()
    file = fs.open(str(tmp_path / "f"), create=True)
    file.allocate(64 << 20, free_from=0)  # the thread waits at AHEAD for the writer
    zero = file._zero
    assert zero is not None
    assert zero._fd != file._fd
    assert os.fstat(zero._fd).st_ino == os.fstat(file._fd).st_ino
    file.close()
    wait_for(lambda: fds() == before)


@pytest.mark.parametrize("failure", ["thread", "descriptor"])
def test_zeroing_that_cannot_run_leaves_the_file_to_its_writer(
    tmp_path, monkeypatch, caplog, failure
):
    """A thread whose writes fail, or a second descriptor that cannot be opened (no
    /proc): a warning, and the file is written as without the zeroing."""
    if failure == "thread":

        def broken(*_args):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(zerofill, "_zero_range", broken)
        warning = "zeroing a WAL segment ahead stopped"
    else:
        real_open = os.open

        def no_proc(path, *args, **kwargs):
            if str(path).startswith("/proc/self/fd/"):
                raise FileNotFoundError(2, "No such file or directory", path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", no_proc)
        warning = "not zeroing a WAL segment ahead"
    fs = OSFileSystem()
    path = str(tmp_path / "f")
    file = fs.open(path, create=True)
    with caplog.at_level(logging.WARNING, logger="keel_store.wal"):
        file.allocate(4 << 20, free_from=0)
        wait_for(lambda: warning in caplog.text)
    file.write_sync(0, b"still written")
    file.write_sync(3 << 20, b"and here")
    file.close()
    assert os.path.getsize(path) == 4 << 20
    with open(path, "rb") as f:
        content = f.read()
    assert content[:13] == b"still written"
    assert content[3 << 20 : (3 << 20) + 8] == b"and here"
