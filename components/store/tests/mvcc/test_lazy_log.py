"""A restore leaves the change log out until a watcher asks for a revision from before
it (KeySpace.changes_since rebuilds it then); what a watcher replays is the same as from
the key space that was never restored."""

from __future__ import annotations

import random

import pytest

from keel_store.mvcc import snapshot
from keel_store.mvcc.keyspace import BUSY_EVERY, Changes
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb

from .test_compaction import _load
from .test_live_keys import _random_write


def _replay(sm: StateMachine, revision: int) -> list[tuple[int, list[object]]]:
    return [(c.revision, c.events()) for c in sm.kv.changes_since(revision)]


def _compact(rng: random.Random, *copies: StateMachine) -> None:
    first = copies[0].kv
    revision = rng.randint(first.compact_revision + 1, first.revision)
    for sm in copies:
        sm.compact(rpcpb.CompactionRequest(revision=revision))


@pytest.mark.parametrize("seed", range(12))
def test_a_watcher_replays_the_same_events_from_a_restored_key_space(seed: int) -> None:
    """Random writes and compactions; a restore; the same writes on both copies (and a
    compaction on both with odd seeds, before anything rebuilds the restored log); then
    every revision's replay is compared, from before and after the restore."""
    rng = random.Random(seed)
    sm = StateMachine()
    for _ in range(300):
        if rng.random() < 0.05 and sm.kv.revision > sm.kv.compact_revision + 1:
            _compact(rng, sm)
        else:
            _random_write(sm, rng)
    restored = snapshot.restore(snapshot.save(sm))
    at_restore = restored.kv.revision
    assert list(restored.kv.changes_since(at_restore + 1)) == []  # needs nothing rebuilt
    assert restored.kv._log_changes == []  # nothing built by the restore

    same = random.Random(seed + 1000)
    twin = random.Random(seed + 1000)
    for _ in range(60):
        _random_write(sm, same)
        _random_write(restored, twin)
    assert restored.kv.revision == sm.kv.revision
    # only what came after the restore is logged yet
    assert [c.revision for c in restored.kv._log_changes] == [
        c.revision for c in sm.kv.changes_since(at_restore + 1)
    ]
    assert _replay(restored, at_restore + 1) == _replay(sm, at_restore + 1)
    if seed % 2:
        _compact(random.Random(seed), sm, restored)
    first = max(sm.kv.compact_revision, 1)
    for revision in range(first, sm.kv.revision + 2):
        assert _replay(restored, revision) == _replay(sm, revision), revision
    assert restored.kv._log_from == 0 or restored.kv._log_from <= restored.kv.compact_revision


def test_the_rebuild_waits_for_the_first_watcher_from_before_and_is_paced() -> None:
    keys = 3 * BUSY_EVERY + 10
    sm = StateMachine()
    _load(sm, keys)  # 100 keys per revision
    restored = snapshot.restore(snapshot.save(sm))
    calls: list[None] = []
    restored.kv.busy = lambda: calls.append(None)
    restored.put(rpcpb.PutRequest(key=b"after", value=b"v"))
    (latest,) = restored.kv.changes_since(restored.kv.revision)  # logged as it applied
    assert isinstance(latest, Changes)
    assert calls == []
    assert len(restored.kv._log_changes) == 1
    oldest = next(restored.kv.changes_since(2))
    assert [e.kv.key for e in oldest.events()] == [b"k/%06d" % i for i in range(100)]
    assert len(calls) == 3  # every BUSY_EVERY keys of the rebuild
    assert len(restored.kv._log_changes) == len(sm.kv._log_changes) + 1
    next(restored.kv.changes_since(2))
    assert len(calls) == 3  # rebuilt once
