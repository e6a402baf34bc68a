"""The pure codec's write primitives: varints and whole fields, as bytes.

The twin of _codec/writebuf.pxi. Each field helper takes the field's tag from
shardproxy.wire and returns the field's bytes, for the reply encoders to join once.
Every tag is below 0x80 (see shardproxy.wire), so it is written as one byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from shardproxy.wire import (
    MAP_DOUBLE_VALUE_TAG,
    MAP_INT64_KEY_TAG,
    MAP_STRING_KEY_TAG,
    MAP_STRING_VALUE_TAG,
    TRIAL_INTERMEDIATE_VALUES_TAG,
)

_MASK64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_pack_double = struct.Struct("<d").pack

# Every byte below 0x80: a one-byte varint, and every tag.
ONE_BYTE = [bytes((i,)) for i in range(0x80)]
# The tags inside map entries, as written.
_STRING_KEY = ONE_BYTE[MAP_STRING_KEY_TAG]
_INT64_KEY = ONE_BYTE[MAP_INT64_KEY_TAG]
_STRING_VALUE = ONE_BYTE[MAP_STRING_VALUE_TAG]
_DOUBLE_VALUE = ONE_BYTE[MAP_DOUBLE_VALUE_TAG]
# An intermediate value entry `{key: step, value: double}` for a step below 128, up to
# its double: the entry takes 11 bytes (key tag, step, value tag, 8-byte double).
_SMALL_STEP_ENTRY = [
    bytes((TRIAL_INTERMEDIATE_VALUES_TAG, 11, MAP_INT64_KEY_TAG, step, MAP_DOUBLE_VALUE_TAG))
    for step in range(0x80)
]


def varint(value: int) -> bytes:
    """An unsigned varint; `value` is in [0, 2**64)."""
    if value < 0x80:
        return ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int64_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return ONE_BYTE[value]
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{value} does not fit in int64")
    return varint(value & _MASK64)


def _enum_varint(value: int) -> bytes:
    """An int32 varint: a negative one is sign-extended to ten bytes."""
    if 0 <= value < 0x80:
        return ONE_BYTE[value]
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise OverflowError(f"{value} does not fit in int32")
    return varint(value & _MASK64)


# -- whole fields ------------------------------------------------------------------
# Each *_field helper leaves the field out when it holds the proto3 default, but
# checks the value's type first, as the compiled twin does.


def int64_field(tag: int, value: int) -> bytes:
    encoded = _int64_varint(value)
    return ONE_BYTE[tag] + encoded if value else b""


def enum_field(tag: int, value: int) -> bytes:
    encoded = _enum_varint(value)
    return ONE_BYTE[tag] + encoded if value else b""


def string_field(tag: int, text: str) -> bytes:
    payload = str.encode(text)
    return ONE_BYTE[tag] + varint(len(payload)) + payload if payload else b""


def packed_enums(tag: int, values: Iterable[int]) -> bytes:
    payload = b"".join([_enum_varint(v) for v in values])
    return ONE_BYTE[tag] + varint(len(payload)) + payload if payload else b""


def packed_doubles(tag: int, values: Sequence[float]) -> bytes:
    payload = struct.pack(f"<{len(values)}d", *values)
    return ONE_BYTE[tag] + varint(len(payload)) + payload if payload else b""


def string_entry(tag: int, key: str, value: str) -> bytes:
    """A map<string, string> entry: `tag: {key, value}`."""
    key_bytes = str.encode(key)
    value_bytes = str.encode(value)
    entry = b"".join(
        (
            _STRING_KEY,
            varint(len(key_bytes)),
            key_bytes,
            _STRING_VALUE,
            varint(len(value_bytes)),
            value_bytes,
        )
    )
    return ONE_BYTE[tag] + varint(len(entry)) + entry


def double_entry(tag: int, key: str, value: float) -> bytes:
    """A map<string, double> entry: `tag: {key, value}`."""
    key_bytes = str.encode(key)
    entry = _STRING_KEY + varint(len(key_bytes)) + key_bytes + _DOUBLE_VALUE + _pack_double(value)
    return ONE_BYTE[tag] + varint(len(entry)) + entry


def step_entry(step: int, value: float) -> bytes:
    """An intermediate value: the map<int64, double> entry `{step, value}`."""
    if 0 <= step < 0x80:
        return _SMALL_STEP_ENTRY[step] + _pack_double(value)
    entry = _INT64_KEY + _int64_varint(step) + _DOUBLE_VALUE + _pack_double(value)
    return ONE_BYTE[TRIAL_INTERMEDIATE_VALUES_TAG] + varint(len(entry)) + entry
