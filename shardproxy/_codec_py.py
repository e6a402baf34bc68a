"""The pure-Python wire codec: the twin of the compiled `shardproxy._codec`.

It reads the few fields a handler needs straight from request bytes and writes
reply bytes from row values, with no generated protobuf classes; every field
number and tag is named in shardproxy.wire. Both modules
behave the same, down to the error messages; the tests hold them to it and to
Optuna's own `api_pb2` classes.

Decoding follows proto3 as Python protobuf (upb) parses it: last scalar wins,
repeated scalars packed or not, map entries last key wins with missing key or
value defaulted (and an entry carrying an unknown field dropped), a repeated
submessage merged, unknown fields (groups included) skipped, nesting limited to
100 levels. Deliberately stricter than protobuf: a known field sent with the wrong
wire type is a DecodeError here (protobuf keeps it as an unknown field and reports
the field unset), and so is field number 0 inside a group or in a message without
fields (which protobuf ignores there, and refuses everywhere else).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeAlias

from shardproxy.rows import StudyRow, TrialRow
from shardproxy.wire import (
    ALL_STUDIES_REPLY_STUDIES_TAG,
    ATTR_REQUEST_KEY,
    ATTR_REQUEST_OWNER_ID,
    ATTR_REQUEST_VALUE,
    ATTRS_REPLY_ATTRS_TAG,
    CREATE_STUDY_REQUEST_DIRECTIONS,
    CREATE_STUDY_REQUEST_STUDY_NAME,
    CREATE_TRIAL_REQUEST_STUDY_ID,
    CREATE_TRIAL_REQUEST_TEMPLATE,
    CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE,
    DIRECTIONS_REPLY_DIRECTIONS_TAG,
    END_GROUP,
    FIXED32,
    FIXED64,
    GET_TRIALS_REQUEST_ID_GREATER_THAN,
    GET_TRIALS_REQUEST_INCLUDED_IDS,
    GET_TRIALS_REQUEST_STUDY_ID,
    ID_REPLY_ID_TAG,
    ID_REQUEST_ID,
    INTERMEDIATE_REQUEST_STEP,
    INTERMEDIATE_REQUEST_TRIAL_ID,
    INTERMEDIATE_REQUEST_VALUE,
    LENGTH,
    MAP_DOUBLE_VALUE,
    MAP_DOUBLE_VALUE_TAG,
    MAP_INT64_KEY,
    MAP_INT64_KEY_TAG,
    MAP_STRING_KEY,
    MAP_STRING_KEY_TAG,
    MAP_STRING_VALUE,
    MAP_STRING_VALUE_TAG,
    NAME_REPLY_STUDY_NAME_TAG,
    NAME_REQUEST_STUDY_NAME,
    SET_PARAM_REQUEST_DISTRIBUTION,
    SET_PARAM_REQUEST_NAME,
    SET_PARAM_REQUEST_TRIAL_ID,
    SET_PARAM_REQUEST_VALUE,
    START_GROUP,
    STATE_VALUES_REPLY_UPDATED_TAG,
    STATE_VALUES_REQUEST_STATE,
    STATE_VALUES_REQUEST_TRIAL_ID,
    STATE_VALUES_REQUEST_VALUES,
    STUDY_DIRECTIONS_TAG,
    STUDY_ID_TAG,
    STUDY_NAME_TAG,
    STUDY_SYSTEM_ATTRS_TAG,
    STUDY_USER_ATTRS_TAG,
    TRIAL_DATETIME_COMPLETE,
    TRIAL_DATETIME_COMPLETE_TAG,
    TRIAL_DATETIME_START,
    TRIAL_DATETIME_START_TAG,
    TRIAL_DISTRIBUTIONS,
    TRIAL_DISTRIBUTIONS_TAG,
    TRIAL_ID,
    TRIAL_ID_TAG,
    TRIAL_INTERMEDIATE_VALUES,
    TRIAL_INTERMEDIATE_VALUES_TAG,
    TRIAL_NUMBER,
    TRIAL_NUMBER_REQUEST_NUMBER,
    TRIAL_NUMBER_REQUEST_STUDY_ID,
    TRIAL_NUMBER_TAG,
    TRIAL_PARAMS,
    TRIAL_PARAMS_TAG,
    TRIAL_REPLY_TRIAL_TAG,
    TRIAL_STATE,
    TRIAL_STATE_TAG,
    TRIAL_SYSTEM_ATTRS,
    TRIAL_SYSTEM_ATTRS_TAG,
    TRIAL_USER_ATTRS,
    TRIAL_USER_ATTRS_TAG,
    TRIAL_VALUES,
    TRIAL_VALUES_TAG,
    TRIALS_REPLY_TRIALS_TAG,
    VARINT,
)

Buffer: TypeAlias = bytes | bytearray | memoryview


class DecodeError(ValueError):
    """Bytes that are not a valid encoding of the expected message."""


# Python protobuf lets a message nest 100 levels deep; every submessage, map
# entry and group takes one level.
MAX_DEPTH = 100

_MASK64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_DOUBLE = struct.Struct("<d")
_pack_double = _DOUBLE.pack


# -- reading ------------------------------------------------------------------


def _as_bytes(data: Buffer) -> bytes:
    if type(data) is bytes:
        return data
    return bytes(memoryview(data))


def _read_varint(data: bytes, pos: int, end: int, max_bytes: int = 10) -> tuple[int, int]:
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


def _read_tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag)."""
    key, pos = _read_varint(data, pos, end, 5)
    if key > 0xFFFFFFFF:
        raise DecodeError("field number out of range")
    if key < 8:
        raise DecodeError("field number 0")
    wire_type = key & 7
    if wire_type > FIXED32:
        raise DecodeError(f"invalid wire type {wire_type}")
    return key >> 3, wire_type, pos


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix, checked against what is left: (position after it, end of the payload)."""
    length, pos = _read_varint(data, pos, end, 5)
    if length > end - pos:
        raise DecodeError("length past the end")
    return pos, pos + length


def _wrong_type(field: int, wire_type: int) -> DecodeError:
    return DecodeError(f"wrong wire type {wire_type} for field {field}")


def _skip(data: bytes, pos: int, end: int, field: int, wire_type: int, depth: int) -> int:
    """The position after an unknown field whose tag was just read."""
    if wire_type == VARINT:
        return _read_varint(data, pos, end)[1]
    if wire_type == FIXED64:
        return _skip_fixed(pos, end, 8)
    if wire_type == LENGTH:
        return _read_length(data, pos, end)[1]
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
        field, wire_type, pos = _read_tag(data, pos, end)
        if wire_type == START_GROUP:
            open_groups.append(field)
        elif wire_type == END_GROUP:
            if open_groups.pop() != field:
                raise DecodeError("end-group tag does not match its group")
            if not open_groups:
                return pos
        else:
            pos = _skip(data, pos, end, field, wire_type, depth)


def _int64(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    if wire_type != VARINT:
        raise _wrong_type(field, wire_type)
    value, pos = _read_varint(data, pos, end)
    return _as_int64(value), pos


def _enum(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    if wire_type != VARINT:
        raise _wrong_type(field, wire_type)
    value, pos = _read_varint(data, pos, end)
    return _as_int32(value), pos


def _as_int64(raw: int) -> int:
    return raw - (1 << 64) if raw >> 63 else raw


def _as_int32(raw: int) -> int:
    """An enum is an int32 on the wire: the low 32 bits of the varint, signed."""
    raw &= 0xFFFFFFFF
    return raw - (1 << 32) if raw >> 31 else raw


def _bool(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[bool, int]:
    if wire_type != VARINT:
        raise _wrong_type(field, wire_type)
    value, pos = _read_varint(data, pos, end)
    return value != 0, pos


def _double(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[float, int]:
    if wire_type != FIXED64:
        raise _wrong_type(field, wire_type)
    if end - pos < 8:
        raise DecodeError("truncated fixed-size field")
    return _DOUBLE.unpack_from(data, pos)[0], pos + 8


def _string(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[str, int]:
    if wire_type != LENGTH:
        raise _wrong_type(field, wire_type)
    pos, stop = _read_length(data, pos, end)
    try:
        return data[pos:stop].decode(), stop
    except UnicodeDecodeError:
        raise DecodeError(f"invalid UTF-8 in field {field}") from None


def _message(data: bytes, pos: int, end: int, field: int, wire_type: int) -> tuple[int, int]:
    """(start, stop) of an embedded message's bytes."""
    if wire_type != LENGTH:
        raise _wrong_type(field, wire_type)
    return _read_length(data, pos, end)


def _doubles(
    data: bytes, pos: int, end: int, field: int, wire_type: int, into: list[float]
) -> int:
    """A repeated double, packed or not, appended to `into`."""
    if wire_type == FIXED64:
        value, pos = _double(data, pos, end, field, wire_type)
        into.append(value)
        return pos
    if wire_type != LENGTH:
        raise _wrong_type(field, wire_type)
    pos, stop = _read_length(data, pos, end)
    count, rest = divmod(stop - pos, 8)
    if rest:
        raise DecodeError(f"packed doubles of field {field} do not fill 8-byte words")
    into.extend(struct.unpack_from(f"<{count}d", data, pos))
    return stop


def _varints(
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
        value, pos = _read_varint(data, pos, end)
        into.append(convert(value))
        return pos
    if wire_type != LENGTH:
        raise _wrong_type(field, wire_type)
    pos, stop = _read_length(data, pos, end)
    while pos < stop:
        value, pos = _read_varint(data, pos, stop)
        into.append(convert(value))
    return stop


# -- requests -----------------------------------------------------------------


def decode_id_request(data: Buffer) -> int:
    """The one int64 id of DeleteStudy, GetStudy*, GetTrial requests (and id replies)."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    value = 0
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == ID_REQUEST_ID:
            value, pos = _int64(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return value


def decode_attr_request(data: Buffer) -> tuple[int, str, str]:
    """(id, key, value JSON text) of Set{Study,Trial}{User,System}AttributeRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    owner_id, key, value = 0, "", ""
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == ATTR_REQUEST_OWNER_ID:
            owner_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == ATTR_REQUEST_KEY:
            key, pos = _string(data, pos, end, field, wire_type)
        elif field == ATTR_REQUEST_VALUE:
            value, pos = _string(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return owner_id, key, value


def decode_name_request(data: Buffer) -> str:
    """The study name of GetStudyIdFromNameRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    name = ""
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == NAME_REQUEST_STUDY_NAME:
            name, pos = _string(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return name


def decode_empty_request(data: Buffer) -> None:
    """Checks a message without fields (GetAllStudiesRequest): unknown fields are skipped."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)


def decode_create_new_study_request(data: Buffer) -> tuple[list[int], str]:
    """(directions, study name) of CreateNewStudyRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    directions: list[int] = []
    name = ""
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == CREATE_STUDY_REQUEST_DIRECTIONS:
            pos = _varints(data, pos, end, field, wire_type, directions, _as_int32)
        elif field == CREATE_STUDY_REQUEST_STUDY_NAME:
            name, pos = _string(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return directions, name


def decode_create_new_trial_request(data: Buffer) -> tuple[int, TrialRow | None]:
    """(study id, template) of CreateNewTrialRequest, as Optuna's servicer reads it.

    The template is None iff `template_trial_is_none` is set; it is still checked.
    """
    data = _as_bytes(data)
    pos, end = 0, len(data)
    study_id = 0
    template = _TrialFields()
    template_is_none = False
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == CREATE_TRIAL_REQUEST_STUDY_ID:
            study_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == CREATE_TRIAL_REQUEST_TEMPLATE:
            start, pos = _message(data, pos, end, field, wire_type)
            template.merge(data, start, pos, MAX_DEPTH - 1)
        elif field == CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE:
            template_is_none, pos = _bool(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, None if template_is_none else template.row()


def decode_set_trial_param_request(data: Buffer) -> tuple[int, str, float, str]:
    """(trial id, name, internal value, distribution JSON) of SetTrialParameterRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    trial_id, name, value, distribution = 0, "", 0.0, ""
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == SET_PARAM_REQUEST_TRIAL_ID:
            trial_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_NAME:
            name, pos = _string(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_VALUE:
            value, pos = _double(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_DISTRIBUTION:
            distribution, pos = _string(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, name, value, distribution


def decode_trial_number_request(data: Buffer) -> tuple[int, int]:
    """(study id, trial number) of GetTrialIdFromStudyIdTrialNumberRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    study_id, number = 0, 0
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == TRIAL_NUMBER_REQUEST_STUDY_ID:
            study_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == TRIAL_NUMBER_REQUEST_NUMBER:
            number, pos = _int64(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, number


def decode_set_trial_state_values_request(data: Buffer) -> tuple[int, int, list[float]]:
    """(trial id, state, values) of SetTrialStateValuesRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    trial_id, state = 0, 0
    values: list[float] = []
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == STATE_VALUES_REQUEST_TRIAL_ID:
            trial_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == STATE_VALUES_REQUEST_STATE:
            state, pos = _enum(data, pos, end, field, wire_type)
        elif field == STATE_VALUES_REQUEST_VALUES:
            pos = _doubles(data, pos, end, field, wire_type, values)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, state, values


def decode_set_trial_intermediate_value_request(data: Buffer) -> tuple[int, int, float]:
    """(trial id, step, value) of SetTrialIntermediateValueRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    trial_id, step, value = 0, 0, 0.0
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == INTERMEDIATE_REQUEST_TRIAL_ID:
            trial_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == INTERMEDIATE_REQUEST_STEP:
            step, pos = _int64(data, pos, end, field, wire_type)
        elif field == INTERMEDIATE_REQUEST_VALUE:
            value, pos = _double(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, step, value


def decode_get_trials_request(data: Buffer) -> tuple[int, list[int], int]:
    """(study id, included trial ids, trial_id_greater_than) of GetTrialsRequest."""
    data = _as_bytes(data)
    pos, end = 0, len(data)
    study_id, id_greater_than = 0, 0
    included: list[int] = []
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == GET_TRIALS_REQUEST_STUDY_ID:
            study_id, pos = _int64(data, pos, end, field, wire_type)
        elif field == GET_TRIALS_REQUEST_INCLUDED_IDS:
            pos = _varints(data, pos, end, field, wire_type, included, _as_int64)
        elif field == GET_TRIALS_REQUEST_ID_GREATER_THAN:
            id_greater_than, pos = _int64(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, included, id_greater_than


def decode_trial(data: Buffer) -> TrialRow:
    """A `Trial` message as a TrialRow; params joined with their distributions by name."""
    data = _as_bytes(data)
    fields = _TrialFields()
    fields.merge(data, 0, len(data), MAX_DEPTH)
    return fields.row()


class _TrialFields:
    """A `Trial` being read; a submessage sent in pieces merges them, as protobuf does."""

    __slots__ = (
        "trial_id",
        "number",
        "state",
        "values",
        "datetime_start",
        "datetime_complete",
        "params",
        "distributions",
        "user_attrs",
        "system_attrs",
        "intermediate_values",
    )

    def __init__(self) -> None:
        self.trial_id = 0
        self.number = 0
        self.state = 0
        self.values: list[float] = []
        self.datetime_start = ""
        self.datetime_complete = ""
        self.params: dict[str, float] = {}
        self.distributions: dict[str, str] = {}
        self.user_attrs: dict[str, str] = {}
        self.system_attrs: dict[str, str] = {}
        self.intermediate_values: dict[int, float] = {}

    def merge(self, data: bytes, pos: int, end: int, depth: int) -> None:
        while pos < end:
            field, wire_type, pos = _read_tag(data, pos, end)
            if field == TRIAL_ID:
                self.trial_id, pos = _int64(data, pos, end, field, wire_type)
            elif field == TRIAL_NUMBER:
                self.number, pos = _int64(data, pos, end, field, wire_type)
            elif field == TRIAL_STATE:
                self.state, pos = _enum(data, pos, end, field, wire_type)
            elif field == TRIAL_VALUES:
                pos = _doubles(data, pos, end, field, wire_type, self.values)
            elif field == TRIAL_DATETIME_START:
                self.datetime_start, pos = _string(data, pos, end, field, wire_type)
            elif field == TRIAL_DATETIME_COMPLETE:
                self.datetime_complete, pos = _string(data, pos, end, field, wire_type)
            elif TRIAL_PARAMS <= field <= TRIAL_INTERMEDIATE_VALUES:  # the five maps
                start, pos = _message(data, pos, end, field, wire_type)
                self._merge_entry(field, data, start, pos, depth - 1)
            else:
                pos = _skip(data, pos, end, field, wire_type, depth)

    def _merge_entry(self, field: int, data: bytes, pos: int, end: int, depth: int) -> None:
        if field == TRIAL_PARAMS:
            _read_string_double_entry(data, pos, end, depth, self.params)
        elif field == TRIAL_DISTRIBUTIONS:
            _read_string_string_entry(data, pos, end, depth, self.distributions)
        elif field == TRIAL_USER_ATTRS:
            _read_string_string_entry(data, pos, end, depth, self.user_attrs)
        elif field == TRIAL_SYSTEM_ATTRS:
            _read_string_string_entry(data, pos, end, depth, self.system_attrs)
        else:  # TRIAL_INTERMEDIATE_VALUES
            _read_int64_double_entry(data, pos, end, depth, self.intermediate_values)

    def row(self) -> TrialRow:
        distributions = self.distributions
        params = []
        for name, value in self.params.items():
            distribution = distributions.get(name)
            if distribution is None:
                raise DecodeError(f"param {name!r} has no distribution")
            params.append((name, value, distribution))
        if len(distributions) != len(params):
            for name in distributions:
                if name not in self.params:
                    raise DecodeError(f"distribution {name!r} has no param")
        return TrialRow(
            self.trial_id,
            self.number,
            self.state,
            self.values,
            self.datetime_start,
            self.datetime_complete,
            params,
            list(self.user_attrs.items()),
            list(self.system_attrs.items()),
            list(self.intermediate_values.items()),
        )


# Each reader puts one map entry into `into`; an entry that carries an unknown field
# is dropped, as Python protobuf (upb) drops it.


def _read_string_string_entry(
    data: bytes, pos: int, end: int, depth: int, into: dict[str, str]
) -> None:
    key, value = "", ""
    dropped = False
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == MAP_STRING_KEY:
            key, pos = _string(data, pos, end, field, wire_type)
        elif field == MAP_STRING_VALUE:
            value, pos = _string(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value


def _read_string_double_entry(
    data: bytes, pos: int, end: int, depth: int, into: dict[str, float]
) -> None:
    key, value = "", 0.0
    dropped = False
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == MAP_STRING_KEY:
            key, pos = _string(data, pos, end, field, wire_type)
        elif field == MAP_DOUBLE_VALUE:
            value, pos = _double(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value


def _read_int64_double_entry(
    data: bytes, pos: int, end: int, depth: int, into: dict[int, float]
) -> None:
    key, value = 0, 0.0
    dropped = False
    while pos < end:
        field, wire_type, pos = _read_tag(data, pos, end)
        if field == MAP_INT64_KEY:
            key, pos = _int64(data, pos, end, field, wire_type)
        elif field == MAP_DOUBLE_VALUE:
            value, pos = _double(data, pos, end, field, wire_type)
        else:
            pos = _skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value


# -- replies ------------------------------------------------------------------

# Every byte below 0x80: a one-byte varint, and (see shardproxy.wire) every tag.
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]
# The tags inside map entries, as written.
_STRING_KEY = _ONE_BYTE[MAP_STRING_KEY_TAG]
_INT64_KEY = _ONE_BYTE[MAP_INT64_KEY_TAG]
_STRING_VALUE = _ONE_BYTE[MAP_STRING_VALUE_TAG]
_DOUBLE_VALUE = _ONE_BYTE[MAP_DOUBLE_VALUE_TAG]
# An intermediate value entry `{key: step, value: double}` for a step below 128, up to
# its double: the entry takes 11 bytes (key tag, step, value tag, 8-byte double).
_SMALL_STEP_ENTRY = [
    bytes((TRIAL_INTERMEDIATE_VALUES_TAG, 11, MAP_INT64_KEY_TAG, step, MAP_DOUBLE_VALUE_TAG))
    for step in range(0x80)
]
_UPDATED_REPLY = bytes((STATE_VALUES_REPLY_UPDATED_TAG, 1))


def _varint(value: int) -> bytes:
    """An unsigned varint; `value` is in [0, 2**64)."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int64_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{value} does not fit in int64")
    return _varint(value & _MASK64)


def _enum_varint(value: int) -> bytes:
    """An int32 varint: a negative one is sign-extended to ten bytes."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise OverflowError(f"{value} does not fit in int32")
    return _varint(value & _MASK64)


# Each helper takes a field's tag from shardproxy.wire. Each *_field helper leaves
# the field out when it holds the proto3 default, but checks the value's type
# first, as the compiled twin does.


def _int64_field(tag: int, value: int) -> bytes:
    varint = _int64_varint(value)
    return _ONE_BYTE[tag] + varint if value else b""


def _enum_field(tag: int, value: int) -> bytes:
    varint = _enum_varint(value)
    return _ONE_BYTE[tag] + varint if value else b""


def _string_field(tag: int, text: str) -> bytes:
    payload = str.encode(text)
    return _ONE_BYTE[tag] + _varint(len(payload)) + payload if payload else b""


def _packed_enums(tag: int, values: Iterable[int]) -> bytes:
    payload = b"".join([_enum_varint(v) for v in values])
    return _ONE_BYTE[tag] + _varint(len(payload)) + payload if payload else b""


def _packed_doubles(tag: int, values: Sequence[float]) -> bytes:
    payload = struct.pack(f"<{len(values)}d", *values)
    return _ONE_BYTE[tag] + _varint(len(payload)) + payload if payload else b""


def _string_entry(tag: int, key: str, value: str) -> bytes:
    """A map<string, string> entry: `tag: {key, value}`."""
    key_bytes = str.encode(key)
    value_bytes = str.encode(value)
    entry = b"".join(
        (
            _STRING_KEY,
            _varint(len(key_bytes)),
            key_bytes,
            _STRING_VALUE,
            _varint(len(value_bytes)),
            value_bytes,
        )
    )
    return _ONE_BYTE[tag] + _varint(len(entry)) + entry


def _double_entry(tag: int, key: str, value: float) -> bytes:
    """A map<string, double> entry: `tag: {key, value}`."""
    key_bytes = str.encode(key)
    entry = _STRING_KEY + _varint(len(key_bytes)) + key_bytes + _DOUBLE_VALUE + _pack_double(value)
    return _ONE_BYTE[tag] + _varint(len(entry)) + entry


def _step_entry(step: int, value: float) -> bytes:
    """An intermediate value: the map<int64, double> entry `{step, value}`."""
    if 0 <= step < 0x80:
        return _SMALL_STEP_ENTRY[step] + _pack_double(value)
    entry = _INT64_KEY + _int64_varint(step) + _DOUBLE_VALUE + _pack_double(value)
    return _ONE_BYTE[TRIAL_INTERMEDIATE_VALUES_TAG] + _varint(len(entry)) + entry


def _repeated_messages(tag: int, messages: Iterable[Buffer]) -> bytes:
    """`tag: message` for each message, joined once."""
    pieces: list[bytes] = []
    append = pieces.append
    tag_byte = _ONE_BYTE[tag]
    for message in messages:
        if type(message) is not bytes:
            message = bytes(memoryview(message))
        append(tag_byte)
        append(_varint(len(message)))
        append(message)
    return b"".join(pieces)


def encode_id_reply(value: int) -> bytes:
    """The one id of CreateNewStudy, GetStudyIdFromName, CreateNewTrial, GetTrialId... replies."""
    return _int64_field(ID_REPLY_ID_TAG, value)


def encode_name_reply(name: str) -> bytes:
    """GetStudyNameFromIdReply."""
    return _string_field(NAME_REPLY_STUDY_NAME_TAG, name)


def encode_directions_reply(directions: Iterable[int]) -> bytes:
    """GetStudyDirectionsReply."""
    return _packed_enums(DIRECTIONS_REPLY_DIRECTIONS_TAG, directions)


def encode_attrs_reply(attrs: Mapping[str, str]) -> bytes:
    """Get{Study}{User,System}AttributesReply: key -> JSON text."""
    return b"".join(
        [_string_entry(ATTRS_REPLY_ATTRS_TAG, key, value) for key, value in attrs.items()]
    )


def encode_study(study: StudyRow) -> bytes:
    """A `Study` message."""
    study_id, name, directions, user_attrs, system_attrs = study
    pieces = [
        _int64_field(STUDY_ID_TAG, study_id),
        _string_field(STUDY_NAME_TAG, name),
        _packed_enums(STUDY_DIRECTIONS_TAG, directions),
    ]
    pieces += [_string_entry(STUDY_USER_ATTRS_TAG, k, v) for k, v in user_attrs.items()]
    pieces += [_string_entry(STUDY_SYSTEM_ATTRS_TAG, k, v) for k, v in system_attrs.items()]
    return b"".join(pieces)


def encode_all_studies_reply(studies: Iterable[Buffer]) -> bytes:
    """GetAllStudiesReply from encoded `Study` messages."""
    return _repeated_messages(ALL_STUDIES_REPLY_STUDIES_TAG, studies)


def encode_bool_reply(flag: bool) -> bytes:
    """SetTrialStateValuesReply."""
    return _UPDATED_REPLY if flag else b""


def encode_trial(row: TrialRow) -> bytes:
    """A `Trial` message straight from row values."""
    (trial_id, number, state, values, datetime_start, datetime_complete,
     params, user_attrs, system_attrs, intermediate_values) = row  # fmt: skip
    pieces = [
        _int64_field(TRIAL_ID_TAG, trial_id),
        _int64_field(TRIAL_NUMBER_TAG, number),
        _enum_field(TRIAL_STATE_TAG, state),
        _packed_doubles(TRIAL_VALUES_TAG, values),
        _string_field(TRIAL_DATETIME_START_TAG, datetime_start),
        _string_field(TRIAL_DATETIME_COMPLETE_TAG, datetime_complete),
    ]
    pieces += [_double_entry(TRIAL_PARAMS_TAG, name, value) for name, value, _ in params]
    pieces += [_string_entry(TRIAL_DISTRIBUTIONS_TAG, name, text) for name, _, text in params]
    pieces += [_string_entry(TRIAL_USER_ATTRS_TAG, key, text) for key, text in user_attrs]
    pieces += [_string_entry(TRIAL_SYSTEM_ATTRS_TAG, key, text) for key, text in system_attrs]
    pieces += [_step_entry(step, value) for step, value in intermediate_values]
    return b"".join(pieces)


def encode_trial_reply(trial_bytes: Buffer) -> bytes:
    """GetTrialReply around an encoded `Trial` (present even when it is empty)."""
    return _repeated_messages(TRIAL_REPLY_TRIAL_TAG, (trial_bytes,))


def encode_trials_reply(trials: Iterable[Buffer]) -> bytes:
    """GetTrialsReply from encoded `Trial` messages, copied once and never re-encoded."""
    return _repeated_messages(TRIALS_REPLY_TRIALS_TAG, trials)
