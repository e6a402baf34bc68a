"""shardproxy.extension_wire is proto/client_extension.proto, written and read by hand.

The .proto is read here into a real protobuf descriptor (beside Optuna's shipped
api.proto, whose messages it wraps); the service, its methods in order and every
field number must match the module, and what the module writes must read back
through protobuf, and the other way round.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy import extension_wire as ext
from shardproxy._codec_py.reading import DecodeError
from shardproxy.wire import METHODS

PROTO = Path(__file__).resolve().parent.parent / "proto" / "client_extension.proto"
_SCALARS = {
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
}


def parsed() -> tuple[str, str, list[str], dict[str, list[tuple[bool, str, str, int]]]]:
    """(package, service, methods, {message: [(repeated, type, name, number)]})."""
    text = re.sub(r"//[^\n]*", "", PROTO.read_text())
    package = re.search(r"^package (\w+);", text, re.M).group(1)  # type: ignore[union-attr]
    service = re.search(r"^service (\w+)", text, re.M).group(1)  # type: ignore[union-attr]
    methods = re.findall(r"rpc (\w+)\(", text)
    messages = {
        name: [(bool(rep), kind, field, int(number)) for rep, kind, field, number in
               re.findall(r"(repeated )?([\w.]+) (\w+) = (\d+);", body)]
        for name, body in re.findall(r"^message (\w+) \{([^}]*)\}", text, re.M)
    }
    return package, service, methods, messages


@pytest.fixture(scope="module")
def classes() -> dict[str, Any]:
    """The .proto's messages as protobuf classes."""
    package, _, _, messages = parsed()
    pool = descriptor_pool.DescriptorPool()
    optunas = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(optunas)
    pool.Add(optunas)
    file = descriptor_pb2.FileDescriptorProto(
        name="client_extension.proto", package=package, syntax="proto3",
        dependency=[api_pb2.DESCRIPTOR.name])
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        for repeated, kind, field, number in fields:
            entry = message.field.add(name=field, number=number, label=(
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL))
            if kind in _SCALARS:
                entry.type = _SCALARS[kind]
            else:
                entry.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                entry.type_name = "." + kind
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{package}.{name}")) for name in messages}


def test_the_service_and_the_numbers_are_the_protos() -> None:
    package, service, methods, messages = parsed()
    assert f"{package}.{service}" == ext.EXTENSION_SERVICE
    assert tuple(methods) == ext.EXTENSION_METHODS
    assert [ext.EXTENSION_INDEX[m] for m in methods] == list(
        range(len(METHODS), len(METHODS) + len(methods)))
    numbers = {(m, f): n for m, fields in messages.items() for _, _, f, n in fields}
    assert numbers == {
        ("RecordHeartbeatRequest", "trial_id"): ext.HEARTBEAT_TRIAL_ID,
        ("GetStaleTrialIdsRequest", "study_id"): ext.STALE_STUDY_ID,
        ("GetStaleTrialIdsRequest", "grace_period"): ext.STALE_GRACE_PERIOD,
        ("GetStaleTrialIdsReply", "trial_ids"): ext.STALE_REPLY_TRIAL_IDS,
        ("CreateNewTrialOnceRequest", "request_key"): ext.ONCE_REQUEST_KEY,
        ("CreateNewTrialOnceRequest", "repeated"): ext.ONCE_REPEATED,
        ("CreateNewTrialOnceRequest", "request"): ext.ONCE_REQUEST,
        ("SetTrialStateValuesOnceRequest", "request_key"): ext.ONCE_REQUEST_KEY,
        ("SetTrialStateValuesOnceRequest", "repeated"): ext.ONCE_REPEATED,
        ("SetTrialStateValuesOnceRequest", "request"): ext.ONCE_REQUEST,
    }


@pytest.mark.parametrize("trial_id", [0, 1, 2**31, 2**63 - 1, -5])
def test_heartbeat_requests_read_back_both_ways(classes: dict[str, Any], trial_id: int) -> None:
    kind = classes["RecordHeartbeatRequest"]
    assert kind.FromString(ext.encode_heartbeat_request(trial_id)).trial_id == trial_id
    assert ext.decode_heartbeat_request(kind(trial_id=trial_id).SerializeToString()) == (
        trial_id,)


def test_stale_requests_and_replies_read_back_both_ways(classes: dict[str, Any]) -> None:
    request = classes["GetStaleTrialIdsRequest"].FromString(ext.encode_stale_request(7, 2.5))
    assert (request.study_id, request.grace_period) == (7, 2.5)
    theirs = classes["GetStaleTrialIdsRequest"](study_id=9, grace_period=0.25)
    assert ext.decode_stale_request(theirs.SerializeToString()) == (9, 0.25)
    for ids in ([], [1], [3, 2**40, 5]):
        reply = classes["GetStaleTrialIdsReply"].FromString(ext.encode_stale_reply(ids))
        assert list(reply.trial_ids) == ids
        assert ext.decode_stale_reply(
            classes["GetStaleTrialIdsReply"](trial_ids=ids).SerializeToString()) == ids
    with pytest.raises(DecodeError):
        ext.decode_stale_request(classes["GetStaleTrialIdsRequest"](study_id=1)
                                 .SerializeToString())  # no grace period


@pytest.mark.parametrize("repeated", [False, True])
def test_once_requests_read_back_both_ways(classes: dict[str, Any], repeated: bool) -> None:
    inner = api_pb2.SetTrialStateValuesRequest(trial_id=4, state=api_pb2.COMPLETE, values=[1.5])
    data = ext.encode_once_request("a-key", repeated, inner.SerializeToString())
    message = classes["SetTrialStateValuesOnceRequest"].FromString(data)
    assert (message.request_key, message.repeated) == ("a-key", repeated)
    assert message.request.SerializeToString() == inner.SerializeToString()
    theirs = classes["CreateNewTrialOnceRequest"](request_key="k", repeated=repeated)
    theirs.request.MergeFromString(
        api_pb2.CreateNewTrialRequest(study_id=3, template_trial_is_none=True).SerializeToString()
    )
    key, again, wrapped = ext.decode_once_request(theirs.SerializeToString())
    assert (key, again) == ("k", repeated)
    assert api_pb2.CreateNewTrialRequest.FromString(wrapped).study_id == 3
