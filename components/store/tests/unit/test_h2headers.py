"""The HPACK decoder's block cache must never return headers of an older table state."""

from __future__ import annotations

import hpack

from keel_store.server.h2headers import HeaderDecoder


def _indexed(index: int) -> bytes:
    """An indexed header field representation (RFC 7541 6.1) for a small index."""
    assert index < 127
    return bytes((0x80 | index,))


def test_same_bytes_follow_the_dynamic_table() -> None:
    enc = hpack.Encoder()
    dec = HeaderDecoder(1 << 20)
    plain = hpack.Decoder()
    # Two blocks that add entries (literal with incremental indexing); after each, the
    # one-byte block "index 62" names the newest dynamic entry: different headers.
    first = enc.encode([(":path", "/etcdserverpb.KV/Put")])
    second = enc.encode([("token", "abc")])
    newest = _indexed(62)
    got = []
    for block in (first, newest, newest, second, newest, newest):
        expected = [(str(k), str(v)) for k, v in plain.decode(block, raw=False)]
        assert dec.decode(block) == expected
        got.append(expected)
    assert got[1] == [(":path", "/etcdserverpb.KV/Put")]
    assert got[4] == [("token", "abc")]


def test_repeated_blocks_are_served_from_the_cache() -> None:
    enc = hpack.Encoder()
    dec = HeaderDecoder(1 << 20)
    headers = [(":method", "POST"), (":path", "/etcdserverpb.KV/Range"), ("te", "trailers")]
    dec.decode(enc.encode(headers))  # adds :path to the table
    repeat = enc.encode(headers)  # all indexed now
    a = dec.decode(repeat)
    b = dec.decode(repeat)
    assert a == [(k, v) for k, v in headers]
    assert b is a  # the cached list


def test_table_size_update_empties_the_cache() -> None:
    enc = hpack.Encoder()
    dec = HeaderDecoder(1 << 20)
    dec.decode(enc.encode([("x-a", "1")]))
    newest = _indexed(62)
    assert dec.decode(newest) == [("x-a", "1")]
    # A dynamic table size update to 0 evicts everything: index 62 no longer exists.
    enc.header_table_size = 0
    update = enc.encode([(":method", "POST")])
    assert dec.decode(update) == [(":method", "POST")]
    try:
        dec.decode(newest)
    except hpack.HPACKError:
        pass
    else:
        raise AssertionError("a cached block outlived the table entry it names")
