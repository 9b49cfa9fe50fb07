"""Property: whatever the crash, every record acknowledged by ``sync`` survives, and what
replays is exactly the state after some prefix of the records appended since."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel_store.raft.types import Entry, HardState, Snapshot, SnapshotMeta
from keel_store.wal import MemoryFileSystem, SnapshotStore, WriteAheadLog

WAL_DIR, SNAP_DIR = "/n/wal", "/n/snap"

State = tuple[tuple[Entry, ...], HardState]


@dataclass
class Model:
    log: list[Entry] = field(default_factory=list)
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    term: int = 1

    def state(self) -> State:
        return tuple(self.log), self.hard_state

    def after_snapshot(self, state: State) -> State:
        log, hard_state = state
        return tuple(e for e in log if e.index > self.snapshot.index), hard_state


def open_wal(fs, store, segment_bytes, preallocate):
    loaded = store.load()
    return WriteAheadLog.open(
        fs, WAL_DIR, snapshot=loaded.meta if loaded else None,
        segment_bytes=segment_bytes, preallocate=preallocate,
    )  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_acknowledged_records_survive_any_crash(data):
    seed = data.draw(st.integers(0, 2**32), label="seed")
    segment_bytes = data.draw(st.sampled_from([200, 400, 1 << 16]), label="segment_bytes")
    preallocate = data.draw(st.booleans(), label="preallocate")
    fs = MemoryFileSystem(seed)
    store = SnapshotStore(fs, SNAP_DIR)
    wal, _ = open_wal(fs, store, segment_bytes, preallocate)
    model = Model()
    candidates: list[State] = [model.state()]
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        action = data.draw(
            st.sampled_from(["append", "append", "sync", "snapshot", "install", "crash"])
        )
        if action == "append":
            last = len(model.log)
            low = max(model.hard_state.commit, model.snapshot.index) + 1
            first = data.draw(st.integers(low, last + 1), label="first")
            count = data.draw(st.integers(0, 4), label="count")
            if data.draw(st.booleans(), label="new term"):
                model.term += 1
            new = [Entry(model.term, i, data=bytes([i % 256]) * (i % 7)) for i in
                   range(first, first + count)]  # fmt: skip
            new_last = first + count - 1 if count else last
            hard_state = None
            if data.draw(st.booleans(), label="hard state"):
                commit = data.draw(st.integers(model.hard_state.commit, new_last), label="commit")
                vote = data.draw(st.integers(0, 3), label="vote")
                hard_state = HardState(model.term, vote, commit)
            wal.append(new, hard_state)
            # Each record is a possible end of what survives a crash.
            for entry in new:
                del model.log[entry.index - 1 :]
                model.log.append(entry)
                candidates.append(model.state())
            if hard_state is not None and hard_state != model.hard_state:
                model.hard_state = hard_state
                candidates.append(model.state())
        elif action == "sync":
            wal.sync()
            candidates = [model.state()]
        elif action == "snapshot":
            wal.sync()
            candidates = [model.state()]
            if model.hard_state.commit > model.snapshot.index:
                index = data.draw(
                    st.integers(model.snapshot.index + 1, model.hard_state.commit), label="snap"
                )
                meta = SnapshotMeta(index, model.log[index - 1].term)
                store.save(Snapshot(meta, f"state at {index}".encode()))
                wal.save_snapshot(meta)
                wal.sync()
                wal.compact(index)
                model.snapshot = meta
        elif action == "install":
            # A leader's snapshot beyond our log replaces it.
            wal.sync()
            index = len(model.log) + data.draw(st.integers(1, 5), label="install at")
            model.term += 1
            meta = SnapshotMeta(index, model.term)
            store.save(Snapshot(meta, f"state at {index}".encode()))
            wal.save_snapshot(meta)
            hard_state = HardState(model.term, 0, index)
            wal.append((), hard_state)
            wal.sync()
            wal.compact(index)
            # Entries the snapshot covers are never replayed: placeholders keep positions.
            model.log = [Entry(model.term, i, data=b"covered") for i in range(1, index + 1)]
            model.snapshot, model.hard_state = meta, hard_state
            candidates = [model.state()]
        else:
            tear = data.draw(st.booleans(), label="tear")
            fs.crash(tear=tear)
            wal, replay = open_wal(fs, store, segment_bytes, preallocate)
            got = (tuple(replay.entries), replay.hard_state)
            assert replay.snapshot == model.snapshot
            allowed = [model.after_snapshot(c) for c in candidates]
            assert got in allowed, (
                f"replayed {got} is none of the {len(allowed)} states the acknowledged "
                f"records allow; the last synced one is {allowed[0]}"
            )
            # Continue from the state that survived.
            model.log, model.hard_state = list(candidates[allowed.index(got)][0]), got[1]
            model.term = max([model.term, *(e.term for e in model.log)])
            candidates = [model.state()]
