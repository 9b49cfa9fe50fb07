"""The bbolt reader/writer: round trips, the layout details bbolt relies on, bad files."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel_store.bbolt import PAGE_SIZE, BoltError, Bucket, read_db, write_db, write_db_pieces
from keel_store.bbolt.layout import META, PAGE_HEADER, fnv64a


def _tree(sizes: dict[bytes, int]) -> Bucket:
    root = Bucket()
    for name, n in sizes.items():
        b = root.bucket(name)
        for i in range(n):
            b.items[b"k%06d" % i] = b"v" * (i % 97)
    return root


def test_fnv64a_matches_known_vectors() -> None:
    # Go: fnv.New64a() of "" and "a".
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C


def test_round_trip_with_inline_nested_and_multi_page_buckets() -> None:
    root = _tree({b"small": 3, b"large": 5000, b"empty": 0})
    nested = root.bucket(b"outer")
    nested.items[b"x"] = b"1"
    nested.bucket(b"inner").items[b"y"] = b"2"
    root.bucket(b"huge").items[b"blob"] = bytes(range(256)) * 100  # overflow pages
    db = read_db(write_db(root))
    assert db.problems == []
    assert db.root == root
    assert db.page_size == PAGE_SIZE
    assert db.size == len(write_db(root))


def test_small_buckets_are_inline_large_ones_are_not() -> None:
    data = write_db(_tree({b"a": 2, b"b": 2000}))
    # root leaf page is page 3 when everything else is inline; "b" needs its own pages
    pages = len(data) // PAGE_SIZE
    assert pages > 10
    assert len(write_db(_tree({b"a": 2, b"c": 2}))) == 4 * PAGE_SIZE


def test_both_meta_pages_valid_and_checksummed() -> None:
    data = write_db(_tree({b"a": 1}))
    for n in (0, 1):
        off = n * PAGE_SIZE
        pgid, flags, _, _ = PAGE_HEADER.unpack_from(data, off)
        assert (pgid, flags) == (n, 0x04)
        raw = data[off + 16 : off + 16 + META.size]
        magic, version, page_size = struct.unpack_from("<III", raw)
        assert (magic, version, page_size) == (0xED0CDAED, 2, PAGE_SIZE)
        assert struct.unpack_from("<Q", raw, 56)[0] == fnv64a(raw[:56])


keys = st.binary(min_size=1, max_size=40)
values = st.binary(max_size=600)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=8),
        st.dictionaries(keys, values, max_size=120),
        max_size=5,
    )
)
def test_round_trip_property(buckets: dict[bytes, dict[bytes, bytes]]) -> None:
    root = Bucket()
    for name, items in buckets.items():
        root.bucket(name).items.update(items)
    db = read_db(write_db(root))
    assert db.problems == []
    assert db.root == root


def test_not_a_bbolt_file() -> None:
    with pytest.raises(BoltError, match="not a bbolt database"):
        read_db(b"KEELSNAP2\n" + b"\0" * 9000)
    with pytest.raises(BoltError, match="only 5 bytes"):
        read_db(b"hello")


def test_truncated_file() -> None:
    data = write_db(_tree({b"a": 3000}))
    with pytest.raises(BoltError, match="truncated"):
        read_db(data[: len(data) - PAGE_SIZE])


def test_bad_checksum_on_both_metas_is_refused() -> None:
    data = bytearray(write_db(_tree({b"a": 3})))
    for n in (0, 1):
        data[n * PAGE_SIZE + 16 + 20] ^= 0xFF  # the root pgid
    with pytest.raises(BoltError, match="meta checksum mismatch"):
        read_db(bytes(data))


def test_one_bad_meta_is_a_problem_not_a_failure() -> None:
    data = bytearray(write_db(_tree({b"a": 3})))
    data[PAGE_SIZE + 16 + 20] ^= 0xFF
    db = read_db(bytes(data))
    assert db.problems == ["meta page 1: meta checksum mismatch"]
    assert db.root.buckets[b"a"].items[b"k000001"] == b"v"


def test_damaged_page_is_reported() -> None:
    data = bytearray(write_db(_tree({b"a": 3000})))
    # point the first branch element of the bucket's root at a meta page
    db = read_db(bytes(data))
    assert db.problems == []
    last = len(data) // PAGE_SIZE - 1
    assert PAGE_HEADER.unpack_from(data, last * PAGE_SIZE)[1] in (1, 2)
    struct.pack_into("<Q", data, last * PAGE_SIZE, 7)  # header says another page id
    with pytest.raises(BoltError, match="header says page 7"):
        read_db(bytes(data))


def test_unreachable_page_is_reported() -> None:
    data = write_db(_tree({b"a": 1})) + b"\0" * PAGE_SIZE
    data = bytearray(data)
    for n in (0, 1):  # raise the high water mark by one page, fix the checksum
        off = n * PAGE_SIZE + 16
        (pgid,) = struct.unpack_from("<Q", data, off + 40)
        struct.pack_into("<Q", data, off + 40, pgid + 1)
        struct.pack_into("<Q", data, off + 56, fnv64a(bytes(data[off : off + 56])))
    db = read_db(bytes(data))
    assert db.problems == [f"page {len(data) // PAGE_SIZE - 1}: unreachable unfreed"]


def test_root_cannot_hold_plain_keys() -> None:
    with pytest.raises(BoltError, match="buckets only"):
        write_db(Bucket(items={b"k": b"v"}))


_FUZZ_BASE = write_db(_tree({b"key": 400, b"meta": 2, b"empty": 0}))


_HEADERS = st.builds(
    lambda page, at: page * PAGE_SIZE + at,
    st.integers(0, len(_FUZZ_BASE) // PAGE_SIZE - 1),
    st.integers(0, 96),  # page headers, meta fields, the first elements
)
_ANYWHERE = st.integers(0, len(_FUZZ_BASE) - 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(_HEADERS, _ANYWHERE), st.integers(1, 255)), max_size=8))
def test_damaged_files_fail_only_with_bolt_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_FUZZ_BASE)
    for offset, mask in flips:
        data[offset] ^= mask
    with contextlib.suppress(BoltError):
        read_db(bytes(data))


def test_a_page_pointing_back_at_itself_is_found_quickly() -> None:
    data = bytearray(write_db(_tree({b"a": 3000})))
    db = read_db(bytes(data))
    root = db.root.buckets  # the bucket "a" has a branch page as its root: find it
    assert root
    for pgid in range(3, len(data) // PAGE_SIZE):
        if PAGE_HEADER.unpack_from(data, pgid * PAGE_SIZE)[1] == 0x01:
            count = PAGE_HEADER.unpack_from(data, pgid * PAGE_SIZE)[2]
            for i in range(count):  # every child is the branch page itself
                struct.pack_into("<Q", data, pgid * PAGE_SIZE + 16 + i * 16 + 8, pgid)
            break
    else:
        raise AssertionError("no branch page")
    problems = read_db(bytes(data)).problems
    assert f"page {pgid}: multiple references" in problems


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("size", [0, 32769])
def test_keys_bbolt_refuses_are_refused(nested: bool, size: int) -> None:
    """bbolt keys are 1-32768 bytes, in a bucket of plain items (the fast path) and in
    one that also holds buckets."""
    root = Bucket()
    b = root.bucket(b"b")
    b.items[b"fine"] = b"1"
    b.items[b"x" * size] = b"2"
    if nested:
        b.bucket(b"inner").items[b"y"] = b"3"
    with pytest.raises(BoltError, match=f"key of {size} bytes"):
        write_db(root)


def test_the_pieces_are_the_file() -> None:
    root = _tree({b"small": 3, b"large": 5000})
    root.bucket(b"huge").items[b"blob"] = bytes(range(256)) * 100
    pieces = write_db_pieces(root)
    assert len(pieces) > 100
    assert b"".join(pieces) == write_db(root)
