"""shardproxy.wire is Optuna's StorageService contract: its methods, field numbers
and wire types equal those of Optuna's shipped `api_pb2` descriptors and of
proto/storage.proto, and the Cython twin (_codec/wire.pxd) equals the module.

Either source drifting (Optuna renumbers or adds a field, someone edits the
.proto or a constant) fails here before a client sees a misread message.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy import rows, wire

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "storage.proto"
WIRE_PXD = ROOT / "_codec" / "wire.pxd"

# Every field constant of shardproxy.wire and the fields, as "Message.field" (a map
# entry's as "Message.field.key" / ".value"), it stands for.
_STRING_MAPS = (
    "GetStudyUserAttributesReply.user_attributes",
    "GetStudySystemAttributesReply.system_attributes",
    "Study.user_attributes",
    "Study.system_attributes",
    "Trial.distributions",
    "Trial.user_attributes",
    "Trial.system_attributes",
)
NAMED: dict[str, tuple[str, ...]] = {
    "ID_REQUEST_ID": (
        "DeleteStudyRequest.study_id",
        "GetStudyNameFromIdRequest.study_id",
        "GetStudyDirectionsRequest.study_id",
        "GetStudyUserAttributesRequest.study_id",
        "GetStudySystemAttributesRequest.study_id",
        "GetTrialRequest.trial_id",
    ),
    "ATTR_REQUEST_OWNER_ID": (
        "SetStudyUserAttributeRequest.study_id",
        "SetStudySystemAttributeRequest.study_id",
        "SetTrialUserAttributeRequest.trial_id",
        "SetTrialSystemAttributeRequest.trial_id",
    ),
    "ATTR_REQUEST_KEY": (
        "SetStudyUserAttributeRequest.key",
        "SetStudySystemAttributeRequest.key",
        "SetTrialUserAttributeRequest.key",
        "SetTrialSystemAttributeRequest.key",
    ),
    "ATTR_REQUEST_VALUE": (
        "SetStudyUserAttributeRequest.value",
        "SetStudySystemAttributeRequest.value",
        "SetTrialUserAttributeRequest.value",
        "SetTrialSystemAttributeRequest.value",
    ),
    "NAME_REQUEST_STUDY_NAME": ("GetStudyIdFromNameRequest.study_name",),
    "CREATE_STUDY_REQUEST_DIRECTIONS": ("CreateNewStudyRequest.directions",),
    "CREATE_STUDY_REQUEST_STUDY_NAME": ("CreateNewStudyRequest.study_name",),
    "CREATE_TRIAL_REQUEST_STUDY_ID": ("CreateNewTrialRequest.study_id",),
    "CREATE_TRIAL_REQUEST_TEMPLATE": ("CreateNewTrialRequest.template_trial",),
    "CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE": ("CreateNewTrialRequest.template_trial_is_none",),
    "SET_PARAM_REQUEST_TRIAL_ID": ("SetTrialParameterRequest.trial_id",),
    "SET_PARAM_REQUEST_NAME": ("SetTrialParameterRequest.param_name",),
    "SET_PARAM_REQUEST_VALUE": ("SetTrialParameterRequest.param_value_internal",),
    "SET_PARAM_REQUEST_DISTRIBUTION": ("SetTrialParameterRequest.distribution",),
    "TRIAL_NUMBER_REQUEST_STUDY_ID": ("GetTrialIdFromStudyIdTrialNumberRequest.study_id",),
    "TRIAL_NUMBER_REQUEST_NUMBER": ("GetTrialIdFromStudyIdTrialNumberRequest.trial_number",),
    "STATE_VALUES_REQUEST_TRIAL_ID": ("SetTrialStateValuesRequest.trial_id",),
    "STATE_VALUES_REQUEST_STATE": ("SetTrialStateValuesRequest.state",),
    "STATE_VALUES_REQUEST_VALUES": ("SetTrialStateValuesRequest.values",),
    "INTERMEDIATE_REQUEST_TRIAL_ID": ("SetTrialIntermediateValueRequest.trial_id",),
    "INTERMEDIATE_REQUEST_STEP": ("SetTrialIntermediateValueRequest.step",),
    "INTERMEDIATE_REQUEST_VALUE": ("SetTrialIntermediateValueRequest.intermediate_value",),
    "GET_TRIALS_REQUEST_STUDY_ID": ("GetTrialsRequest.study_id",),
    "GET_TRIALS_REQUEST_INCLUDED_IDS": ("GetTrialsRequest.included_trial_ids",),
    "GET_TRIALS_REQUEST_ID_GREATER_THAN": ("GetTrialsRequest.trial_id_greater_than",),
    "ID_REPLY_ID": (
        "CreateNewStudyReply.study_id",
        "GetStudyIdFromNameReply.study_id",
        "CreateNewTrialReply.trial_id",
        "GetTrialIdFromStudyIdTrialNumberReply.trial_id",
    ),
    "NAME_REPLY_STUDY_NAME": ("GetStudyNameFromIdReply.study_name",),
    "DIRECTIONS_REPLY_DIRECTIONS": ("GetStudyDirectionsReply.directions",),
    "ATTRS_REPLY_ATTRS": (
        "GetStudyUserAttributesReply.user_attributes",
        "GetStudySystemAttributesReply.system_attributes",
    ),
    "ALL_STUDIES_REPLY_STUDIES": ("GetAllStudiesReply.studies",),
    "STATE_VALUES_REPLY_UPDATED": ("SetTrialStateValuesReply.trial_updated",),
    "TRIAL_REPLY_TRIAL": ("GetTrialReply.trial",),
    "TRIALS_REPLY_TRIALS": ("GetTrialsReply.trials",),
    "STUDY_ID": ("Study.study_id",),
    "STUDY_NAME": ("Study.study_name",),
    "STUDY_DIRECTIONS": ("Study.directions",),
    "STUDY_USER_ATTRS": ("Study.user_attributes",),
    "STUDY_SYSTEM_ATTRS": ("Study.system_attributes",),
    "TRIAL_ID": ("Trial.trial_id",),
    "TRIAL_NUMBER": ("Trial.number",),
    "TRIAL_STATE": ("Trial.state",),
    "TRIAL_VALUES": ("Trial.values",),
    "TRIAL_DATETIME_START": ("Trial.datetime_start",),
    "TRIAL_DATETIME_COMPLETE": ("Trial.datetime_complete",),
    "TRIAL_PARAMS": ("Trial.params",),
    "TRIAL_DISTRIBUTIONS": ("Trial.distributions",),
    "TRIAL_USER_ATTRS": ("Trial.user_attributes",),
    "TRIAL_SYSTEM_ATTRS": ("Trial.system_attributes",),
    "TRIAL_INTERMEDIATE_VALUES": ("Trial.intermediate_values",),
    "MAP_STRING_KEY": ("Trial.params.key", *(f"{m}.key" for m in _STRING_MAPS)),
    "MAP_INT64_KEY": ("Trial.intermediate_values.key",),
    "MAP_STRING_VALUE": tuple(f"{m}.value" for m in _STRING_MAPS),
    "MAP_DOUBLE_VALUE": ("Trial.params.value", "Trial.intermediate_values.value"),
}

WIRE_TYPES = {
    "VARINT": 0,
    "FIXED64": 1,
    "LENGTH": 2,
    "START_GROUP": 3,
    "END_GROUP": 4,
    "FIXED32": 5,
}


@dataclass(frozen=True)
class Contract:
    """What one source says: service, methods, fields and enums, in plain values."""

    service: str
    methods: tuple[tuple[str, str, str], ...]  # (name, request message, reply message)
    fields: dict[str, tuple[int, int]]  # "Message.field[.key|.value]" -> (number, wire type)
    enums: dict[str, tuple[tuple[str, int], ...]]


# -- Optuna's descriptors ---------------------------------------------------------

_VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}
_FIXED64_TYPES = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_FIXED32_TYPES = {
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)  # protobuf before 5.29


def _descriptor_wire_type(field: FieldDescriptor) -> int:
    """The wire type a protobuf encoder writes the field with."""
    if _is_repeated(field) and field.is_packed:
        return wire.LENGTH
    if field.type in _VARINT_TYPES:
        return wire.VARINT
    if field.type in _FIXED64_TYPES:
        return wire.FIXED64
    if field.type in _FIXED32_TYPES:
        return wire.FIXED32
    assert field.type in (
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BYTES,
        FieldDescriptor.TYPE_MESSAGE,
    ), field.full_name
    return wire.LENGTH


def _descriptor_fields(message: Descriptor, into: dict[str, tuple[int, int]]) -> None:
    for field in message.fields:
        path = f"{message.name}.{field.name}"
        into[path] = (field.number, _descriptor_wire_type(field))
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            for part in entry.fields:
                into[f"{path}.{part.name}"] = (part.number, _descriptor_wire_type(part))


def _optuna_contract() -> Contract:
    file = api_pb2.DESCRIPTOR
    (service,) = file.services_by_name.values()
    fields: dict[str, tuple[int, int]] = {}
    for message in file.message_types_by_name.values():
        _descriptor_fields(message, fields)
    return Contract(
        service=service.full_name,
        methods=tuple(
            (m.name, m.input_type.full_name, m.output_type.full_name) for m in service.methods
        ),
        fields=fields,
        enums={
            f"{file.package}.{name}": tuple((v.name, v.number) for v in enum.values)
            for name, enum in file.enum_types_by_name.items()
        },
    )


# -- proto/storage.proto, read as text --------------------------------------------
# Enough of proto3 for this file; anything else in it (options, oneof, nested
# messages, imports) is refused rather than skipped, so it cannot hide a field.

_NAME = r"[A-Za-z_]\w*"
_PROTO_VARINT = {"int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool"}
_PROTO_FIXED64 = {"double", "fixed64", "sfixed64"}
_PROTO_FIXED32 = {"float", "fixed32", "sfixed32"}
_PROTO_LENGTH = {"string", "bytes"}
_FIELD = re.compile(
    rf"(?P<repeated>repeated\s+)?"
    rf"(?:map\s*<\s*(?P<key>{_NAME})\s*,\s*(?P<value>{_NAME})\s*>|(?P<type>{_NAME}))"
    rf"\s+(?P<name>{_NAME})\s*=\s*(?P<number>\d+)"
)
_RPC = re.compile(
    rf"rpc\s+(?P<name>{_NAME})\s*\(\s*(?P<request>{_NAME})\s*\)"
    rf"\s*returns\s*\(\s*(?P<reply>{_NAME})\s*\)"
)
_ENUM_VALUE = re.compile(rf"(?P<name>{_NAME})\s*=\s*(?P<number>-?\d+)")
_BLOCK = re.compile(
    rf"(?P<kind>service|enum|message)\s+(?P<name>{_NAME})\s*\{{(?P<body>[^{{}}]*)\}}"
)
_HEADER = re.compile(rf"syntax\s*=\s*\"proto3\"|package\s+(?P<package>{_NAME})")


def _statements(body: str) -> list[str]:
    parts = [part.strip() for part in body.split(";")]
    assert not parts[-1], f"statement without ';': {parts[-1]!r}"
    return [" ".join(part.split()) for part in parts[:-1]]


def _proto_wire_type(type_name: str, repeated: bool, enums: Mapping[str, Any]) -> int:
    scalar = type_name in _PROTO_VARINT | _PROTO_FIXED64 | _PROTO_FIXED32 or type_name in enums
    if repeated and scalar:
        return wire.LENGTH  # proto3 packs repeated scalars unless told not to
    if type_name in _PROTO_VARINT or type_name in enums:
        return wire.VARINT
    if type_name in _PROTO_FIXED64:
        return wire.FIXED64
    if type_name in _PROTO_FIXED32:
        return wire.FIXED32
    return wire.LENGTH  # string, bytes, a message


def _proto_contract(text: str) -> Contract:
    text = re.sub(r"//[^\n]*", "", text)
    blocks = list(_BLOCK.finditer(text))
    outside = _statements(_BLOCK.sub("", text))
    package = None
    for statement in outside:
        match = _HEADER.fullmatch(statement)
        assert match, f"storage.proto: unexpected top-level statement {statement!r}"
        package = match["package"] or package
    assert package, "storage.proto declares no package"

    enums: dict[str, tuple[tuple[str, int], ...]] = {}
    for block in blocks:
        if block["kind"] == "enum":
            values = [_ENUM_VALUE.fullmatch(s) for s in _statements(block["body"])]
            assert all(values), f"storage.proto: unreadable enum {block['name']}"
            enums[block["name"]] = tuple((v["name"], int(v["number"])) for v in values if v)

    services = [b for b in blocks if b["kind"] == "service"]
    assert len(services) == 1, "storage.proto should declare exactly one service"
    methods = []
    for statement in _statements(services[0]["body"]):
        rpc = _RPC.fullmatch(statement)
        assert rpc, f"storage.proto: unreadable rpc {statement!r}"
        methods.append((rpc["name"], f"{package}.{rpc['request']}", f"{package}.{rpc['reply']}"))

    fields: dict[str, tuple[int, int]] = {}
    for block in blocks:
        if block["kind"] != "message":
            continue
        for statement in _statements(block["body"]):
            field = _FIELD.fullmatch(statement)
            assert field, f"storage.proto: unreadable field {statement!r} in {block['name']}"
            path = f"{block['name']}.{field['name']}"
            number = int(field["number"])
            if field["key"]:
                fields[path] = (number, wire.LENGTH)
                fields[f"{path}.key"] = (1, _proto_wire_type(field["key"], False, enums))
                fields[f"{path}.value"] = (2, _proto_wire_type(field["value"], False, enums))
            else:
                repeated = bool(field["repeated"])
                fields[path] = (number, _proto_wire_type(field["type"], repeated, enums))

    return Contract(
        service=f"{package}.{services[0]['name']}",
        methods=tuple(methods),
        fields=fields,
        enums={f"{package}.{name}": values for name, values in enums.items()},
    )


SOURCES = {
    "optuna api_pb2": _optuna_contract,
    "proto/storage.proto": lambda: _proto_contract(PROTO.read_text()),
}


@pytest.fixture(params=list(SOURCES), scope="module")
def contract(request: pytest.FixtureRequest) -> Contract:
    return SOURCES[request.param]()


# -- the checks ---------------------------------------------------------------------


def _field_constants() -> dict[str, int]:
    """The field numbers of shardproxy.wire: every int constant with a `_TAG` twin."""
    names = vars(wire)
    return {
        name: value
        for name, value in names.items()
        if name.isupper() and type(value) is int and f"{name}_TAG" in names
    }


def test_service_name(contract: Contract) -> None:
    assert wire.SERVICE == contract.service
    assert wire.method_path("GetTrial") == f"/{contract.service}/GetTrial"


def test_methods_in_order(contract: Contract) -> None:
    assert wire.METHODS == tuple(name for name, _, _ in contract.methods)
    assert wire.METHOD_INDEX == {name: i for i, (name, _, _) in enumerate(contract.methods)}


def test_each_method_takes_its_request_and_returns_its_reply(contract: Contract) -> None:
    package = contract.service.rsplit(".", 1)[0]
    for name, request, reply in contract.methods:
        assert (request, reply) == (f"{package}.{name}Request", f"{package}.{name}Reply")


def test_every_field_number_and_wire_type(contract: Contract) -> None:
    for name, paths in NAMED.items():
        number = getattr(wire, name)
        field_tag = getattr(wire, f"{name}_TAG")
        assert field_tag >> 3 == number, f"{name}_TAG is not the tag of field {name}"
        for path in paths:
            assert path in contract.fields, f"{path} ({name}) is not in the contract"
            expected_number, expected_wire_type = contract.fields[path]
            assert number == expected_number, f"{name}: {path} is field {expected_number}"
            assert field_tag & 7 == expected_wire_type, (
                f"{name}_TAG: {path} is written with wire type {expected_wire_type}"
            )


def test_every_field_of_the_contract_is_named(contract: Contract) -> None:
    """A field Optuna adds or the .proto gains must get a name (and a reader) here."""
    named = {path for paths in NAMED.values() for path in paths}
    assert set(contract.fields) == named


def test_the_table_covers_exactly_the_field_constants() -> None:
    assert set(_field_constants()) == set(NAMED)


def test_every_tag_takes_one_byte() -> None:
    """The encoders write each tag as a single byte."""
    for name in NAMED:
        assert 0 < getattr(wire, f"{name}_TAG") < 0x80, name


def test_wire_types() -> None:
    assert {name: getattr(wire, name) for name in WIRE_TYPES} == WIRE_TYPES


def test_trial_maps_are_numbered_in_a_row() -> None:
    """The decoders send fields TRIAL_PARAMS..TRIAL_INTERMEDIATE_VALUES to the map readers."""
    maps = [
        wire.TRIAL_PARAMS,
        wire.TRIAL_DISTRIBUTIONS,
        wire.TRIAL_USER_ATTRS,
        wire.TRIAL_SYSTEM_ATTRS,
        wire.TRIAL_INTERMEDIATE_VALUES,
    ]
    assert maps == list(range(wire.TRIAL_PARAMS, wire.TRIAL_INTERMEDIATE_VALUES + 1))
    scalars = [
        wire.TRIAL_ID,
        wire.TRIAL_NUMBER,
        wire.TRIAL_STATE,
        wire.TRIAL_VALUES,
        wire.TRIAL_DATETIME_START,
        wire.TRIAL_DATETIME_COMPLETE,
    ]
    assert not set(scalars) & set(maps)


def test_enum_values_the_codec_passes_through(contract: Contract) -> None:
    package = contract.service.rsplit(".", 1)[0]
    assert contract.enums[f"{package}.StudyDirection"] == tuple(
        (name, rows.DIRECTION_BY_NAME[name]) for name in rows.DIRECTION_NAMES
    )
    assert contract.enums[f"{package}.TrialState"] == tuple(
        (name, rows.STATE_BY_NAME[name]) for name in rows.STATE_NAMES
    )


def test_proto_file_and_optuna_agree() -> None:
    assert _proto_contract(PROTO.read_text()) == _optuna_contract()


def test_proto_reader_sees_a_drift() -> None:
    """The .proto check can fail: a field's type or number edited in the file is seen."""
    text = PROTO.read_text()
    retyped = text.replace("double param_value_internal = 3;", "float param_value_internal = 3;")
    renumbered = text.replace("int64 trial_number = 2;", "int64 trial_number = 4;")
    assert retyped != text and renumbered != text
    path = "SetTrialParameterRequest.param_value_internal"
    assert _proto_contract(retyped).fields[path] == (3, wire.FIXED32)
    path = "GetTrialIdFromStudyIdTrialNumberRequest.trial_number"
    assert _proto_contract(renumbered).fields[path] == (4, wire.VARINT)
    with pytest.raises(AssertionError, match="unreadable field"):
        _proto_contract(
            text.replace("bool trial_updated = 1;", "bool trial_updated = 1 [deprecated = true];")
        )


def test_the_service_serves_these_methods() -> None:
    from shardproxy import service

    assert getattr(service, "METHODS", wire.METHODS) == wire.METHODS


# -- the Cython twin -----------------------------------------------------------------


def _eval_constant(node: ast.expr, known: Mapping[str, int]) -> int:
    """An enum value of the .pxd: integers, earlier names, `<<` and `|`."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return known[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.LShift | ast.BitOr):
        left, right = _eval_constant(node.left, known), _eval_constant(node.right, known)
        return left << right if isinstance(node.op, ast.LShift) else left | right
    raise AssertionError(f"wire.pxd: unexpected expression {ast.unparse(node)!r}")


def _pxd_constants(text: str) -> dict[str, int]:
    """The `cdef enum` values of a .pxd, in order; any other declaration is refused."""
    constants: dict[str, int] = {}
    for line in text.splitlines():
        code = line.split("#", 1)[0].strip()
        if not code or re.fullmatch(rf"cdef enum(\s+{_NAME})?\s*:", code):
            continue
        assert line.startswith((" ", "\t")), f"wire.pxd: unexpected declaration {code!r}"
        statement = ast.parse(code).body[0]
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1
        target = statement.targets[0]
        assert isinstance(target, ast.Name)
        assert target.id not in constants, f"wire.pxd names {target.id} twice"
        constants[target.id] = _eval_constant(statement.value, constants)
    return constants


def test_cython_twin_equals_the_module() -> None:
    expected = {
        name: value for name, value in vars(wire).items() if name.isupper() and type(value) is int
    }
    assert _pxd_constants(WIRE_PXD.read_text()) == expected


def test_pxd_reader_sees_a_drift() -> None:
    """The twin check can fail: a changed number is seen, through the names built on it."""
    text = WIRE_PXD.read_text().replace("TRIAL_STATE = 3", "TRIAL_STATE = 4", 1)
    changed = _pxd_constants(text)
    assert changed["TRIAL_STATE"] == 4
    assert changed["TRIAL_STATE_TAG"] == wire.tag(4, wire.VARINT)
