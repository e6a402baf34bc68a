"""Bad bytes of every class, for every decoder, raise DecodeError in both codecs.

The cases are built from each message's field list, so every known field of every
decoder (and of the Trial and map entries nested in them) gets each class of damage
that applies to its kind. Optuna's `api_pb2` refuses the same bytes, except where
it is more lenient than the contract (see `protobuf_accepts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from shardproxy._codec_py import DecodeError
from tests.codec_strategies import (
    BOOL,
    DECODERS,
    DOUBLE,
    DOUBLES,
    END_GROUP,
    ENTRY_SCHEMAS,
    ENUM,
    ENUMS,
    FIXED32,
    FIXED64,
    IMPLEMENTATIONS,
    INT64,
    INT64S,
    LENGTH,
    START_GROUP,
    STRING,
    TRIAL,
    TRIAL_SCHEMA,
    VARINT,
    WIRE_TYPES,
    Decoder,
    Schema,
    bytes_field,
    double_field,
    implementation,
    protobuf_outcome,
    string_field,
    tag,
    varint,
    varint_field,
)

UNKNOWN = 15  # a field number no message here uses
BAD_UTF8 = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ab\xe2\x82", b"\x80")


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request.param)


def sample_field(field: int, kind: str) -> bytes:
    """One complete occurrence of a known field, with multi-byte varints to cut into."""
    if kind in (INT64, ENUM, BOOL):
        return varint_field(field, -2)
    if kind in (INT64S, ENUMS):
        return bytes_field(field, varint(300) + varint(-1))
    if kind == DOUBLE:
        return double_field(field, 1.5)
    if kind == DOUBLES:
        return bytes_field(field, b"\x00" * 16)
    if kind == STRING:
        return string_field(field, "wörd")
    if kind == TRIAL:
        return bytes_field(field, sample_field(5, STRING) + sample_field(1, INT64))
    entry = ENTRY_SCHEMAS[kind]
    return bytes_field(field, sample_field(1, entry[1]) + sample_field(2, entry[2]))


def nested_schemas(schema: Schema) -> Iterator[tuple[int, Schema]]:
    """(field, schema) of the messages a field of `schema` embeds: a Trial, map entries."""
    for field, kind in schema.items():
        if kind == TRIAL:
            yield field, TRIAL_SCHEMA
        elif kind in ENTRY_SCHEMAS:
            yield field, ENTRY_SCHEMAS[kind]


def wrapped(schema: Schema, damage: Callable[[Schema], Iterator[bytes]]) -> Iterator[bytes]:
    """`damage(schema)`, plus the same damage inside every message nested in it."""
    yield from damage(schema)
    for field, inner in nested_schemas(schema):
        for damaged in wrapped(inner, damage):
            yield bytes_field(field, damaged)


def truncated(schema: Schema) -> Iterator[bytes]:
    fields = [sample_field(f, k) for f, k in schema.items()] or [
        varint_field(UNKNOWN, 300),
        bytes_field(UNKNOWN, b"abc"),
        tag(UNKNOWN, FIXED64) + bytes(8),
        tag(UNKNOWN, FIXED32) + bytes(4),
        tag(UNKNOWN, START_GROUP) + varint_field(1, 300) + tag(UNKNOWN, END_GROUP),
    ]
    for full in fields:
        for cut in range(1, len(full)):
            yield full[:cut]


WRONG_TYPE_PAYLOADS = {
    VARINT: b"\x01",
    FIXED64: bytes(8),
    LENGTH: b"\x00",
    FIXED32: bytes(4),
}


def wrong_wire_type(schema: Schema) -> Iterator[bytes]:
    for field, kind in schema.items():
        for wire_type, payload in WRONG_TYPE_PAYLOADS.items():
            if wire_type not in WIRE_TYPES[kind]:
                yield tag(field, wire_type) + payload
        yield tag(field, START_GROUP) + tag(field, END_GROUP)


def overlong_varint(schema: Schema) -> Iterator[bytes]:
    yield b"\x88\x80\x80\x80\x80\x00\x01"  # a tag of 6 bytes
    yield tag(UNKNOWN, VARINT) + b"\xff" * 10 + b"\x01"
    for field, kind in schema.items():
        if VARINT in WIRE_TYPES[kind]:
            yield tag(field, VARINT) + b"\x80" * 10 + b"\x00"
            yield tag(field, VARINT) + b"\xff" * 11
        if LENGTH in WIRE_TYPES[kind]:
            yield tag(field, LENGTH) + b"\x81\x80\x80\x80\x80\x00" + b"x"  # a length of 6 bytes
        if kind in (INT64S, ENUMS):
            yield bytes_field(field, b"\xff" * 11)


def length_past_end(schema: Schema) -> Iterator[bytes]:
    fields = [f for f, kind in schema.items() if LENGTH in WIRE_TYPES[kind]] + [UNKNOWN]
    for field in fields:
        for length in (1, 2, 100, 2**31 - 1, 2**32 + 5, 2**35 - 1):
            yield tag(field, LENGTH) + varint(length) + b"x" * min(length - 1, 3)
    for field, kind in schema.items():
        if kind == DOUBLES:
            yield bytes_field(field, bytes(7))  # packed doubles must fill 8-byte words
            yield tag(field, FIXED64) + bytes(7)
        elif kind == DOUBLE:
            yield tag(field, FIXED64) + bytes(7)


def bad_utf8(schema: Schema) -> Iterator[bytes]:
    for field, kind in schema.items():
        if kind == STRING:
            for bad in BAD_UTF8:
                yield bytes_field(field, bad)


def field_zero(schema: Schema) -> Iterator[bytes]:
    yield b"\x00\x00"
    yield b"\x01" + bytes(8)
    yield b"\x02\x00"
    yield b"\x05" + bytes(4)
    yield b"\x03\x04"
    yield b"\x80\x00\x00"  # field 0 in a padded tag
    yield b"".join(sample_field(f, k) for f, k in schema.items()) + b"\x00\x01"


def bad_tag(schema: Schema) -> Iterator[bytes]:
    yield tag(1, 6)
    yield tag(UNKNOWN, 7) + b"\x00"
    yield b"\xf8\xff\xff\xff\x1f\x00"  # a tag beyond 32 bits


CLASSES = {
    "truncated": truncated,
    "wrong wire type": wrong_wire_type,
    "varint too long": overlong_varint,
    "length past the end": length_past_end,
    "invalid UTF-8": bad_utf8,
    "field number 0": field_zero,
    "invalid tag": bad_tag,
}


def cases(decoder: Decoder, damage: str) -> list[bytes]:
    return sorted(set(wrapped(decoder.schema, CLASSES[damage])))


# Every (decoder, damage) pair with at least one case: a message without strings
# cannot carry bad UTF-8.
APPLICABLE = [
    pytest.param(decoder, damage, id=f"{decoder}-{damage.replace(' ', '-')}")
    for decoder in DECODERS
    for damage in CLASSES
    if cases(decoder, damage)
]


@pytest.mark.parametrize(("decoder", "damage"), APPLICABLE)
def test_bad_bytes_raise_decode_error(codec: ModuleType, decoder: Decoder, damage: str) -> None:
    for data in cases(decoder, damage):
        with pytest.raises(DecodeError):
            decoder.decode(codec, data)


def protobuf_accepts(decoder: Decoder, damage: str) -> bool:
    """Where protobuf (upb) is more lenient than we are: it keeps a known field with the
    wrong wire type as an unknown field, and it ignores field number 0 in a message
    without fields (and inside groups, which these cases do not reach)."""
    return damage == "wrong wire type" or (damage == "field number 0" and not decoder.schema)


@pytest.mark.parametrize(("decoder", "damage"), APPLICABLE)
def test_protobuf_refuses_the_same_bytes_but_where_it_is_lenient(
    decoder: Decoder, damage: str
) -> None:
    expected = "ok" if protobuf_accepts(decoder, damage) else "error"
    for data in cases(decoder, damage):
        assert protobuf_outcome(decoder, data)[0] == expected, data
