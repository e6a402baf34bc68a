"""Every error path answers with the status code Optuna's client expects, and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.study import StudyDirection
from optuna.trial import TrialState

from shardproxy.wire import METHODS, method_path
from tests.proxies import proxy_client, running_workers

MINIMIZE = [StudyDirection.MINIMIZE]


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[int]:
    with running_workers(sqlite_url, workers=request.param) as workers:
        yield workers[0].port


@pytest.fixture
def client(server: int) -> Iterator[GrpcStorageProxy]:
    with proxy_client(server) as storage:
        yield storage


@pytest.fixture
def channel(server: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as chan:
        yield chan


def call_raw(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    return channel.unary_unary(method_path(method))(request, timeout=30)


def status_of(channel: grpc.Channel, method: str, request: bytes) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call_raw(channel, method, request)
    return info.value.code()


def snapshot(client: GrpcStorageProxy) -> list[object]:
    """Everything the client can see, to prove a failed call changed nothing."""
    state: list[object] = []
    for study in client.get_all_studies():
        state.append((study._study_id, study.study_name, study.user_attrs, study.system_attrs))
        state.extend(client.get_all_trials(study._study_id))
    return state


def test_duplicate_study_name_is_already_exists(client: GrpcStorageProxy) -> None:
    client.create_new_study(MINIMIZE, "taken")
    with pytest.raises(DuplicatedStudyError):
        client.create_new_study(MINIMIZE, "taken")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.delete_study(999),
        lambda s: s.set_study_user_attr(999, "k", 1),
        lambda s: s.set_study_system_attr(999, "k", 1),
        lambda s: s.get_study_id_from_name("nobody"),
        lambda s: s.get_study_name_from_id(999),
        lambda s: s.get_study_directions(999),
        lambda s: s.get_study_user_attrs(999),
        lambda s: s.get_study_system_attrs(999),
        lambda s: s.create_new_trial(999),
        lambda s: s.set_trial_param(999, "x", 0.5, FloatDistribution(0, 1)),
        lambda s: s.get_trial_id_from_study_id_trial_number(999, 0),
        lambda s: s.set_trial_state_values(999, TrialState.COMPLETE, [1.0]),
        lambda s: s.set_trial_intermediate_value(999, 0, 1.0),
        lambda s: s.set_trial_user_attr(999, "k", 1),
        lambda s: s.set_trial_system_attr(999, "k", 1),
        lambda s: s.get_trial(999),
        lambda s: s.get_all_trials(999),
    ],
)
def test_unknown_ids_are_not_found(client: GrpcStorageProxy, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyError):
        call(client)


def test_trial_number_of_other_study_is_not_found(client: GrpcStorageProxy) -> None:
    study_id = client.create_new_study(MINIMIZE)
    client.create_new_trial(study_id)
    with pytest.raises(KeyError):
        client.get_trial_id_from_study_id_trial_number(study_id, 1)


@pytest.mark.parametrize(
    "update",
    [
        lambda s, t: s.set_trial_param(t, "y", 0.5, FloatDistribution(0, 1)),
        lambda s, t: s.set_trial_state_values(t, TrialState.COMPLETE, [2.0]),
        lambda s, t: s.set_trial_intermediate_value(t, 3, 1.0),
        lambda s, t: s.set_trial_user_attr(t, "k", 1),
        lambda s, t: s.set_trial_system_attr(t, "k", 1),
    ],
)
def test_finished_trial_refuses_updates(client: GrpcStorageProxy, update) -> None:  # type: ignore[no-untyped-def]
    study_id = client.create_new_study(MINIMIZE)
    trial_id = client.create_new_trial(study_id)
    client.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    before = snapshot(client)
    with pytest.raises(UpdateFinishedTrialError):
        update(client, trial_id)
    assert snapshot(client) == before


def test_incompatible_distribution_is_value_error(client: GrpcStorageProxy) -> None:
    study_id = client.create_new_study(MINIMIZE)
    first = client.create_new_trial(study_id)
    client.set_trial_param(first, "x", 0.5, FloatDistribution(0, 1))
    second = client.create_new_trial(study_id)
    before = snapshot(client)
    with pytest.raises(ValueError):
        client.set_trial_param(second, "x", 0, CategoricalDistribution(["a", "b"]))
    assert snapshot(client) == before


def test_waiting_to_running_only_once(client: GrpcStorageProxy) -> None:
    study = optuna.create_study(storage=client)
    study.enqueue_trial({"x": 1.0})
    trial_id = client.get_all_trials(study._study_id)[0]._trial_id
    assert client.set_trial_state_values(trial_id, TrialState.RUNNING) is True
    assert client.set_trial_state_values(trial_id, TrialState.RUNNING) is False


def valid_requests(study_id: int, trial_id: int) -> dict[str, bytes]:
    """A valid request of every method, encoded by Optuna's own classes."""
    attr = {"study_id": study_id, "key": "k", "value": "1"}
    trial_attr = {"trial_id": trial_id, "key": "k", "value": "1"}
    distribution = optuna.distributions.distribution_to_json(FloatDistribution(0, 1))
    messages = {
        "CreateNewStudy": api_pb2.CreateNewStudyRequest(directions=[0], study_name="n"),
        "DeleteStudy": api_pb2.DeleteStudyRequest(study_id=study_id),
        "SetStudyUserAttribute": api_pb2.SetStudyUserAttributeRequest(**attr),
        "SetStudySystemAttribute": api_pb2.SetStudySystemAttributeRequest(**attr),
        "GetStudyIdFromName": api_pb2.GetStudyIdFromNameRequest(study_name="n"),
        "GetStudyNameFromId": api_pb2.GetStudyNameFromIdRequest(study_id=study_id),
        "GetStudyDirections": api_pb2.GetStudyDirectionsRequest(study_id=study_id),
        "GetStudyUserAttributes": api_pb2.GetStudyUserAttributesRequest(study_id=study_id),
        "GetStudySystemAttributes": api_pb2.GetStudySystemAttributesRequest(study_id=study_id),
        "GetAllStudies": api_pb2.GetAllStudiesRequest(),
        "CreateNewTrial": api_pb2.CreateNewTrialRequest(
            study_id=study_id, template_trial_is_none=True
        ),
        "SetTrialParameter": api_pb2.SetTrialParameterRequest(
            trial_id=trial_id, param_name="x", param_value_internal=0.5,
            distribution=distribution,
        ),
        "GetTrialIdFromStudyIdTrialNumber": api_pb2.GetTrialIdFromStudyIdTrialNumberRequest(
            study_id=study_id, trial_number=0
        ),
        "SetTrialStateValues": api_pb2.SetTrialStateValuesRequest(
            trial_id=trial_id, state=api_pb2.COMPLETE, values=[1.0]
        ),
        "SetTrialIntermediateValue": api_pb2.SetTrialIntermediateValueRequest(
            trial_id=trial_id, step=1, intermediate_value=1.0
        ),
        "SetTrialUserAttribute": api_pb2.SetTrialUserAttributeRequest(**trial_attr),
        "SetTrialSystemAttribute": api_pb2.SetTrialSystemAttributeRequest(**trial_attr),
        "GetTrial": api_pb2.GetTrialRequest(trial_id=trial_id),
        "GetTrials": api_pb2.GetTrialsRequest(study_id=study_id),
    }
    assert set(messages) == set(METHODS)
    return {name: message.SerializeToString() for name, message in messages.items()}


# Each is malformed for every message of the service: a truncated varint, a length
# running past the end, field 1 with the wrong wire type, and invalid UTF-8 in a
# string field (field 2 of the attribute and parameter requests; field 1 or 2 of
# the others is either an int or also covered by the cases before).
MALFORMED = {
    "truncated-varint": b"\x08\xff",
    "length-past-end": b"\x12\x05ab",
    "wrong-wire-type": b"\x0d\x00\x00\x00\x00",
    "varint-overflow": b"\x08" + b"\xff" * 10 + b"\x01",
}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "GetAllStudies"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_invalid_argument_and_writes_nothing(
    client: GrpcStorageProxy, channel: grpc.Channel, method: str, case: str
) -> None:
    study_id = client.create_new_study(MINIMIZE, "n0")
    client.create_new_trial(study_id)
    before = snapshot(client)
    assert status_of(channel, method, MALFORMED[case]) == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(client) == before


def test_malformed_get_all_studies_is_invalid_argument(channel: grpc.Channel) -> None:
    assert status_of(channel, "GetAllStudies", b"\x12\x05ab") == grpc.StatusCode.INVALID_ARGUMENT


def test_valid_raw_requests_are_accepted(client: GrpcStorageProxy, channel: grpc.Channel) -> None:
    """The raw-request helper itself works: the same bytes, unbroken, succeed."""
    study_id = client.create_new_study(MINIMIZE)
    trial_id = client.create_new_trial(study_id)
    requests = valid_requests(study_id, trial_id)
    # Study deletion and the lookup of a name nobody took would end the walk early;
    # finishing the trial comes last so the other trial writes are still allowed.
    walk = [m for m in METHODS if m not in ("DeleteStudy", "GetStudyIdFromName")]
    walk.sort(key=lambda method: method == "SetTrialStateValues")
    for method in walk:
        call_raw(channel, method, requests[method])
    assert client.get_trial(trial_id).state == TrialState.COMPLETE


@pytest.mark.parametrize(
    "method, request_bytes",
    [
        ("SetStudyUserAttribute", api_pb2.SetStudyUserAttributeRequest(key="k", value="{oops")),
        ("SetStudySystemAttribute", api_pb2.SetStudySystemAttributeRequest(key="k", value="")),
        ("SetTrialUserAttribute", api_pb2.SetTrialUserAttributeRequest(key="k", value="[1,")),
        ("SetTrialSystemAttribute", api_pb2.SetTrialSystemAttributeRequest(key="k", value="x")),
        ("SetTrialParameter", api_pb2.SetTrialParameterRequest(
            param_name="x", param_value_internal=0.5, distribution='{"name": "Nope"}')),
        ("SetTrialParameter", api_pb2.SetTrialParameterRequest(
            param_name="x", param_value_internal=0.5, distribution="not json")),
        ("SetTrialStateValues", api_pb2.SetTrialStateValuesRequest(state=7)),
        ("CreateNewStudy", api_pb2.CreateNewStudyRequest(directions=[5], study_name="d")),
        ("CreateNewStudy", api_pb2.CreateNewStudyRequest(directions=[], study_name="e")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_values_are_invalid_argument_and_write_nothing(
    client: GrpcStorageProxy, channel: grpc.Channel, method: str, request_bytes: object
) -> None:
    study_id = client.create_new_study(MINIMIZE)
    trial_id = client.create_new_trial(study_id)
    message = request_bytes
    for field, value in (("study_id", study_id), ("trial_id", trial_id)):
        if field in message.DESCRIPTOR.fields_by_name:  # type: ignore[attr-defined]
            setattr(message, field, value)
    before = snapshot(client)
    code = status_of(channel, method, message.SerializeToString())  # type: ignore[attr-defined]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(client) == before


@pytest.mark.parametrize(
    "method, request_bytes",
    [
        ("CreateNewStudy", b"\x08\x00\x12\x02\xff\xfe"),
        ("GetStudyIdFromName", b"\x0a\x02\xff\xfe"),
        ("SetStudyUserAttribute", b"\x08\x01\x12\x02\xff\xfe\x1a\x011"),
        ("SetTrialUserAttribute", b"\x08\x01\x12\x01k\x1a\x02\xc3\x28"),
        ("SetTrialParameter", b"\x08\x01\x12\x02\xed\xa0"),
    ],
)
def test_invalid_utf8_is_invalid_argument(
    client: GrpcStorageProxy, channel: grpc.Channel, method: str, request_bytes: bytes
) -> None:
    study_id = client.create_new_study(MINIMIZE)
    client.create_new_trial(study_id)
    before = snapshot(client)
    assert status_of(channel, method, request_bytes) == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(client) == before
