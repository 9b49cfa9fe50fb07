"""Restoring a key space (a keel-store snapshot, etcd's database) runs with the cyclic
collector paused, and leaves it as it found it, also when the input is refused; a
snapshot restores from any bytes-like input."""

from __future__ import annotations

import gc

import pytest

from keel_store.bbolt import read_db
from keel_store.mvcc import snapshot
from keel_store.mvcc.etcd_db import etcd_database, from_database
from keel_store.mvcc.store import StateMachine
from keel_store.pb import rpcpb


def _state() -> StateMachine:
    sm = StateMachine()
    for i in range(300):
        sm.put(rpcpb.PutRequest(key=b"k%03d" % (i % 120), value=b"v%d" % i))
    sm.delete_range(rpcpb.DeleteRangeRequest(key=b"k010", range_end=b"k020"))
    sm.compact(rpcpb.CompactionRequest(revision=150))
    return sm


@pytest.fixture
def collector_on() -> object:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_while_restoring_and_on_after(collector_on: object) -> None:
    seen: list[bool] = []
    sm = _state()
    real = StateMachine.__init__

    def spy(self: StateMachine) -> None:
        seen.append(gc.isenabled())
        real(self)

    StateMachine.__init__ = spy  # type: ignore[method-assign]
    try:
        restored = snapshot.restore(snapshot.save(sm))
        from_etcd = from_database(read_db(etcd_database(sm)))
    finally:
        StateMachine.__init__ = real  # type: ignore[method-assign]
    assert seen == [False, False]
    assert gc.isenabled()
    assert snapshot.save(restored) == snapshot.save(sm)
    assert from_etcd.range(rpcpb.RangeRequest(key=b"k", range_end=b"l")) == sm.range(
        rpcpb.RangeRequest(key=b"k", range_end=b"l")
    )


def test_a_refused_snapshot_leaves_the_collector_as_it_was(collector_on: object) -> None:
    data = snapshot.save(_state())
    with pytest.raises(ValueError, match="truncated or corrupt"):
        snapshot.restore(data[:-7])
    assert gc.isenabled()
    gc.disable()
    try:
        snapshot.restore(data)
        assert not gc.isenabled()  # not switched on by the restore
    finally:
        gc.enable()


def test_a_snapshot_restores_from_any_bytes_like_input() -> None:
    """The keys are slices of the input: from a bytearray or a memoryview they must
    still be bytes (a bytearray key cannot be hashed)."""
    sm = _state()
    data = snapshot.save(sm)
    for given in (data, bytearray(data), memoryview(data)):
        restored = snapshot.restore(given)  # type: ignore[arg-type]
        assert {type(k) for k, _ in restored.kv.histories()} == {bytes}
        assert snapshot.save(restored) == data
