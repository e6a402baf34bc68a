"""The pure codec's read primitives: varints, tags, lengths, scalar fields, skipping.

The twin of _codec/readbuf.pxi. Each reader takes the bytes, a position and the
end it must not pass, checks what is left before it reads, and returns the value
with the position after it; a length field is never trusted. Error messages are
the compiled twin's, word for word.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeAlias

from shardproxy.wire import END_GROUP, FIXED32, FIXED64, LENGTH, START_GROUP, VARINT

Buffer: TypeAlias = bytes | bytearray | memoryview


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


# Python protobuf lets a message nest 100 levels deep; every submessage, map
# entry and group takes one level.
MAX_DEPTH = 100

_MASK64 = (1 << 64) - 1
_DOUBLE = struct.Struct("<d")


def as_bytes(data: Buffer) -> bytes:
    if type(data) is bytes:
        return data
    return bytes(memoryview(data))


def read_varint(data: bytes, pos: int, end: int, max_bytes: int = 10) -> tuple[int, int]:
    """An unsigned varint and the position after it; bits past 64 are dropped."""
    if pos < end:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
    result = 0
    shift = 0
    limit = pos + max_bytes
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        if pos == limit:
            raise DecodeError(f"varint longer than {max_bytes} bytes")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7


def read_tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag)."""
    key, pos = read_varint(data, pos, end, 5)
    if key > 0xFFFFFFFF:
        raise DecodeError("field number out of range")
    if key < 8:
        raise DecodeError("field number 0")
    wire_type = key & 7
    if wire_type > FIXED32:
        raise DecodeError(f"invalid wire type {wire_type}")
    return key >> 3, wire_type, pos


def read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix, checked against what is left: (position after it, end of the payload)."""
    length, pos = read_varint(data, pos, end, 5)
    if length > end - pos:
        raise DecodeError("length past the end")
    return pos, pos + length


def wrong_type(field: int, wire_type: int) -> DecodeError:
    return DecodeError(f"wrong wire type {wire_type} for field {field}")


# -- unknown fields ----------------------------------------------------------------


def skip(data: bytes, pos: int, end: int, field: int, wire_type: int, depth: int) -> int:
    """The position after an unknown field whose tag was just read."""
    if wire_type == VARINT:
        return read_varint(data, pos, end)[1]
    if wire_type == FIXED64:
        return _skip_fixed(pos, end, 8)
    if wire_type == LENGTH:
        return read_length(data, pos, end)[1]
    if wire_type == FIXED32:
        return _skip_fixed(pos, end, 4)
    if wire_type == START_GROUP:
        return _skip_group(data, pos, end, field, depth)
    raise DecodeError("end-group tag without a group")


def _skip_fixed(pos: int, end: int, size: int) -> int:
    if end - pos < size:
        raise DecodeError("truncated fixed-size field")
    return pos + size


def _skip_group(data: bytes, pos: int, end: int, field: int, depth: int) -> int:
    """The position after the end-group tag that closes `field`; nested groups too."""
    open_groups = [field]
    while True:
        if len(open_groups) > depth:
            raise DecodeError("message nested too deeply")
        if pos >= end:
            raise DecodeError("unterminated group")
        field, wire_type, pos = read_tag(data, pos, end)
        if wire_type == START_GROUP:
            open_groups.append(field)
        elif wire_type == END_GROUP:
            if open_groups.pop() != field:
                raise DecodeError("end-group tag does not match its group")
            if not open_groups:
                return pos
        else:
            pos = skip(data, pos, end, field, wire_type, depth)


# -- scalar fields -----------------------------------------------------------------
# Each takes the field's number and wire type from the tag just read, refuses a
# wire type the field is not written with, and returns (value, position after it).


def read_int64(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    if wire_type != VARINT:
        raise wrong_type(field, wire_type)
    value, pos = read_varint(data, pos, end)
    return as_int64(value), pos


def read_enum(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    if wire_type != VARINT:
        raise wrong_type(field, wire_type)
    value, pos = read_varint(data, pos, end)
    return as_int32(value), pos


def as_int64(raw: int) -> int:
    return raw - (1 << 64) if raw >> 63 else raw


def as_int32(raw: int) -> int:
    """An enum is an int32 on the wire: the low 32 bits of the varint, signed."""
    raw &= 0xFFFFFFFF
    return raw - (1 << 32) if raw >> 31 else raw


def read_bool(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[bool, int]:
    if wire_type != VARINT:
        raise wrong_type(field, wire_type)
    value, pos = read_varint(data, pos, end)
    return value != 0, pos


def read_double(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[float, int]:
    if wire_type != FIXED64:
        raise wrong_type(field, wire_type)
    if end - pos < 8:
        raise DecodeError("truncated fixed-size field")
    return _DOUBLE.unpack_from(data, pos)[0], pos + 8


def read_string(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[str, int]:
    if wire_type != LENGTH:
        raise wrong_type(field, wire_type)
    pos, stop = read_length(data, pos, end)
    try:
        return data[pos:stop].decode(), stop
    except UnicodeDecodeError:
        raise DecodeError(f"invalid UTF-8 in field {field}") from None


def read_message(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    """(start, stop) of an embedded message's bytes."""
    if wire_type != LENGTH:
        raise wrong_type(field, wire_type)
    return read_length(data, pos, end)


# -- repeated scalars, packed or not -------------------------------------------------


def read_doubles(
    data: bytes, pos: int, end: int, field: int, wire_type: int, into: list[float]
) -> int:
    """A repeated double, packed or not, appended to `into`."""
    if wire_type == FIXED64:
        value, pos = read_double(data, pos, end, field, wire_type)
        into.append(value)
        return pos
    if wire_type != LENGTH:
        raise wrong_type(field, wire_type)
    pos, stop = read_length(data, pos, end)
    count, rest = divmod(stop - pos, 8)
    if rest:
        raise DecodeError(f"packed doubles of field {field} do not fill 8-byte words")
    into.extend(struct.unpack_from(f"<{count}d", data, pos))
    return stop


def read_varints(
    data: bytes,
    pos: int,
    end: int,
    field: int,
    wire_type: int,
    into: list[int],
    convert: Callable[[int], int],
) -> int:
    """A repeated int64 or enum, packed or not, converted and appended to `into`."""
    if wire_type == VARINT:
        value, pos = read_varint(data, pos, end)
        into.append(convert(value))
        return pos
    if wire_type != LENGTH:
        raise wrong_type(field, wire_type)
    pos, stop = read_length(data, pos, end)
    while pos < stop:
        value, pos = read_varint(data, pos, stop)
        into.append(convert(value))
    return stop
