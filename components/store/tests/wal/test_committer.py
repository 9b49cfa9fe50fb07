"""Group commit: concurrent callers share fsyncs, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import threading

import pytest

from keel_store.raft.types import HardState
from keel_store.wal import GroupCommitter, MemoryFileSystem, WALError, WriteAheadLog

from .conftest import entries


class GatedDisk(MemoryFileSystem):
    """A disk whose file syncs wait for the test to open the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.syncing = threading.Event()

    def before_sync(self) -> None:
        self.syncing.set()
        self.gate.wait(10)
        super().before_sync()


def test_callers_arriving_during_an_fsync_share_the_next_one():
    fs = GatedDisk()
    wal, _ = WriteAheadLog.open(fs, "/wal")
    committer = GroupCommitter(wal)
    fs.gate.clear()
    fs.syncing.clear()
    first = committer.submit(entries(1, 1))
    assert fs.syncing.wait(10)  # the committer is inside the first fsync
    rest = [committer.submit(entries(i, i)) for i in range(2, 12)]
    assert not any(f.done() for f in [first, *rest])
    fs.gate.set()
    for future in [first, *rest]:
        future.result(10)
    assert committer.batches == 2
    assert committer.jobs == 11
    committer.close()
    fs.crash()
    _, replay = WriteAheadLog.open(fs, "/wal")
    assert replay.entries == entries(1, 11)


def test_every_acknowledged_job_survives_a_crash_with_many_threads():
    fs = MemoryFileSystem()
    wal, _ = WriteAheadLog.open(fs, "/wal", segment_bytes=4096)
    committer = GroupCommitter(wal)
    order = threading.Lock()
    next_index = [1]
    acknowledged: list[int] = []

    def client() -> None:
        for _ in range(50):
            with order:  # indices are handed out in submission order
                index = next_index[0]
                next_index[0] += 1
                future = committer.submit(entries(index, index), HardState(1, 0, index - 1))
            future.result(10)
            acknowledged.append(index)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(acknowledged) == list(range(1, 401))
    assert committer.batches <= committer.jobs == 400
    fs.crash(tear=True)
    _, replay = WriteAheadLog.open(fs, "/wal", segment_bytes=4096)
    assert replay.entries == entries(1, 400)
    assert replay.hard_state == HardState(1, 0, 399)
    committer.close()


def test_asyncio_callers():
    fs = MemoryFileSystem()
    wal, _ = WriteAheadLog.open(fs, "/wal")
    committer = GroupCommitter(wal)

    async def main() -> None:
        await committer.commit(entries(1, 3))
        await asyncio.gather(*(committer.commit(hard_state=HardState(t, 0, 0))
                               for t in range(1, 6)))  # fmt: skip

    asyncio.run(main())
    committer.close()
    fs.crash()
    _, replay = WriteAheadLog.open(fs, "/wal")
    assert replay.entries == entries(1, 3)
    assert replay.hard_state == HardState(5, 0, 0)


def test_a_bad_job_fails_alone():
    fs = MemoryFileSystem()
    wal, _ = WriteAheadLog.open(fs, "/wal")
    committer = GroupCommitter(wal)
    good = committer.submit(entries(1, 2))
    bad = committer.submit(entries(9, 9))
    later = committer.submit(entries(3, 3))
    good.result(10)
    later.result(10)
    with pytest.raises(ValueError, match="gap"):
        bad.result(10)
    committer.close()


def test_a_malformed_job_fails_alone_and_the_committer_lives_on():
    fs = MemoryFileSystem()
    wal, _ = WriteAheadLog.open(fs, "/wal")
    committer = GroupCommitter(wal)
    with pytest.raises(AttributeError):
        committer.submit([object()]).result(10)  # type: ignore[list-item]
    committer.submit(entries(1, 1)).result(10)
    committer.close()


def test_a_failed_fsync_fails_its_callers_and_all_after():
    fs = MemoryFileSystem()
    wal, _ = WriteAheadLog.open(fs, "/wal")
    committer = GroupCommitter(wal)
    committer.submit(entries(1, 1)).result(10)
    fs.fail_syncs = 1
    with pytest.raises(WALError, match="sync failed"):
        committer.submit(entries(2, 2)).result(10)
    with pytest.raises(WALError, match="unusable"):
        committer.submit(entries(2, 2)).result(10)
    committer.close()
    with pytest.raises(WALError, match="closed"):
        committer.submit(entries(2, 2))
