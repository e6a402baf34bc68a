"""Proto3 corners, written out by hand: what each codec makes of them, and that
Optuna's `api_pb2` reads them the same way."""

from __future__ import annotations

import math
import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy._codec_py import DecodeError
from shardproxy.rows import StudyRow, TrialRow, empty_trial_row
from tests.codec_strategies import (
    DECODERS,
    END_GROUP,
    FIXED32,
    FIXED64,
    IMPLEMENTATIONS,
    START_GROUP,
    VARINT,
    Decoder,
    available_implementations,
    bytes_field,
    double_field,
    exact_form,
    implementation,
    loose_form,
    outcome,
    protobuf_outcome,
    string_field,
    study_rows,
    tag,
    trial_rows,
    varint,
    varint_field,
)

pb: Any = api_pb2
DECODER = {decoder.function: decoder for decoder in DECODERS}


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request.param)


def decoded(codec: ModuleType, function: str, data: bytes) -> Any:
    """What `codec` decodes (or its DecodeError), once api_pb2 is seen to read the same."""
    decoder = DECODER[function]
    ours, theirs = outcome(decoder, codec, data), protobuf_outcome(decoder, data)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "error":
        raise DecodeError(ours[1])
    assert loose_form(ours[1]) == loose_form(theirs[1])
    return ours[1]


def param(name: str, value: float) -> bytes:
    return bytes_field(7, string_field(1, name) + double_field(2, value))


def distribution(name: str, text: str) -> bytes:
    return bytes_field(8, string_field(1, name) + string_field(2, text))


# -- scalars and repeated fields ---------------------------------------------------


def test_last_scalar_wins(codec: ModuleType) -> None:
    data = varint_field(1, 5) + string_field(2, "a") + varint_field(1, 7) + string_field(2, "b")
    assert decoded(codec, "decode_attr_request", data) == (7, "b", "")


def test_repeated_int64_mixes_packed_and_unpacked(codec: ModuleType) -> None:
    data = (
        varint_field(2, 1)
        + bytes_field(2, varint(2) + varint(-3))
        + varint_field(1, 9)
        + varint_field(2, 4)
        + bytes_field(2, b"")
    )
    assert decoded(codec, "decode_get_trials_request", data) == (9, [1, 2, -3, 4], 0)


def test_repeated_double_mixes_packed_and_unpacked(codec: ModuleType) -> None:
    data = double_field(3, 1.5) + bytes_field(3, struct.pack("<2d", -0.0, math.inf))
    trial_id, state, values = decoded(codec, "decode_set_trial_state_values_request", data)
    assert values == [1.5, -0.0, math.inf] and math.copysign(1, values[1]) == -1


@pytest.mark.parametrize(
    ("raw", "state"),
    [(7, 7), (2**31, -(2**31)), (2**32 + 1, 1), (-1, -1), (2**63, 0)],
    ids=["unknown", "int32 wrap", "high bits dropped", "negative", "only bit 63"],
)
def test_enum_is_the_low_32_bits_signed(codec: ModuleType, raw: int, state: int) -> None:
    data = varint_field(2, raw)
    assert decoded(codec, "decode_set_trial_state_values_request", data) == (0, state, [])


def test_bits_past_64_fall_off_a_ten_byte_varint(codec: ModuleType) -> None:
    assert decoded(codec, "decode_id_request", b"\x08" + b"\xff" * 9 + b"\x7f") == -1
    assert decoded(codec, "decode_id_request", b"\x08" + b"\x80" * 9 + b"\x02") == 0
    assert decoded(codec, "decode_id_request", b"\x08\x85\x80\x80\x80\x00") == 5  # padded


def test_padded_tags_and_lengths_are_read(codec: ModuleType) -> None:
    data = b"\x8a\x80\x00" + b"\x84\x80\x80\x80\x00" + b"ab\xc3\xbc"  # field 1, length 4
    assert decoded(codec, "decode_name_request", data) == "abü"


def test_nan_payload_and_negative_zero_survive(codec: ModuleType) -> None:
    nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]
    data = varint_field(1, 3) + double_field(3, nan)
    trial_id, name, value, dist = codec.decode_set_trial_param_request(data)
    assert struct.pack("<d", value) == struct.pack("<d", nan)
    row = empty_trial_row()._replace(values=[nan, -0.0], intermediate_values=[(-1, nan)])
    assert exact_form(codec.decode_trial(codec.encode_trial(row))) == exact_form(row)


def test_empty_bytes_are_all_defaults(codec: ModuleType) -> None:
    assert codec.decode_create_new_study_request(b"") == ([], "")
    assert codec.decode_id_request(b"") == 0
    assert codec.decode_attr_request(b"") == (0, "", "")
    assert codec.decode_name_request(b"") == ""
    assert codec.decode_empty_request(b"") is None
    assert codec.decode_create_new_trial_request(b"") == (0, empty_trial_row())
    assert codec.decode_set_trial_param_request(b"") == (0, "", 0.0, "")
    assert codec.decode_trial_number_request(b"") == (0, 0)
    assert codec.decode_set_trial_state_values_request(b"") == (0, 0, [])
    assert codec.decode_set_trial_intermediate_value_request(b"") == (0, 0, 0.0)
    assert codec.decode_get_trials_request(b"") == (0, [], 0)
    assert codec.decode_trial(b"") == empty_trial_row()


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda t: t.__name__)
def test_buffers_decode_like_bytes(codec: ModuleType, wrap: type) -> None:
    data = varint_field(1, 4) + bytes_field(2, varint(5) + varint(6)) + varint_field(3, -1)
    assert codec.decode_get_trials_request(wrap(data)) == (4, [5, 6], -1)


# -- maps ------------------------------------------------------------------------


def test_map_entries_last_key_wins_and_default_missing_parts(codec: ModuleType) -> None:
    data = (
        bytes_field(9, string_field(1, "k") + string_field(2, "one"))
        + bytes_field(9, string_field(2, "no key"))
        + bytes_field(9, string_field(1, "k") + string_field(2, "two"))
        + bytes_field(9, string_field(1, "no value"))
        + bytes_field(11, double_field(2, 2.5))
        + bytes_field(11, varint_field(1, -4))
    )
    row = decoded(codec, "decode_trial", data)
    assert isinstance(row, TrialRow)
    assert row.user_attrs == [("k", "two"), ("", "no key"), ("no value", "")]
    assert row.intermediate_values == [(0, 2.5), (-4, 0.0)]


def test_map_entry_with_an_unknown_field_is_dropped(codec: ModuleType) -> None:
    data = (
        bytes_field(10, string_field(1, "a") + string_field(2, "kept"))
        + bytes_field(10, string_field(1, "a") + string_field(2, "x") + varint_field(3, 1))
        + bytes_field(10, string_field(1, "b") + tag(4, START_GROUP) + tag(4, END_GROUP))
    )
    assert decoded(codec, "decode_trial", data).system_attrs == [("a", "kept")]


def test_params_join_distributions_in_order_of_first_param(codec: ModuleType) -> None:
    data = (
        distribution("a", "A")
        + param("z", 1.0)
        + param("a", 2.0)
        + distribution("z", "Z")
        + param("z", 3.0)
    )
    assert codec.decode_trial(data).params == [("z", 3.0, "Z"), ("a", 2.0, "A")]


def test_param_without_distribution_is_refused(codec: ModuleType) -> None:
    with pytest.raises(DecodeError, match="param 'x' has no distribution"):
        codec.decode_trial(param("x", 1.0) + param("y", 1.0) + distribution("y", "{}"))
    with pytest.raises(DecodeError, match="distribution 'y' has no param"):
        codec.decode_trial(param("x", 1.0) + distribution("x", "{}") + distribution("y", "{}"))


# -- the template of CreateNewTrialRequest ------------------------------------------


def test_template_is_none_when_flagged_even_if_sent(codec: ModuleType) -> None:
    data = varint_field(1, 3) + bytes_field(2, param("x", 1.0)) + varint_field(3, 1)
    assert decoded(codec, "decode_create_new_trial_request", data) == (3, None)


def test_template_bytes_are_checked_even_when_unused(codec: ModuleType) -> None:
    with pytest.raises(DecodeError):
        codec.decode_create_new_trial_request(bytes_field(2, b"\x2a\x01\xff") + varint_field(3, 1))


def test_absent_template_is_the_empty_trial(codec: ModuleType) -> None:
    data = varint_field(1, 3) + varint_field(3, 0)
    assert decoded(codec, "decode_create_new_trial_request", data) == (3, empty_trial_row())


def test_flag_of_only_high_bits_is_false(codec: ModuleType) -> None:
    data = tag(3, VARINT) + b"\x80" * 9 + b"\x02"
    assert decoded(codec, "decode_create_new_trial_request", data) == (0, empty_trial_row())


def test_split_template_merges(codec: ModuleType) -> None:
    first = varint_field(1, 11) + param("x", 1.0) + bytes_field(4, struct.pack("<d", 0.5))
    second = varint_field(2, 4) + distribution("x", "{}") + double_field(4, 0.25)
    data = bytes_field(2, first) + varint_field(1, 8) + bytes_field(2, second)
    study_id, template = decoded(codec, "decode_create_new_trial_request", data)
    assert study_id == 8
    assert template == empty_trial_row()._replace(
        trial_id=11, number=4, values=[0.5, 0.25], params=[("x", 1.0, "{}")]
    )


# -- unknown fields and groups -------------------------------------------------------


def group(field: int, content: bytes = b"") -> bytes:
    return tag(field, START_GROUP) + content + tag(field, END_GROUP)


UNKNOWN_FIELDS = (
    varint_field(20, -1)
    + tag(21, FIXED64) + bytes(8)
    + bytes_field(22, b"\xff\xfe")  # not UTF-8, and not checked: nobody reads it
    + tag(23, FIXED32) + bytes(4)
    + group(24, varint_field(1, 3) + group(25, bytes_field(2, b"x")) + group(24))
    + tag(2**29 - 1, VARINT) + b"\x00"
)  # fmt: skip


@pytest.mark.parametrize("decoder", DECODERS, ids=str)
def test_unknown_fields_are_skipped(codec: ModuleType, decoder: Decoder) -> None:
    assert loose_form(outcome(decoder, codec, UNKNOWN_FIELDS)) == loose_form(
        protobuf_outcome(decoder, b"")
    )


GROUP = 30  # an unknown field number


@pytest.mark.parametrize(
    "data",
    [
        group(GROUP),
        tag(GROUP, END_GROUP),
        tag(GROUP, START_GROUP) + tag(GROUP + 1, END_GROUP),
        tag(GROUP, START_GROUP) * 2 + tag(GROUP, END_GROUP),
    ],
    ids=["closed", "end alone", "end mismatched", "unterminated"],
)
def test_groups_match_protobuf(codec: ModuleType, data: bytes) -> None:
    for decoder in DECODERS:
        assert outcome(decoder, codec, data)[0] == protobuf_outcome(decoder, data)[0]


@pytest.mark.parametrize(
    ("function", "wrap", "limit"),
    [
        ("decode_id_request", lambda g: g, 100),
        ("decode_trial", lambda g: g, 100),
        ("decode_trial", lambda g: bytes_field(9, g), 99),
        ("decode_create_new_trial_request", lambda g: bytes_field(2, g), 99),
        ("decode_create_new_trial_request", lambda g: bytes_field(2, bytes_field(11, g)), 98),
    ],
    ids=["request", "trial", "trial map entry", "template", "template map entry"],
)
def test_nesting_stops_where_protobuf_stops(
    codec: ModuleType, function: str, wrap: Any, limit: int
) -> None:
    deepest = wrap(tag(GROUP, START_GROUP) * limit + tag(GROUP, END_GROUP) * limit)
    decoded(codec, function, deepest)
    too_deep = wrap(tag(GROUP, START_GROUP) * (limit + 1) + tag(GROUP, END_GROUP) * (limit + 1))
    with pytest.raises(DecodeError, match="nested too deeply"):
        decoded(codec, function, too_deep)


# -- encoding --------------------------------------------------------------------


def test_defaults_are_left_out(codec: ModuleType) -> None:
    assert codec.encode_trial(empty_trial_row()) == b""
    assert codec.encode_study(StudyRow(0, "", [], {}, {})) == b""
    assert codec.encode_id_reply(0) == b""
    assert codec.encode_name_reply("") == b""
    assert codec.encode_directions_reply([]) == b""
    assert codec.encode_attrs_reply({}) == b""
    assert codec.encode_bool_reply(False) == b""
    assert codec.encode_trials_reply([]) == b""
    assert codec.encode_trial_reply(b"") == b"\x0a\x00"


@pytest.mark.parametrize(
    "encode",
    [
        lambda c: c.encode_id_reply(2**63),
        lambda c: c.encode_id_reply(-(2**63) - 1),
        lambda c: c.encode_directions_reply([2**31]),
        lambda c: c.encode_trial(empty_trial_row()._replace(state=-(2**31) - 1)),
        lambda c: c.encode_trial(empty_trial_row()._replace(intermediate_values=[(2**64, 1.0)])),
        lambda c: c.encode_study(StudyRow(2**63, "", [], {}, {})),
    ],
    ids=["id", "negative id", "direction", "state", "step", "study id"],
)
def test_out_of_range_numbers_overflow(codec: ModuleType, encode: Any) -> None:
    with pytest.raises(OverflowError):
        encode(codec)


NOT_TEXT: Any = None


@pytest.mark.parametrize(
    "encode",
    [
        lambda c: c.encode_name_reply(None),
        lambda c: c.encode_name_reply(b"bytes"),
        lambda c: c.encode_attrs_reply({"k": 1}),
        lambda c: c.encode_trial(empty_trial_row()._replace(datetime_start=NOT_TEXT)),
        lambda c: c.encode_trial(empty_trial_row()._replace(user_attrs=[(NOT_TEXT, "v")])),
    ],
    ids=["None name", "bytes name", "int value", "None datetime", "None key"],
)
def test_non_text_is_a_type_error(codec: ModuleType, encode: Any) -> None:
    with pytest.raises(TypeError):
        encode(codec)


def test_str_subclasses_encode_as_text(codec: ModuleType) -> None:
    class Name(str):
        pass

    assert codec.encode_name_reply(Name("ü")) == codec.encode_name_reply("ü")


def test_trials_reply_copies_many_trials_in_order(codec: ModuleType) -> None:
    trials = [codec.encode_trial(empty_trial_row()._replace(trial_id=i)) for i in range(20_000)]
    trials[5] = b"x" * 300  # a length prefix of two bytes
    expected = b"".join(b"\x0a" + varint(len(t)) + t for t in trials)
    assert codec.encode_trials_reply(trials) == expected
    assert codec.encode_trials_reply(iter(trials)) == expected
    head = b"".join(b"\x0a" + varint(len(t)) + t for t in trials[:10])
    assert codec.encode_trials_reply([bytearray(t) for t in trials[:10]]) == head
    assert codec.encode_all_studies_reply([memoryview(t) for t in trials[:10]]) == head


@settings(max_examples=40, deadline=None)
@given(row=trial_rows(), study=study_rows)
def test_twins_encode_the_same_bytes(row: TrialRow, study: StudyRow) -> None:
    implementations = available_implementations()
    if len(implementations) < 2:
        pytest.skip("only the pure codec is available")
    pure, compiled = implementations
    assert compiled.encode_trial(row) == pure.encode_trial(row)
    assert compiled.encode_study(study) == pure.encode_study(study)
    assert compiled.encode_attrs_reply(study.user_attrs) == pure.encode_attrs_reply(
        study.user_attrs
    )
    assert compiled.encode_directions_reply(study.directions) == pure.encode_directions_reply(
        study.directions
    )
