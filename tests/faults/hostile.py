"""Hostile requests for every RPC: valid messages about real rows, then damaged.

A valid message is built with Optuna's own `api_pb2` classes and names rows that
exist (a study with trials, a running, a waiting and a finished trial), so that a
damaged copy that still decodes reaches the service, the store and the database
rather than stopping at "not found". Each `Mutation` damages one message in one
way; `hostile_request` draws a method, a valid message and a mutation from a
seeded `random.Random`, so a failing run can be repeated.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy.wire import END_GROUP, FIXED32, FIXED64, LENGTH, METHODS, START_GROUP, VARINT
from tests.codec_strategies import bytes_field, tag, varint

pb: Any = api_pb2

READS = tuple(name for name in METHODS if name.startswith("Get"))
WRITES = tuple(name for name in METHODS if not name.startswith("Get"))

MEGABYTE = 1 << 20


@dataclass(frozen=True)
class Targets:
    """Rows that exist when a batch is sent: what valid messages name."""

    study_id: int
    study_name: str
    trial_number: int
    running_trial_id: int
    waiting_trial_id: int
    finished_trial_id: int
    victim_study_id: int  # a study DeleteStudy may take


DISTRIBUTIONS = (
    distribution_to_json(FloatDistribution(0.0, 1.0)),
    distribution_to_json(FloatDistribution(1e-5, 1.0, log=True)),
    distribution_to_json(IntDistribution(0, 10)),
    distribution_to_json(CategoricalDistribution(["a", "b", None, 1.5])),
)
# The params the base studies already have, with their distributions: a valid
# SetTrialParameter must agree with them.
PARAM_DISTRIBUTIONS = {"x": DISTRIBUTIONS[0], "n": DISTRIBUTIONS[2], "c": DISTRIBUTIONS[3]}
JSON_VALUES = ("1", "null", '"text"', "[1, 2.5, null]", '{"a": {"b": [true]}}', "NaN",
               "-Infinity", "1e308", "123456789012345678901234567890")


def _attribute_value(rng: random.Random) -> str:
    return rng.choice(JSON_VALUES)


def _template(rng: random.Random, targets: Targets) -> Any:
    trial = pb.Trial(
        state=rng.choice([pb.RUNNING, pb.COMPLETE, pb.PRUNED, pb.FAIL, pb.WAITING]),
        datetime_start="2024-02-29 12:34:56.789012",
    )
    if trial.state in (pb.COMPLETE, pb.PRUNED, pb.FAIL):
        trial.datetime_complete = "2024-02-29 12:35:00.000000"
    if trial.state == pb.COMPLETE:
        trial.values.extend([rng.choice([0.5, -1e300, math.inf])])
    name = rng.choice(sorted(PARAM_DISTRIBUTIONS))
    trial.params[name] = {"x": 0.25, "n": 3.0, "c": 1.0}[name]
    trial.distributions[name] = PARAM_DISTRIBUTIONS[name]
    trial.user_attributes["u"] = _attribute_value(rng)
    trial.system_attributes["s"] = _attribute_value(rng)
    trial.intermediate_values[rng.randrange(5)] = rng.choice([0.1, math.nan, -math.inf])
    return trial


def valid_message(
    method: str, rng: random.Random, targets: Targets, deep: bool = False
) -> Message:
    """A valid request of `method` about `targets` (not always one that succeeds).

    `deep`: the variant that goes furthest when it is served: a trial write goes to
    the running trial (and a param to one the study has), a new trial carries a
    template, a new study gets a name nobody has.
    """
    trial_id = rng.choice([targets.running_trial_id] * 3
                          + [targets.waiting_trial_id, targets.finished_trial_id])
    if deep:
        trial_id = targets.running_trial_id
    key = rng.choice(["k", "key with spaces", "ключ", "k" * 100])
    if method == "CreateNewStudy":
        return pb.CreateNewStudyRequest(
            directions=rng.choice([[0], [1], [0, 1]]),
            study_name=rng.choice(
                [f"s-{rng.getrandbits(40):x}"] + ([] if deep else [targets.study_name])
            ),
        )
    if method == "DeleteStudy":
        return pb.DeleteStudyRequest(study_id=targets.victim_study_id)
    if method in ("SetStudyUserAttribute", "SetStudySystemAttribute"):
        message = getattr(pb, f"{method}Request")
        return message(study_id=targets.study_id, key=key, value=_attribute_value(rng))
    if method == "GetStudyIdFromName":
        return pb.GetStudyIdFromNameRequest(study_name=targets.study_name)
    if method in ("GetStudyNameFromId", "GetStudyDirections", "GetStudyUserAttributes",
                  "GetStudySystemAttributes"):
        return getattr(pb, f"{method}Request")(study_id=targets.study_id)
    if method == "GetAllStudies":
        return pb.GetAllStudiesRequest()
    if method == "CreateNewTrial":
        if rng.random() < 0.5 and not deep:
            return pb.CreateNewTrialRequest(study_id=targets.study_id, template_trial_is_none=True)
        return pb.CreateNewTrialRequest(
            study_id=targets.study_id, template_trial=_template(rng, targets)
        )
    if method == "SetTrialParameter":
        name = "x" if deep else rng.choice(sorted(PARAM_DISTRIBUTIONS) + ["fresh"])
        return pb.SetTrialParameterRequest(
            trial_id=trial_id, param_name=name, param_value_internal=rng.choice([0.5, 1.0, 2.0]),
            distribution=PARAM_DISTRIBUTIONS.get(name, rng.choice(DISTRIBUTIONS)),
        )
    if method == "GetTrialIdFromStudyIdTrialNumber":
        return pb.GetTrialIdFromStudyIdTrialNumberRequest(
            study_id=targets.study_id, trial_number=targets.trial_number
        )
    if method == "SetTrialStateValues":
        state = rng.choice([pb.COMPLETE, pb.PRUNED, pb.FAIL, pb.RUNNING, pb.WAITING])
        state = pb.COMPLETE if deep else state
        values = [rng.choice([1.0, -2.5, math.inf])] if state == pb.COMPLETE else []
        return pb.SetTrialStateValuesRequest(trial_id=trial_id, state=state, values=values)
    if method == "SetTrialIntermediateValue":
        return pb.SetTrialIntermediateValueRequest(
            trial_id=trial_id, step=rng.randrange(10), intermediate_value=rng.random()
        )
    if method in ("SetTrialUserAttribute", "SetTrialSystemAttribute"):
        message = getattr(pb, f"{method}Request")
        return message(trial_id=trial_id, key=key, value=_attribute_value(rng))
    if method == "GetTrial":
        return pb.GetTrialRequest(trial_id=trial_id)
    if method == "GetTrials":
        return pb.GetTrialsRequest(
            study_id=targets.study_id,
            included_trial_ids=rng.choice([[], [trial_id], [trial_id, targets.finished_trial_id]]),
            trial_id_greater_than=rng.choice([0, targets.finished_trial_id]),
        )
    raise AssertionError(method)


# -- the wire, field by field ---------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


@dataclass(frozen=True)
class Field:
    """One field of a well-formed message: its number, wire type and byte spans."""

    number: int
    wire_type: int
    start: int  # its tag
    payload: int  # after the tag (and after the length, for LENGTH fields)
    end: int


def fields_of(data: bytes) -> list[Field]:
    """The top-level fields of a well-formed message (no groups: Optuna sends none)."""
    fields = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            _, end = _read_varint(data, pos)
        elif wire_type == FIXED64:
            end = pos + 8
        elif wire_type == FIXED32:
            end = pos + 4
        elif wire_type == LENGTH:
            length, pos = _read_varint(data, pos)
            end = pos + length
        else:
            raise ValueError(f"wire type {wire_type}")
        fields.append(Field(number, wire_type, start, pos, end))
        pos = end
    return fields


def _nested(data: bytes) -> list[Field]:
    """The LENGTH fields of `data` whose payload parses as a message of its own."""
    nested = []
    for field in fields_of(data):
        if field.wire_type != LENGTH or field.end == field.payload:
            continue
        try:
            inner = fields_of(data[field.payload:field.end])
        except (ValueError, IndexError):
            continue
        if inner:
            nested.append(field)
    return nested


ByteMutation = Callable[[random.Random, bytes], bytes]


def at_some_depth(mutation: ByteMutation) -> ByteMutation:
    """`mutation` applied to the message or, half the time, inside one of its submessages
    (a template trial, a map entry), whose length is then written again to fit."""

    def mutate(rng: random.Random, data: bytes) -> bytes:
        nested = _nested(data) if rng.random() < 0.5 else []
        if not nested:
            return mutation(rng, data)
        field = rng.choice(nested)
        inner = mutate(rng, data[field.payload:field.end])
        return data[:field.start] + bytes_field(field.number, inner) + data[field.end:]

    return mutate


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice([1, 2, 3, 5, 8, 16, 40, 200]))


def flipped_bits(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return random_bytes(rng, data)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncated(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 2:
        return data + b"\x08"  # a tag without its value
    return data[: rng.randrange(1, len(data))]


def overrun_length(rng: random.Random, data: bytes) -> bytes:
    """A length prefix that runs past the end of its message."""
    lengths = [f for f in fields_of(data) if f.wire_type == LENGTH]
    if not lengths:
        return data + bytes_field(1, b"")[:-1] + varint(rng.choice([1, 1 << 31]))
    field = rng.choice(lengths)
    length = field.end - field.payload + rng.choice([1, 7, 1 << 20, (1 << 32) - 1, 1 << 35])
    return data[:field.start] + tag(field.number, LENGTH) + varint(length) + data[field.payload:]


def wrong_wire_type(rng: random.Random, data: bytes) -> bytes:
    """A field's tag says another wire type than the field has; the payload stays."""
    fields = fields_of(data)
    if not fields:
        return tag(1, rng.choice([FIXED64, LENGTH, FIXED32])) + b"\x00" * 8
    field = rng.choice(fields)
    other = rng.choice([t for t in (VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32)
                        if t != field.wire_type])
    body_start = field.start + len(tag(field.number, field.wire_type))
    return data[:field.start] + tag(field.number, other) + data[body_start:]


def _unknown_field(rng: random.Random) -> bytes:
    number = rng.choice([5, 12, 15, 99, 1000, (1 << 29) - 1])
    kind = rng.randrange(6)
    if kind == 0:
        return tag(number, VARINT) + varint(rng.getrandbits(64))
    if kind == 1:
        return tag(number, FIXED64) + rng.randbytes(8)
    if kind == 2:
        return tag(number, FIXED32) + rng.randbytes(4)
    if kind == 3:
        return bytes_field(number, rng.randbytes(rng.randrange(30)))
    if kind == 4:  # a group holding a field of its own
        return tag(number, START_GROUP) + tag(1, VARINT) + b"\x01" + tag(number, END_GROUP)
    depth = rng.choice([2, 50, 150])  # nested groups, too deep past 100
    return tag(number, START_GROUP) * depth + tag(number, END_GROUP) * depth


def unknown_fields(rng: random.Random, data: bytes) -> bytes:
    """Fields the message does not declare, inserted between its fields."""
    bounds = [0, *(f.end for f in fields_of(data))]
    out = data
    for _ in range(rng.randint(1, 3)):
        at = rng.choice(bounds)
        out = out[:at] + _unknown_field(rng) + out[at:]
        bounds = [0]  # later insertions at the front: the bounds moved
    return out


def repeated_fields(rng: random.Random, data: bytes) -> bytes:
    """A field sent again (last one wins, lists and maps merge), or the whole message twice."""
    fields = fields_of(data)
    if not fields or rng.random() < 0.3:
        return data + data
    field = rng.choice(fields)
    copy = data[field.start:field.end]
    if field.wire_type == VARINT:  # the copy with another value
        copy = tag(field.number, VARINT) + varint(rng.choice([0, 1, 2, 7, -1, 1 << 40]))
    return data + copy if rng.random() < 0.5 else copy + data


BAD_UTF8 = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80")


def invalid_utf8(rng: random.Random, data: bytes) -> bytes:
    """Bytes that are not UTF-8 inside a string field (or any LENGTH field)."""
    lengths = [f for f in fields_of(data) if f.wire_type == LENGTH]
    if not lengths:
        return data + bytes_field(2, rng.choice(BAD_UTF8))
    field = rng.choice(lengths)
    payload = bytearray(data[field.payload:field.end])
    at = rng.randrange(len(payload) + 1)
    payload[at:at] = rng.choice(BAD_UTF8)
    return data[:field.start] + bytes_field(field.number, bytes(payload)) + data[field.end:]


# -- values a valid message may carry, but should not -----------------------------------

IDS = (-1, -(1 << 63), (1 << 63) - 1, (1 << 31) - 1, 1 << 31, 1 << 32, -(1 << 31))
ENUMS = (-1, 5, 7, 100, (1 << 31) - 1, -(1 << 31))
DOUBLES = (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308,
           struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0])  # a signalling NaN
BROKEN_JSON = ("", "{", "[1,", "nul", "'single'", "{a: 1}", "1 2", "\x00", "[" * 100_000,
               '{"a": "\\ud800"}', "Infinityx", "0x10")
BROKEN_DISTRIBUTIONS = (
    '{"name": "Nope", "attributes": {}}',
    '{"name": "FloatDistribution", "attributes": {"low": 1, "high": 0}}',
    '{"name": "FloatDistribution", "attributes": {"low": "a", "high": 1}}',
    '{"name": "IntDistribution", "attributes": {"low": 0, "high": 10, "step": 0}}',
    '{"name": "CategoricalDistribution", "attributes": {"choices": []}}',
    '{"name": "CategoricalDistribution", "attributes": {"choices": 5}}',
    '{"attributes": {}}',
    "[]",
    "null",
    distribution_to_json(FloatDistribution(0.0, 2.0)),  # valid, but not what the study has
    distribution_to_json(CategoricalDistribution(["z"])),
)
STRINGS = ("", " ", "\x00", "a\x00b", "k" * 513, "ü" * 300, "😀" * 200, "\u202e", "%s%n",
           "'; DROP TABLE trials; --", "2024-02-30 00:00:00.000000")
DATETIMES = ("", "yesterday", "2024-02-30 00:00:00.000000", "9999-12-31 23:59:59.999999",
             "0001-01-01 00:00:00.000000", "2024-01-01 00:00:00", "2024-01-01T00:00:00.000000",
             "1970-01-01 00:00:00.000000")
Setter = Callable[[Message], None]


def _values_for(field: FieldDescriptor, map_name: str = "") -> tuple[Any, ...]:
    """The bad values a field of this kind and name gets."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return ENUMS
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return DOUBLES
    if field.type == FieldDescriptor.TYPE_BOOL:
        return ()  # both values are valid
    if field.type != FieldDescriptor.TYPE_STRING:
        return IDS
    name = map_name or field.name
    if name in ("distribution", "distributions"):
        return BROKEN_DISTRIBUTIONS + BROKEN_JSON
    if name in ("value", "user_attributes", "system_attributes"):
        return BROKEN_JSON
    if name.startswith("datetime"):
        return DATETIMES
    return STRINGS


def _at(path: tuple[str, ...], change: Callable[[Any], None]) -> Setter:
    """A setter that applies `change` to the submessage at `path` of a request."""

    def apply(message: Message) -> None:
        target: Any = message
        for name in path:
            target = getattr(target, name)
        change(target)

    return apply


def _map_cases(path: tuple[str, ...], field: FieldDescriptor) -> list[tuple[str, Setter]]:
    key_field, value_field = field.message_type.fields
    name = field.name
    cases: list[tuple[str, Setter]] = []

    new_key = "bad" if key_field.type == FieldDescriptor.TYPE_STRING else 7

    def every_key(value: Any) -> Callable[[Any], None]:
        def change(target: Any) -> None:
            entries = getattr(target, name)
            for key in list(entries) or [new_key]:
                entries[key] = value
        return change

    def one_key(key: Any) -> Callable[[Any], None]:
        def change(target: Any) -> None:
            entries = getattr(target, name)
            entries[key] = next(iter(entries.values()), _values_for(value_field, name)[0])
        return change

    for value in _values_for(value_field, name):
        cases.append((f"{name}[*]={value!r:.40}", _at(path, every_key(value))))
    keys = IDS if key_field.type != FieldDescriptor.TYPE_STRING else STRINGS
    for key in keys:
        cases.append((f"{name}[{key!r:.40}]", _at(path, one_key(key))))
    # Emptied: a param left without its distribution, or a distribution without its param.
    cases.append((f"{name} emptied", _at(path, lambda target: getattr(target, name).clear())))
    return cases


def _set(name: str, value: Any) -> Callable[[Any], None]:
    return lambda target: setattr(target, name, value)


def _set_list(name: str, values: list[Any]) -> Callable[[Any], None]:
    def change(target: Any) -> None:
        entries = getattr(target, name)
        del entries[:]
        entries.extend(values)
    return change


def value_cases(descriptor: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Setter]]:
    """Every (label, setter) that puts one bad value into one field of a message, or of
    the trial and maps it carries: ids out of range, enums past their last value, NaN
    and infinities, broken JSON and distributions, strings the schema cannot hold,
    datetimes that do not exist, params without distributions."""
    cases: list[tuple[str, Setter]] = []
    for field in descriptor.fields:
        label = ".".join((*path, field.name))
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            cases += [(f"{'.'.join(path)}.{text}".lstrip("."), setter)
                      for text, setter in _map_cases(path, field)]
        elif field.message_type is not None:
            cases += value_cases(field.message_type, (*path, field.name))
        elif field.is_repeated:
            values = _values_for(field)
            cases += [(f"{label}=[{v!r:.40}]", _at(path, _set_list(field.name, [v])))
                      for v in values]
            cases.append((f"{label}=1000 values",
                          _at(path, _set_list(field.name, [values[1]] * 1000))))
        else:
            cases += [(f"{label}={v!r:.40}", _at(path, _set(field.name, v)))
                      for v in _values_for(field)]
    return cases


_CASES: dict[str, list[tuple[str, Setter]]] = {}


def cases_of(message: Message) -> list[tuple[str, Setter]]:
    name = message.DESCRIPTOR.full_name
    if name not in _CASES:
        _CASES[name] = value_cases(message.DESCRIPTOR)
    return _CASES[name]


def bad_values(rng: random.Random, message: Message) -> None:
    """One field of `message` (or of its template trial) gets a value it should not hold."""
    cases = cases_of(message)
    if cases:
        rng.choice(cases)[1](message)


def megabyte_strings(rng: random.Random, message: Message) -> None:
    """One string field becomes a megabyte long: valid JSON where JSON is expected."""
    strings = [f for f in message.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING]
    maps = [f for f in message.DESCRIPTOR.fields
            if f.message_type is not None and f.message_type.GetOptions().map_entry
            and f.message_type.fields[1].type == FieldDescriptor.TYPE_STRING]
    if "template_trial" in message.DESCRIPTOR.fields_by_name and rng.random() < 0.5:
        message.template_trial_is_none = False
        message.template_trial.user_attributes["big"] = json.dumps("x" * MEGABYTE)
        return
    if not strings and not maps:
        return
    field = rng.choice(strings + maps)
    big = rng.choice([json.dumps("x" * MEGABYTE), "y" * MEGABYTE, "ü" * (MEGABYTE // 2)])
    if field in maps:
        getattr(message, field.name)["big"] = big
    else:
        setattr(message, field.name, big)


MessageMutation = Callable[[random.Random, Message], None]


@dataclass(frozen=True)
class Mutation:
    """One way to damage a message: on its bytes, or on its values before encoding."""

    name: str
    on_bytes: ByteMutation | None = None
    on_message: MessageMutation | None = None

    def apply(self, rng: random.Random, message: Message) -> bytes:
        if self.on_message is not None:
            self.on_message(rng, message)
        data = message.SerializeToString()
        return data if self.on_bytes is None else self.on_bytes(rng, data)


MUTATIONS = (
    Mutation("random-bytes", on_bytes=random_bytes),
    Mutation("flipped-bits", on_bytes=at_some_depth(flipped_bits)),
    Mutation("truncated", on_bytes=at_some_depth(truncated)),
    Mutation("overrun-length", on_bytes=at_some_depth(overrun_length)),
    Mutation("wrong-wire-type", on_bytes=at_some_depth(wrong_wire_type)),
    Mutation("unknown-fields", on_bytes=at_some_depth(unknown_fields)),
    Mutation("repeated-fields", on_bytes=at_some_depth(repeated_fields)),
    Mutation("invalid-utf8", on_bytes=at_some_depth(invalid_utf8)),
    Mutation("bad-values", on_message=bad_values),
)
# Sent in small numbers (they cost the database a megabyte each when accepted).
MEGABYTE_STRINGS = Mutation("megabyte-strings", on_message=megabyte_strings)


def hostile_request(
    methods: tuple[str, ...], mutation: Mutation, rng: random.Random, targets: Targets
) -> tuple[str, bytes]:
    """(method, request bytes): a valid message of one of `methods`, damaged by `mutation`."""
    method = rng.choice(methods)
    return method, mutation.apply(rng, valid_message(method, rng, targets))
