"""Request bodies decoded as etcd's grpc-gateway decodes them (golang/protobuf's jsonpb).

* Only the body's first JSON value is read (Go's ``json.Decoder``): what follows it is
  ignored; an empty body is an empty request, and so is ``null``.
* A value that is not an object is refused (``json: cannot unmarshal array into Go
  value of type map[string]json.RawMessage``).
* Unknown fields are ignored (grpc-gateway's ``allowUnknownFields``), at any depth.
* An enum given by a name it does not have is refused (``unknown value "NOPE" for enum
  etcdserverpb.RangeRequest_SortOrder``); a number is taken as it is.
* ``bytes`` are standard base64 with padding (Go's ``base64.StdEncoding``, newlines
  skipped): anything else is refused with Go's ``illegal base64 data at input byte N``.
* 64-bit integers are a JSON number or a string holding one, with no fraction or
  exponent (``json: cannot unmarshal number 1e2 into Go value of type int64``).

Every refusal is a :class:`BodyError` (the gateway answers it 400, gRPC code 3). Where
the texts above are Go's they are reproduced; other refusals (JSON syntax, a string for
a bool...) carry Python's description instead of Go's.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import descriptor, json_format

_FD = descriptor.FieldDescriptor
_INTS = {
    _FD.TYPE_INT64: "int64",
    _FD.TYPE_SINT64: "int64",
    _FD.TYPE_SFIXED64: "int64",
    _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_FIXED64: "uint64",
    _FD.TYPE_INT32: "int32",
    _FD.TYPE_SINT32: "int32",
    _FD.TYPE_SFIXED32: "int32",
    _FD.TYPE_UINT32: "uint32",
    _FD.TYPE_FIXED32: "uint32",
}
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


class BodyError(ValueError):
    """A request body grpc-gateway would refuse (InvalidArgument)."""


class _Number(float):
    """A JSON number that is not an integer, with its text (for Go's messages)."""

    text: str

    def __new__(cls, text: str) -> _Number:
        number = super().__new__(cls, float(text))
        number.text = text
        return number


DECODER = json.JSONDecoder(parse_float=_Number)
"""The gateway's JSON decoder, for unary bodies and stream requests alike: numbers with a
fraction or exponent keep their text, for Go's messages."""


def _go_kind(value: object) -> str:
    """encoding/json's name for a JSON value's kind."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def first_value(body: bytes) -> object:
    """The body's first JSON value (None for an empty body or ``null``)."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise BodyError(f"invalid UTF-8 in JSON body: {exc}") from None
    text = text.lstrip(" \t\r\n")
    if not text:
        return None
    try:
        value, _ = DECODER.raw_decode(text)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError, and what the json module raises past its own checks: an
        # integer of over 4,300 digits (ValueError), nesting too deep (RecursionError).
        raise BodyError(str(exc)) from None
    return value


def go_base64_error(text: str) -> int | None:
    """Where Go's ``base64.StdEncoding`` refuses ``text`` (its CorruptInputError), or None."""
    src = text.encode()
    si, n = 0, len(src)
    while si < n:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return None
                return si - j
            ch = src[si]
            si += 1
            if ch in _B64:
                j += 1
                continue
            if ch in (0x0A, 0x0D):
                continue
            if ch != 0x3D:  # '='
                return si - 1
            if j in (0, 1):
                return si - 1
            if j == 2:
                while si < n and src[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return n
                if src[si] != 0x3D:
                    return si - 1
                si += 1
            while si < n and src[si] in (0x0A, 0x0D):
                si += 1
            return si if si < n else None
    return None


def _go_enum_name(enum: descriptor.EnumDescriptor) -> str:
    """The Go type gogo-protobuf generates for an enum: package.Outer_Inner."""
    package = enum.file.package
    local = enum.full_name[len(package) + 1 :] if package else enum.full_name
    return f"{package}.{local.replace('.', '_')}" if package else local.replace(".", "_")


def _check_int(field: Any, value: object) -> None:
    go_type = _INTS[field.type]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        if value is None:
            return
        raise BodyError(f"json: cannot unmarshal {_go_kind(value)} into Go value of type {go_type}")
    if isinstance(value, str):
        try:
            inner = first_value(value.encode())
        except BodyError:
            bad = value.lstrip()[:1] or " "
            raise BodyError(f"invalid character {bad!r} looking for beginning of value") from None
        if not isinstance(inner, (int, float)) or isinstance(inner, bool):
            raise BodyError(
                f"json: cannot unmarshal {_go_kind(inner)} into Go value of type {go_type}"
            )
        value = inner
    if isinstance(value, float):
        text = value.text if isinstance(value, _Number) else repr(value)
        raise BodyError(f"json: cannot unmarshal number {text} into Go value of type {go_type}")
    if go_type.startswith("u") and value < 0:
        raise BodyError(f"json: cannot unmarshal number {value} into Go value of type {go_type}")


def _check_scalar(field: Any, value: object) -> object:
    """``value`` for ``field`` as json_format takes it, or BodyError."""
    if value is None:
        return None
    if field.type == _FD.TYPE_ENUM:
        if isinstance(value, str):
            if field.enum_type.values_by_name.get(value) is None:
                name = _go_enum_name(field.enum_type)
                raise BodyError(f"unknown value {json.dumps(value)} for enum {name}")
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise BodyError(f"json: cannot unmarshal {_go_kind(value)} into Go value of type int32")
    if field.type == _FD.TYPE_BYTES:
        if not isinstance(value, str):
            raise BodyError(
                f"json: cannot unmarshal {_go_kind(value)} into Go value of type []uint8"
            )
        offset = go_base64_error(value)
        if offset is not None:
            raise BodyError(f"illegal base64 data at input byte {offset}")
        return value.replace("\n", "").replace("\r", "")
    if field.type in _INTS:
        _check_int(field, value)
        return str(value) if isinstance(value, str) else value
    if isinstance(value, _Number):
        return float(value)
    return value


def _prune(value: object, message: descriptor.Descriptor) -> object:
    """``value`` without the fields ``message`` does not have, checked as jsonpb would."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(
            f"json: cannot unmarshal {_go_kind(value)} into Go value of type"
            " map[string]json.RawMessage"
        )
    out: dict[str, object] = {}
    for key, item in value.items():
        field = message.fields_by_name.get(key) or next(
            (f for f in message.fields if f.json_name == key), None
        )
        if field is None or item is None:
            continue  # unknown: ignored; null: the default
        repeated = bool(field.is_repeated)
        if repeated and not isinstance(item, list):
            raise BodyError(f"json: cannot unmarshal {_go_kind(item)} into Go value of type []")
        items = item if repeated else [item]
        if field.type == _FD.TYPE_MESSAGE:
            checked = [_prune(v, field.message_type) for v in items]
        else:
            checked = [_check_scalar(field, v) for v in items]
        out[key] = checked if repeated else checked[0]
    return out


def to_message(value: object, request_type: type[Any]) -> Any:
    """A decoded JSON value as a request message, or BodyError."""
    message = request_type()
    try:
        doc = _prune(value, message.DESCRIPTOR)
        return json_format.ParseDict(doc, message)
    except (json_format.ParseError, ValueError, RecursionError) as exc:
        raise BodyError(str(exc)) from None


def decode(body: bytes, request_type: type[Any]) -> Any:
    """A unary call's body as its request message, or BodyError."""
    return to_message(first_value(body), request_type)
