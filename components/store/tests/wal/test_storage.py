"""A node's data directory under power cuts at every sync of a scripted life."""

from __future__ import annotations

import pytest

from keel_store.raft.types import Entry, HardState, Snapshot, SnapshotMeta
from keel_store.wal import MemoryFileSystem
from keel_store.wal.storage import NodeStorage, Restart

from .conftest import entries

DATA = "/var/lib/keel-store"
SEGMENT = 300


class PowerCut(Exception):
    pass


class CuttingDisk(MemoryFileSystem):
    """Loses power at the ``cut_at``-th sync (file or directory), before it happens."""

    def __init__(self, seed: int, cut_at: int | None, *, defer_discards: bool = False) -> None:
        super().__init__(seed, defer_discards=defer_discards)
        self.cut_at = cut_at
        self.calls = 0

    def before_sync(self) -> None:
        if self.calls == self.cut_at:
            raise PowerCut
        self.calls += 1
        super().before_sync()


View = tuple[HardState, int, tuple[Entry, ...]]


def view(restart: Restart) -> View:
    index = restart.snapshot.meta.index if restart.snapshot else 0
    if restart.snapshot is not None:
        assert restart.snapshot.data == f"state up to {index}".encode()
    return restart.hard_state, index, tuple(restart.entries)


def snapshot(index: int, term: int = 1) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term), f"state up to {index}".encode())


def life(storage: NodeStorage, states: list[list[View]]) -> None:
    """A node's writes; before each step, ``states`` gets the views a cut may leave."""
    log: list[Entry] = []
    hard_state, snap = HardState(), 0

    def now() -> View:
        return hard_state, snap, tuple(e for e in log if e.index > snap)

    def save(batch: list[Entry], new: HardState) -> None:
        nonlocal hard_state
        possible = [now()]
        for entry in batch:
            del log[entry.index - 1 :]
            log.append(entry)
            possible.append(now())
        hard_state = new
        possible.append(now())
        states.append(possible)
        storage.save(batch, new)

    def take_snapshot(index: int) -> None:
        nonlocal snap
        before = now()
        snap = index
        states.append([before, now()])
        storage.save_snapshot(snapshot(index, log[index - 1].term))

    save(entries(1, 6), HardState(1, 1, 4))
    take_snapshot(4)
    save(entries(7, 12), HardState(1, 1, 10))
    save(entries(11, 14, term=2), HardState(2, 2, 10))  # a new leader overwrites 11, 12
    take_snapshot(10)
    save(entries(15, 20, term=2), HardState(2, 2, 18))
    take_snapshot(18)
    save(entries(21, 22, term=2), HardState(2, 2, 21))


def run(
    seed: int, cut_at: int | None, defer: bool = False
) -> tuple[CuttingDisk, list[list[View]], bool]:
    fs = CuttingDisk(seed, cut_at, defer_discards=defer)
    states: list[list[View]] = []
    try:
        storage, _ = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT)
        life(storage, states)
    except PowerCut:
        return fs, states, True
    return fs, states, False


@pytest.mark.parametrize("defer", [False, True], ids=["discards-at-once", "discards-pending"])
def test_every_power_cut_leaves_a_state_from_just_before_or_after(defer):
    # defer: old snapshots and segments are still being removed (a slow background
    # thread) when the power goes, so they are all there at the restart.
    _, _, cut = run(0, None, defer)
    assert not cut
    total = run(0, None, defer)[0].calls
    assert total > 20
    for cut_at in range(total):
        for seed in range(3):
            fs, states, cut = run(seed, cut_at, defer)
            assert cut
            fs.cut_at = None
            fs.crash(tear=True)
            _, restart = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT)
            empty: View = (HardState(), 0, ())
            # What the step before the cut left, or any state the interrupted step allows.
            allowed = [states[-2][-1] if len(states) > 1 else empty, *(states or [[]])[-1]]
            assert view(restart) in allowed, (cut_at, seed, view(restart), allowed)


def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one():
    fs = MemoryFileSystem()
    storage, _ = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT)
    storage.save(entries(1, 30), HardState(1, 1, 25))
    storage.save_snapshot(snapshot(10))
    storage.save_snapshot(snapshot(25))
    storage.close()
    newest = f"{DATA}/snap/{storage.snapshots.names()[-1]}"
    content = bytearray(fs.read(newest))
    content[-3] ^= 0xFF
    f = fs.open(newest, create=False)
    f.write(0, bytes(content))
    f.sync()
    _, restart = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT)
    assert restart.snapshot == snapshot(10)
    assert restart.entries == entries(11, 30)
    assert fs.list(f"{DATA}/snap")[-1].endswith(".broken")


def test_keep_snapshots_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        NodeStorage.open(MemoryFileSystem(), DATA, keep_snapshots=0)


def test_append_then_sync_like_a_ready_loop():
    fs = MemoryFileSystem()
    storage, _ = NodeStorage.open(fs, DATA)
    boot = Snapshot(SnapshotMeta(0, 0), b"boot")
    storage.save_snapshot(boot)
    storage.append(entries(1, 3), HardState(1, 1, 0))
    storage.append(entries(4, 4), HardState(1, 1, 2))
    fs.crash()
    assert NodeStorage.open(fs, DATA)[1].entries == []
    storage, _ = NodeStorage.open(fs, DATA)
    storage.append(entries(1, 4), HardState(1, 1, 2))
    storage.sync()
    fs.crash()
    _, restart = NodeStorage.open(fs, DATA)
    assert restart.snapshot == boot
    assert restart.entries == entries(1, 4)
    assert restart.hard_state == HardState(1, 1, 2)


def test_an_older_snapshot_is_refused_before_anything_is_written():
    fs = MemoryFileSystem()
    storage, _ = NodeStorage.open(fs, DATA)
    storage.save(entries(1, 10), HardState(1, 1, 10))
    storage.save_snapshot(snapshot(8))
    with pytest.raises(ValueError, match="snapshot 5 is older than 8"):
        storage.save_snapshot(snapshot(5))
    assert storage.snapshots.names() == [f"{8:016x}-{1:016x}.snap"]


def test_snapshots_recorded_while_older_files_are_still_being_removed():
    fs = MemoryFileSystem(defer_discards=True)
    storage, _ = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT, keep_snapshots=2)
    storage.save(entries(1, 30), HardState(1, 1, 30))
    last = 30
    for index in (4, 10, 18, 25):
        storage.save_snapshot(snapshot(index))
        storage.save(entries(last + 1, last + 5), HardState(1, 1, last + 5))
        last += 5
    # Nothing removed yet: all four snapshots and every segment still listed.
    assert [int(n[:16], 16) for n in storage.snapshots.names()] == [4, 10, 18, 25]
    segments_before = fs.list(DATA + "/wal")
    # The WAL still dropped what the two newest snapshots cover, in memory.
    wal_segments = [s.name for s in storage.wal._segments]
    assert len(wal_segments) < len(segments_before)
    storage.close()  # waits for the removals
    assert [int(n[:16], 16) for n in storage.snapshots.names()] == [18, 25]
    assert fs.list(DATA + "/wal") == wal_segments
    _, restart = NodeStorage.open(fs, DATA, segment_bytes=SEGMENT)
    assert restart.snapshot == snapshot(25)
    assert restart.hard_state == HardState(1, 1, 50)
    assert [e.index for e in restart.entries] == list(range(26, 51))
