"""HTTP/2 and gRPC wire details for keel-store's own gRPC server (``grpc_server``).

Frame layout and codes are RFC 9113's; the gRPC parts (message prefix, ``grpc-status``,
``grpc-message`` percent-encoding, ``grpc-timeout``) follow gRPC's PROTOCOL-HTTP2.md.
Response header blocks are constant, so they are HPACK-encoded once here, without
touching the dynamic table (literal fields "without indexing"): the encoder keeps no
state and the peer's table size setting does not matter.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9

# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

# gRPC status codes the transport itself sends
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 1, 2, 4, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14

# settings
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 1, 2, 3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """One frame: 9-byte header and payload (no splitting: callers respect the size)."""
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, ftype, flags)) + _U32.pack(stream_id) + payload
    )


def settings_frame(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying ``settings`` (identifier -> value)."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload (its length is a multiple of 6)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame."""
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    """A RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame."""
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def u32(data: bytes, offset: int = 0) -> int:
    """A big-endian 32-bit integer at ``offset``."""
    return int(_U32.unpack_from(data, offset)[0])


# --- HPACK, encoder side (RFC 7541): literal fields without indexing ---------------------


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0) + data


def literal(name: bytes, value: bytes, static_index: int = 0) -> bytes:
    """A literal header field without indexing (name from the static table if given)."""
    if static_index:
        return _hpack_int(static_index, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


STATUS_200 = b"\x88"  # indexed: static table entry 8, ":status: 200"
CONTENT_TYPE_GRPC = literal(b"content-type", b"application/grpc", 31)
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC + literal(b"grpc-accept-encoding", b"identity")


def grpc_status_block(code: int, message: str) -> bytes:
    """The ``grpc-status`` (and ``grpc-message``, if any) fields of trailers."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


TRAILERS_OK = grpc_status_block(0, "")


_PLAIN = frozenset(range(0x20, 0x7F)) - {0x25}
"""Bytes ``grpc-message`` carries as they are: printable ASCII but '%'."""


def percent_encode(message: str) -> bytes:
    """gRPC's ``grpc-message`` encoding: UTF-8, bytes outside 0x20-0x7E and '%' as %XX."""
    data = message.encode()
    if _PLAIN.issuperset(data):
        return data
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in data)


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``"5S"``, ``"100m"``), None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def message_prefix(length: int) -> bytes:
    """gRPC's length-prefixed message header: not compressed, 32-bit length."""
    return b"\x00" + _U32.pack(length)
