"""Every request and reply of the 19 RPCs against Optuna's own message classes.

Our encoders' bytes parse with `api_pb2` to the values encoded; `api_pb2`'s bytes,
and random non-canonical encodings of the same messages, decode with ours to the
values `api_pb2` reads. Each test runs against both codecs.
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy.rows import StudyRow, TrialRow, empty_trial_row
from tests.codec_strategies import (
    DECODERS,
    IMPLEMENTATIONS,
    Decoder,
    attr_maps,
    doubles,
    enums,
    implementation,
    int64s,
    loose_form,
    outcome,
    protobuf_outcome,
    random_message,
    study_rows,
    texts,
    to_proto_trial,
    trial_row_of,
    trial_rows,
)

pb: Any = api_pb2
EXAMPLES = settings(max_examples=40, deadline=None)


def same(a: object, b: object) -> bool:
    """Equal values, map order aside, NaN equal to NaN."""
    return loose_form(a) == loose_form(b)


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def codec(request: pytest.FixtureRequest) -> ModuleType:
    return implementation(request.param)


# -- replies: our bytes, api_pb2 parses ------------------------------------------

ID_REPLIES = [
    (pb.CreateNewStudyReply, "study_id"),
    (pb.GetStudyIdFromNameReply, "study_id"),
    (pb.CreateNewTrialReply, "trial_id"),
    (pb.GetTrialIdFromStudyIdTrialNumberReply, "trial_id"),
]
EMPTY_REPLIES = [
    pb.DeleteStudyReply, pb.SetStudyUserAttributeReply, pb.SetStudySystemAttributeReply,
    pb.SetTrialParameterReply, pb.SetTrialIntermediateValueReply,
    pb.SetTrialUserAttributeReply, pb.SetTrialSystemAttributeReply,
]  # fmt: skip


@pytest.mark.parametrize(("reply", "field"), ID_REPLIES, ids=lambda x: getattr(x, "__name__", x))
@EXAMPLES
@given(value=int64s)
def test_id_reply_parses(codec: ModuleType, reply: Any, field: str, value: int) -> None:
    assert getattr(reply.FromString(codec.encode_id_reply(value)), field) == value


@EXAMPLES
@given(name=texts)
def test_name_reply_parses(codec: ModuleType, name: str) -> None:
    assert pb.GetStudyNameFromIdReply.FromString(codec.encode_name_reply(name)).study_name == name


@EXAMPLES
@given(directions=st.lists(enums, max_size=6))
def test_directions_reply_parses(codec: ModuleType, directions: list[int]) -> None:
    reply = pb.GetStudyDirectionsReply.FromString(codec.encode_directions_reply(directions))
    assert list(reply.directions) == directions


@pytest.mark.parametrize(
    ("reply", "field"),
    [
        (pb.GetStudyUserAttributesReply, "user_attributes"),
        (pb.GetStudySystemAttributesReply, "system_attributes"),
    ],  # fmt: skip
    ids=["user", "system"],
)
@EXAMPLES
@given(attrs=attr_maps)
def test_attrs_reply_parses(codec: ModuleType, reply: Any, field: str, attrs: dict) -> None:
    assert dict(getattr(reply.FromString(codec.encode_attrs_reply(attrs)), field)) == attrs


@EXAMPLES
@given(studies=st.lists(study_rows, max_size=4))
def test_all_studies_reply_parses(codec: ModuleType, studies: list[StudyRow]) -> None:
    data = codec.encode_all_studies_reply([codec.encode_study(s) for s in studies])
    parsed = pb.GetAllStudiesReply.FromString(data).studies
    assert [
        StudyRow(
            s.study_id,
            s.study_name,
            list(s.directions),
            dict(s.user_attributes),
            dict(s.system_attributes),
        )
        for s in parsed
    ] == studies


@pytest.mark.parametrize("flag", [True, False])
def test_bool_reply_parses(codec: ModuleType, flag: bool) -> None:
    reply = pb.SetTrialStateValuesReply.FromString(codec.encode_bool_reply(flag))
    assert reply.trial_updated is flag


@EXAMPLES
@given(row=trial_rows(max_params=40))
def test_trial_parses(codec: ModuleType, row: TrialRow) -> None:
    assert same(trial_row_of(pb.Trial.FromString(codec.encode_trial(row))), row)


@EXAMPLES
@given(row=trial_rows())
def test_trial_reply_parses(codec: ModuleType, row: TrialRow) -> None:
    reply = pb.GetTrialReply.FromString(codec.encode_trial_reply(codec.encode_trial(row)))
    assert reply.HasField("trial")
    assert same(trial_row_of(reply.trial), row)


@EXAMPLES
@given(rows=st.lists(trial_rows(max_params=3), max_size=5))
def test_trials_reply_parses(codec: ModuleType, rows: list[TrialRow]) -> None:
    reply = pb.GetTrialsReply.FromString(
        codec.encode_trials_reply([codec.encode_trial(row) for row in rows])
    )
    assert same([trial_row_of(trial) for trial in reply.trials], rows)


def test_empty_trial_reply_still_holds_a_trial(codec: ModuleType) -> None:
    reply = pb.GetTrialReply.FromString(
        codec.encode_trial_reply(codec.encode_trial(empty_trial_row()))
    )
    assert reply.HasField("trial")


def test_many_params_and_steps_parse(codec: ModuleType) -> None:
    rng = random.Random(7)
    row = empty_trial_row()._replace(
        params=[(f"p{i}", rng.random(), f'{{"n": {i}}}') for i in range(1000)],
        intermediate_values=[(step, rng.random()) for step in range(-500, 1500)],
    )
    assert same(trial_row_of(pb.Trial.FromString(codec.encode_trial(row))), row)


@pytest.mark.parametrize("reply", EMPTY_REPLIES, ids=lambda c: c.__name__)
def test_empty_replies_are_empty_bytes(reply: Any) -> None:
    # The handlers of these RPCs answer b"" without the codec.
    assert reply().SerializeToString() == b""
    assert reply.FromString(b"") == reply()


# -- requests: api_pb2's bytes, ours decode --------------------------------------

ID_REQUESTS = [
    (pb.DeleteStudyRequest, "study_id"),
    (pb.GetStudyNameFromIdRequest, "study_id"),
    (pb.GetStudyDirectionsRequest, "study_id"),
    (pb.GetStudyUserAttributesRequest, "study_id"),
    (pb.GetStudySystemAttributesRequest, "study_id"),
    (pb.GetTrialRequest, "trial_id"),
]
ATTR_REQUESTS = [
    (pb.SetStudyUserAttributeRequest, "study_id"),
    (pb.SetStudySystemAttributeRequest, "study_id"),
    (pb.SetTrialUserAttributeRequest, "trial_id"),
    (pb.SetTrialSystemAttributeRequest, "trial_id"),
]


@pytest.mark.parametrize(
    ("request_class", "field"), ID_REQUESTS, ids=lambda x: getattr(x, "__name__", x)
)
@EXAMPLES
@given(value=int64s)
def test_id_request_decodes(codec: ModuleType, request_class: Any, field: str, value: int) -> None:
    assert codec.decode_id_request(request_class(**{field: value}).SerializeToString()) == value


@pytest.mark.parametrize(
    ("request_class", "field"), ATTR_REQUESTS, ids=lambda x: getattr(x, "__name__", x)
)
@EXAMPLES
@given(owner_id=int64s, key=texts, value=texts)
def test_attr_request_decodes(
    codec: ModuleType, request_class: Any, field: str, owner_id: int, key: str, value: str
) -> None:
    data = request_class(**{field: owner_id}, key=key, value=value).SerializeToString()
    assert codec.decode_attr_request(data) == (owner_id, key, value)


@EXAMPLES
@given(directions=st.lists(enums, max_size=6), name=texts)
def test_create_new_study_request_decodes(codec: ModuleType, directions: list, name: str) -> None:
    data = pb.CreateNewStudyRequest(directions=directions, study_name=name).SerializeToString()
    assert codec.decode_create_new_study_request(data) == (directions, name)


@EXAMPLES
@given(name=texts)
def test_name_request_decodes(codec: ModuleType, name: str) -> None:
    data = pb.GetStudyIdFromNameRequest(study_name=name).SerializeToString()
    assert codec.decode_name_request(data) == name


def test_empty_request_decodes(codec: ModuleType) -> None:
    assert codec.decode_empty_request(pb.GetAllStudiesRequest().SerializeToString()) is None


@EXAMPLES
@given(study_id=int64s, row=trial_rows(), is_none=st.booleans(), present=st.booleans())
def test_create_new_trial_request_decodes(
    codec: ModuleType, study_id: int, row: TrialRow, is_none: bool, present: bool
) -> None:
    request = pb.CreateNewTrialRequest(study_id=study_id, template_trial_is_none=is_none)
    if present:
        request.template_trial.CopyFrom(to_proto_trial(row))
    decoded_id, template = codec.decode_create_new_trial_request(request.SerializeToString())
    assert decoded_id == study_id
    if is_none:
        assert template is None
    else:
        assert same(template, row if present else empty_trial_row())


@EXAMPLES
@given(trial_id=int64s, name=texts, value=doubles, distribution=texts)
def test_set_trial_param_request_decodes(
    codec: ModuleType, trial_id: int, name: str, value: float, distribution: str
) -> None:
    data = pb.SetTrialParameterRequest(
        trial_id=trial_id, param_name=name, param_value_internal=value, distribution=distribution
    ).SerializeToString()
    assert same(codec.decode_set_trial_param_request(data), (trial_id, name, value, distribution))


@EXAMPLES
@given(study_id=int64s, number=int64s)
def test_trial_number_request_decodes(codec: ModuleType, study_id: int, number: int) -> None:
    data = pb.GetTrialIdFromStudyIdTrialNumberRequest(
        study_id=study_id, trial_number=number
    ).SerializeToString()
    assert codec.decode_trial_number_request(data) == (study_id, number)


@EXAMPLES
@given(trial_id=int64s, state=enums, values=st.lists(doubles, max_size=5))
def test_set_trial_state_values_request_decodes(
    codec: ModuleType, trial_id: int, state: int, values: list[float]
) -> None:
    data = pb.SetTrialStateValuesRequest(
        trial_id=trial_id, state=state, values=values
    ).SerializeToString()
    assert same(codec.decode_set_trial_state_values_request(data), (trial_id, state, values))


@EXAMPLES
@given(trial_id=int64s, step=int64s, value=doubles)
def test_set_trial_intermediate_value_request_decodes(
    codec: ModuleType, trial_id: int, step: int, value: float
) -> None:
    data = pb.SetTrialIntermediateValueRequest(
        trial_id=trial_id, step=step, intermediate_value=value
    ).SerializeToString()
    assert same(codec.decode_set_trial_intermediate_value_request(data), (trial_id, step, value))


@EXAMPLES
@given(study_id=int64s, included=st.lists(int64s, max_size=50), greater_than=int64s)
def test_get_trials_request_decodes(
    codec: ModuleType, study_id: int, included: list[int], greater_than: int
) -> None:
    data = pb.GetTrialsRequest(
        study_id=study_id, included_trial_ids=included, trial_id_greater_than=greater_than
    ).SerializeToString()
    assert codec.decode_get_trials_request(data) == (study_id, included, greater_than)


@EXAMPLES
@given(row=trial_rows(max_params=40))
def test_trial_decodes(codec: ModuleType, row: TrialRow) -> None:
    assert same(codec.decode_trial(to_proto_trial(row).SerializeToString()), row)


# -- random non-canonical encodings: ours read what api_pb2 reads -----------------


@pytest.mark.parametrize("decoder", DECODERS, ids=str)
@settings(max_examples=60, deadline=None)
@given(rng=st.randoms(use_true_random=False))
def test_non_canonical_encoding_decodes_as_protobuf_reads_it(
    codec: ModuleType, decoder: Decoder, rng: random.Random
) -> None:
    data = random_message(rng, decoder)
    ours, theirs = outcome(decoder, codec, data), protobuf_outcome(decoder, data)
    assert ours[0] == theirs[0], (ours, theirs)
    assert same(ours[1], theirs[1]) or ours[0] == "error"
