"""The record format: round trips, framing and what a damaged record looks like."""

from __future__ import annotations

import pytest

from keel_store.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from keel_store.wal import records as rec


def test_every_kind_round_trips():
    entry = Entry(3, 7, EntryType.CONF_CHANGE, b"\x00data\xff")
    state = HardState(5, 2, 6)
    meta = SnapshotMeta(9, 4, ConfState((1, 2, 3), (4,), (1, 2)))
    data = (
        rec.encode_segment(2, 10)
        + rec.encode_entry(entry)
        + rec.encode_hard_state(state)
        + rec.encode_snapshot_meta(meta)
    )
    found = rec.scan(data)
    assert found.problem is None
    assert found.end == len(data)
    kinds = [r.kind for r in found.records]
    assert kinds == [rec.RecordKind.SEGMENT, rec.RecordKind.ENTRY, rec.RecordKind.HARD_STATE,
                     rec.RecordKind.SNAPSHOT]  # fmt: skip
    seg, ent, hs, snap = (r.payload for r in found.records)
    assert rec.unpack_segment(seg) == (2, 10)
    assert rec.unpack_entry(ent) == entry
    assert rec.unpack_hard_state(hs) == state
    assert rec.unpack_snapshot_meta(snap) == meta


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100])
def test_records_are_aligned_to_eight_bytes(size):
    assert len(rec.encode_entry(Entry(1, 1, data=bytes(size)))) % rec.ALIGN == 0


def test_zero_fill_ends_the_data_cleanly():
    data = rec.encode_entry(Entry(1, 1)) + bytes(4096)
    found = rec.scan(data)
    assert (len(found.records), found.end, found.problem) == (1, len(data) - 4096, None)


@pytest.mark.parametrize("where", [0, 1, 4095, 4096, 4097, 10_000, 12_287])
def test_the_first_nonzero_byte_is_found_wherever_it_is(monkeypatch, where):
    # Scanned 4 KiB at a time here (1 MiB in use): before, at and after each boundary.
    monkeypatch.setattr(rec, "_ZERO_SCAN", 4096)
    data = bytearray(12_288)
    data[where] = 7
    data[where + 1 :] = b"\x01" * (len(data) - where - 1)  # what follows does not count
    assert rec._first_nonzero(bytes(data), 0) == where
    assert rec._first_nonzero(bytes(data), min(where, 3)) == where
    assert rec._first_nonzero(bytes(12_288), 5) is None
    assert rec._first_nonzero(bytes(data), len(data)) is None


def test_bytes_after_the_zero_fill_are_reported_past_the_first_scan_chunk(monkeypatch):
    monkeypatch.setattr(rec, "_ZERO_SCAN", 4096)
    data = rec.encode_entry(Entry(1, 1)) + bytes(9000) + b"\x05" + bytes(100)
    found = rec.scan(data)
    assert len(found.records) == 1
    assert found.problem == "zero length followed by non-zero bytes"


def test_every_flipped_byte_of_a_record_is_caught():
    one = rec.encode_entry(Entry(1, 1, data=b"payload"))
    body_end = rec.HEADER.size + 1 + rec._ENTRY.size + len(b"payload")
    for position in range(body_end):
        damaged = bytearray(one)
        damaged[position] ^= 0x40
        found = rec.scan(bytes(damaged))
        assert found.records == [], position
        assert found.problem is not None, position


def test_a_cut_record_is_reported_with_what_is_missing():
    data = rec.encode_entry(Entry(1, 1)) + rec.encode_entry(Entry(1, 2, data=b"x" * 40))[:30]
    found = rec.scan(data)
    assert len(found.records) == 1
    assert "runs past the end" in (found.problem or "")


def test_records_after_finds_the_next_good_record():
    first = rec.encode_entry(Entry(1, 1, data=b"a" * 20))
    second = rec.encode_entry(Entry(1, 2))
    damaged = bytearray(first + second)
    damaged[12] ^= 1
    assert rec.scan(bytes(damaged)).end == 0
    after = list(rec.records_after(bytes(damaged), 0))
    assert [r.offset for r in after] == [len(first)]
    assert list(rec.records_after(bytes(damaged[: len(first)]), 0)) == []
