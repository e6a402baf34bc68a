"""What the codec tests share: both implementations, a protobuf writer for hand-made
encodings, random messages, and the oracle that is Optuna's own `api_pb2`.

Random messages come from a `random.Random`: a seeded one in the fuzz test, one
drawn by hypothesis (`st.randoms()`) in the property tests. They are valid but not
canonical: fields in any order, repeated, packed or not, padded varints, split
submessages, unknown fields and groups, map entries with a missing key or value.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from hypothesis import strategies as st
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy import _codec_py
from shardproxy._codec_py import DecodeError
from shardproxy.rows import StudyRow, TrialRow

# -- the two implementations ------------------------------------------------------

NO_EXTENSIONS = os.environ.get("SHARDPROXY_NO_EXTENSIONS", "") not in ("", "0")
IN_CI = bool(os.environ.get("CI"))
IMPLEMENTATIONS = ("py", "c")


def compiled_codec() -> ModuleType:
    """`shardproxy._codec`: skipped when unwanted or missing, but a missing one fails CI."""
    if NO_EXTENSIONS:
        pytest.skip("SHARDPROXY_NO_EXTENSIONS is set")
    try:
        from shardproxy import _codec
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the compiled codec must be built in CI: {exc}")
        pytest.skip(f"the compiled codec is not built: {exc}")
    return _codec


def implementation(name: str) -> ModuleType:
    return _codec_py if name == "py" else compiled_codec()


def available_implementations() -> list[ModuleType]:
    """The pure codec, and the compiled one unless it is switched off (CI: it must exist)."""
    if NO_EXTENSIONS:
        return [_codec_py]
    return [_codec_py, compiled_codec()]


# -- a protobuf writer ------------------------------------------------------------

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def varint(value: int, padding: int = 0) -> bytes:
    """A varint of `value` (negative: two's complement in 64 bits), `padding` bytes longer."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    if padding:
        out[-1] |= 0x80
        out += b"\x80" * (padding - 1) + b"\x00"
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def varint_field(field: int, value: int, padding: int = 0) -> bytes:
    return tag(field, VARINT) + varint(value, padding)


def double_field(field: int, value: float) -> bytes:
    return tag(field, FIXED64) + struct.pack("<d", value)


def bytes_field(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    return bytes_field(field, text.encode())


# -- what each message holds ------------------------------------------------------

INT64, ENUM, BOOL, DOUBLE, STRING = "int64", "enum", "bool", "double", "string"
ENUMS, INT64S, DOUBLES = "repeated enum", "repeated int64", "repeated double"
TRIAL = "Trial"
STRING_DOUBLE_MAP, STRING_STRING_MAP, INT64_DOUBLE_MAP = "map<s,d>", "map<s,s>", "map<i,d>"
LENGTH_KINDS = (STRING, TRIAL, STRING_DOUBLE_MAP, STRING_STRING_MAP, INT64_DOUBLE_MAP)
# The wire types protobuf accepts for each kind of field.
WIRE_TYPES = {
    INT64: (VARINT,),
    ENUM: (VARINT,),
    BOOL: (VARINT,),
    DOUBLE: (FIXED64,),
    STRING: (LENGTH,),
    ENUMS: (VARINT, LENGTH),
    INT64S: (VARINT, LENGTH),
    DOUBLES: (FIXED64, LENGTH),
    TRIAL: (LENGTH,),
    STRING_DOUBLE_MAP: (LENGTH,),
    STRING_STRING_MAP: (LENGTH,),
    INT64_DOUBLE_MAP: (LENGTH,),
}
Schema = dict[int, str]
TRIAL_SCHEMA: Schema = {
    1: INT64, 2: INT64, 3: ENUM, 4: DOUBLES, 5: STRING, 6: STRING,
    7: STRING_DOUBLE_MAP, 8: STRING_STRING_MAP, 9: STRING_STRING_MAP,
    10: STRING_STRING_MAP, 11: INT64_DOUBLE_MAP,
}  # fmt: skip
ENTRY_SCHEMAS: dict[str, Schema] = {
    STRING_DOUBLE_MAP: {1: STRING, 2: DOUBLE},
    STRING_STRING_MAP: {1: STRING, 2: STRING},
    INT64_DOUBLE_MAP: {1: INT64, 2: DOUBLE},
}


def trial_row_of(trial: Any) -> TrialRow:
    """What decode_trial returns for a parsed api_pb2.Trial (map order aside)."""
    if set(trial.params) != set(trial.distributions):
        raise DecodeError("params and distributions name different keys")
    return TrialRow(
        trial.trial_id,
        trial.number,
        trial.state,
        list(trial.values),
        trial.datetime_start,
        trial.datetime_complete,
        [(name, value, trial.distributions[name]) for name, value in trial.params.items()],
        list(trial.user_attributes.items()),
        list(trial.system_attributes.items()),
        list(trial.intermediate_values.items()),
    )


def _template_of(request: Any) -> tuple[int, TrialRow | None]:
    template = None if request.template_trial_is_none else trial_row_of(request.template_trial)
    return request.study_id, template


@dataclass(frozen=True)
class Decoder:
    """One decode_* function, the api_pb2 message it reads, and what it must return."""

    function: str
    message: type[Message]
    schema: Schema
    expected: Callable[[Any], object]

    def __str__(self) -> str:
        return self.function

    def decode(self, codec: ModuleType, data: bytes) -> object:
        return getattr(codec, self.function)(data)


pb: Any = api_pb2
DECODERS = (
    Decoder("decode_create_new_study_request", pb.CreateNewStudyRequest, {1: ENUMS, 2: STRING},
            lambda m: (list(m.directions), m.study_name)),
    Decoder("decode_id_request", pb.DeleteStudyRequest, {1: INT64}, lambda m: m.study_id),
    Decoder("decode_attr_request", pb.SetTrialUserAttributeRequest,
            {1: INT64, 2: STRING, 3: STRING}, lambda m: (m.trial_id, m.key, m.value)),
    Decoder("decode_name_request", pb.GetStudyIdFromNameRequest, {1: STRING},
            lambda m: m.study_name),
    Decoder("decode_empty_request", pb.GetAllStudiesRequest, {}, lambda m: None),
    Decoder("decode_create_new_trial_request", pb.CreateNewTrialRequest,
            {1: INT64, 2: TRIAL, 3: BOOL}, _template_of),
    Decoder("decode_set_trial_param_request", pb.SetTrialParameterRequest,
            {1: INT64, 2: STRING, 3: DOUBLE, 4: STRING},
            lambda m: (m.trial_id, m.param_name, m.param_value_internal, m.distribution)),
    Decoder("decode_trial_number_request", pb.GetTrialIdFromStudyIdTrialNumberRequest,
            {1: INT64, 2: INT64}, lambda m: (m.study_id, m.trial_number)),
    Decoder("decode_set_trial_state_values_request", pb.SetTrialStateValuesRequest,
            {1: INT64, 2: ENUM, 3: DOUBLES}, lambda m: (m.trial_id, m.state, list(m.values))),
    Decoder("decode_set_trial_intermediate_value_request", pb.SetTrialIntermediateValueRequest,
            {1: INT64, 2: INT64, 3: DOUBLE},
            lambda m: (m.trial_id, m.step, m.intermediate_value)),
    Decoder("decode_get_trials_request", pb.GetTrialsRequest, {1: INT64, 2: INT64S, 3: INT64},
            lambda m: (m.study_id, list(m.included_trial_ids), m.trial_id_greater_than)),
    Decoder("decode_trial", pb.Trial, TRIAL_SCHEMA, trial_row_of),
)  # fmt: skip


# -- outcomes and how to compare them ---------------------------------------------


def outcome(decoder: Decoder, codec: ModuleType, data: bytes) -> tuple[str, object]:
    """("ok", value) or ("error", message); any other exception propagates."""
    try:
        return "ok", decoder.decode(codec, data)
    except DecodeError as exc:
        return "error", str(exc)


def protobuf_outcome(decoder: Decoder, data: bytes) -> tuple[str, object]:
    """What Optuna's classes make of `data`, in the shape our decoder returns."""
    try:
        message = decoder.message.FromString(data)
    except ProtobufDecodeError as exc:
        return "error", str(exc)
    try:
        return "ok", decoder.expected(message)
    except DecodeError as exc:
        return "error", str(exc)


def exact_form(value: object) -> object:
    """`value` with every type and float bit pattern spelled out: twins must match it."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [exact_form(item) for item in value])
    return (type(value).__name__, value)


def loose_form(value: object) -> object:
    """`value` with map-born lists sorted and any NaN equal to any NaN, for api_pb2."""
    if isinstance(value, float):
        return "nan" if value != value else ("float", struct.pack("<d", value))
    if isinstance(value, TrialRow):
        value = value._replace(
            params=sorted(value.params, key=lambda p: p[0]),
            user_attrs=sorted(value.user_attrs),
            system_attrs=sorted(value.system_attrs),
            intermediate_values=sorted(value.intermediate_values, key=lambda p: p[0]),
        )
    if isinstance(value, (list, tuple)):
        return [loose_form(item) for item in value]
    return value


# -- hypothesis strategies for row values ------------------------------------------

int64s = st.integers(-(2**63), 2**63 - 1)
enums = st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
doubles = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=24)
attr_maps = st.dictionaries(texts, texts, max_size=6)


@st.composite
def trial_rows(draw: st.DrawFn, max_params: int = 12) -> TrialRow:
    params = draw(st.dictionaries(texts, st.tuples(doubles, texts), max_size=max_params))
    steps = draw(st.dictionaries(int64s, doubles, max_size=12))
    return TrialRow(
        trial_id=draw(int64s),
        number=draw(int64s),
        state=draw(enums),
        values=draw(st.lists(doubles, max_size=4)),
        datetime_start=draw(texts),
        datetime_complete=draw(texts),
        params=[(name, value, text) for name, (value, text) in params.items()],
        user_attrs=list(draw(attr_maps).items()),
        system_attrs=list(draw(attr_maps).items()),
        intermediate_values=list(steps.items()),
    )


study_rows = st.builds(
    StudyRow,
    study_id=int64s,
    study_name=texts,
    directions=st.lists(enums, max_size=4),
    user_attrs=attr_maps,
    system_attrs=attr_maps,
)


def to_proto_trial(row: TrialRow) -> Any:
    return pb.Trial(
        trial_id=row.trial_id,
        number=row.number,
        state=row.state,
        values=row.values,
        datetime_start=row.datetime_start,
        datetime_complete=row.datetime_complete,
        params={name: value for name, value, _ in row.params},
        distributions={name: text for name, _, text in row.params},
        user_attributes=dict(row.user_attrs),
        system_attributes=dict(row.system_attrs),
        intermediate_values=dict(row.intermediate_values),
    )


# -- random valid messages --------------------------------------------------------

INT64_SAMPLES = (0, 1, -1, 2, 127, 128, 300, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63))
DOUBLE_SAMPLES = (0.0, -0.0, 1.0, -2.5, 1e308, 5e-324, float("inf"), float("-inf"), float("nan"))
TEXT_SAMPLES = ("", "x", "lr", "ü", "日本語", "😀", "\x00", "a b", '{"a": [1, 2.5]}', "é" * 70)
KEY_SAMPLES = ("x", "y", "lr", "ü", "", "😀", "n_layers")
UNKNOWN_FIELDS = (12, 13, 15, 16, 99, 2**29 - 1)


def random_int64(rng: random.Random) -> int:
    if rng.random() < 0.6:
        return rng.choice(INT64_SAMPLES)
    return rng.getrandbits(64) - 2**63 if rng.random() < 0.5 else rng.randrange(1000)


def random_varint(rng: random.Random, value: int) -> bytes:
    """`value` as a varint, sometimes padded to a longer (still valid) encoding."""
    size = len(varint(value))
    padding = rng.randrange(10 - size + 1) if size < 10 and rng.random() < 0.1 else 0
    return varint(value, padding)


def random_enum(rng: random.Random) -> int:
    """A raw varint for an enum field: an int32, sign-extended, or any 64-bit value."""
    roll = rng.random()
    if roll < 0.7:
        return rng.randrange(5)
    if roll < 0.9:
        return rng.randrange(-(2**31), 2**31)
    return rng.getrandbits(64)


def random_double(rng: random.Random) -> float:
    if rng.random() < 0.6:
        return rng.choice(DOUBLE_SAMPLES)
    return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]


def random_text(rng: random.Random, samples: tuple[str, ...] = TEXT_SAMPLES) -> str:
    if rng.random() < 0.8:
        return rng.choice(samples)
    return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD800),
                                   rng.randrange(0x10000, 0x110000))))
                   for _ in range(rng.randrange(1, 8)))  # fmt: skip


def random_field(rng: random.Random, field: int, kind: str, depth: int) -> bytes:
    """One valid occurrence of a known field."""
    if kind in (INT64, INT64S) and (kind == INT64 or rng.random() < 0.4):
        return tag(field, VARINT) + random_varint(rng, random_int64(rng))
    if kind in (ENUM, ENUMS) and (kind == ENUM or rng.random() < 0.4):
        return tag(field, VARINT) + random_varint(rng, random_enum(rng))
    if kind == BOOL:
        return tag(field, VARINT) + random_varint(rng, rng.choice((0, 1, 1, 2, 2**40)))
    if kind in (DOUBLE, DOUBLES) and (kind == DOUBLE or rng.random() < 0.4):
        return double_field(field, random_double(rng))
    if kind == INT64S:
        return bytes_field(field, b"".join(random_varint(rng, random_int64(rng))
                                           for _ in range(rng.randrange(6))))  # fmt: skip
    if kind == ENUMS:
        return bytes_field(field, b"".join(random_varint(rng, random_enum(rng))
                                           for _ in range(rng.randrange(4))))  # fmt: skip
    if kind == DOUBLES:
        count = rng.randrange(5)
        return bytes_field(field, struct.pack(f"<{count}d", *(random_double(rng)
                                                              for _ in range(count))))  # fmt: skip
    if kind == STRING:
        return string_field(field, random_text(rng))
    if kind == TRIAL:
        return bytes_field(field, random_trial(rng, depth + 1))
    return bytes_field(field, random_entry(rng, kind, depth + 1))


def random_entry(rng: random.Random, kind: str, depth: int, key: str | int | None = None) -> bytes:
    """A map entry; `key` when given, else random; a default key or the value may be left out."""
    schema = ENTRY_SCHEMAS[kind]
    if key is None:
        key = random_text(rng, KEY_SAMPLES) if schema[1] == STRING else random_int64(rng)
    pieces = []
    if key not in ("", 0) or rng.random() < 0.5:
        pieces.append(string_field(1, key) if isinstance(key, str) else varint_field(1, key))
    if rng.random() < 0.9:
        pieces.append(random_field(rng, 2, schema[2], depth))
    if rng.random() < 0.03:  # protobuf drops such an entry
        pieces.insert(rng.randrange(len(pieces) + 1), random_unknown(rng, depth))
    if rng.random() < 0.2:
        rng.shuffle(pieces)
    return b"".join(pieces)


def random_trial(rng: random.Random, depth: int = 0) -> bytes:
    """A Trial whose params and distributions mostly name the same keys."""
    names = rng.sample(KEY_SAMPLES, rng.randrange(4))
    pieces = [bytes_field(7, random_entry(rng, STRING_DOUBLE_MAP, depth + 1, name))
              for name in names]  # fmt: skip
    pieces += [bytes_field(8, random_entry(rng, STRING_STRING_MAP, depth + 1, name))
               for name in names]  # fmt: skip
    if rng.random() < 0.05:  # a param without a distribution, or the other way round
        field = rng.choice((7, 8))
        pieces.append(random_field(rng, field, TRIAL_SCHEMA[field], depth))
    other = {field: kind for field, kind in TRIAL_SCHEMA.items() if field not in (7, 8)}
    pieces += random_fields(rng, other, depth)
    rng.shuffle(pieces)
    return b"".join(pieces)


def random_unknown(rng: random.Random, depth: int) -> bytes:
    field = rng.choice(UNKNOWN_FIELDS)
    wire_type = rng.choice((VARINT, FIXED64, LENGTH, FIXED32, START_GROUP))
    if wire_type == VARINT:
        return tag(field, VARINT) + random_varint(rng, random_int64(rng))
    if wire_type == FIXED64:
        return tag(field, FIXED64) + rng.randbytes(8)
    if wire_type == FIXED32:
        return tag(field, FIXED32) + rng.randbytes(4)
    if wire_type == LENGTH:
        return bytes_field(field, rng.randbytes(rng.randrange(6)))
    inner = b"".join(random_unknown(rng, depth + 1) for _ in range(rng.randrange(3) if depth < 5
                                                                   else 0))  # fmt: skip
    return tag(field, START_GROUP) + inner + tag(field, END_GROUP)


def random_fields(rng: random.Random, schema: Schema, depth: int) -> list[bytes]:
    pieces = []
    for field, kind in schema.items():
        for _ in range(rng.choice((0, 0, 1, 1, 1, 2))):
            pieces.append(random_field(rng, field, kind, depth))
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        pieces.append(random_unknown(rng, depth))
    return pieces


def random_message(rng: random.Random, decoder: Decoder) -> bytes:
    """A valid, rarely canonical, encoding of the decoder's message."""
    if decoder.message is pb.Trial:
        return random_trial(rng)
    pieces = random_fields(rng, decoder.schema, 0)
    rng.shuffle(pieces)
    return b"".join(pieces)
