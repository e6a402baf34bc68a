"""The wire contract's names and numbers, named once.

Optuna's StorageService as proto/storage.proto declares it: the service, its 19
methods in the order of the file, and the number and wire type of every message
field the codecs (shardproxy/_codec_py/ and its compiled twin, which reads the
same values from _codec/wire.pxd) and the load generator read or write. Each
field has two names: `X`, its number, which decoders match after reading a tag;
and `X_TAG`, the number and the wire type the field is written with, which
encoders write and the load generator matches. tests/test_wire_contract.py holds
every value here to Optuna's shipped `api_pb2` descriptors and to
proto/storage.proto, and the Cython twin to this module.

Every tag here is below 0x80, so it takes one byte on the wire: the encoders write
it as one byte.
"""

from __future__ import annotations

SERVICE = "optuna.StorageService"

# The service's methods in the order of proto/storage.proto; a method's index is
# its identity on the forwarding channel between workers.
METHODS = (
    "CreateNewStudy",
    "DeleteStudy",
    "SetStudyUserAttribute",
    "SetStudySystemAttribute",
    "GetStudyIdFromName",
    "GetStudyNameFromId",
    "GetStudyDirections",
    "GetStudyUserAttributes",
    "GetStudySystemAttributes",
    "GetAllStudies",
    "CreateNewTrial",
    "SetTrialParameter",
    "GetTrialIdFromStudyIdTrialNumber",
    "SetTrialStateValues",
    "SetTrialIntermediateValue",
    "SetTrialUserAttribute",
    "SetTrialSystemAttribute",
    "GetTrial",
    "GetTrials",
)
METHOD_INDEX = {name: index for index, name in enumerate(METHODS)}


def method_path(method: str) -> str:
    """The path gRPC calls a method by: `/optuna.StorageService/GetTrial`."""
    return f"/{SERVICE}/{method}"


# Wire types: the low three bits of a tag.
VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def tag(field: int, wire_type: int) -> int:
    """A field's tag: its number and the wire type it is written with."""
    return field << 3 | wire_type


# A repeated scalar is written packed, as one LENGTH field; decoders accept it
# unpacked too. A map field is a repeated message of map entries.

# -- requests -------------------------------------------------------------------

# DeleteStudy, GetStudyNameFromId, GetStudyDirections, GetStudyUserAttributes,
# GetStudySystemAttributes and GetTrial requests: the one id they carry.
ID_REQUEST_ID = 1
ID_REQUEST_ID_TAG = tag(ID_REQUEST_ID, VARINT)

# Set{Study,Trial}{User,System}AttributeRequest: the study or trial id, key, JSON value.
ATTR_REQUEST_OWNER_ID = 1
ATTR_REQUEST_OWNER_ID_TAG = tag(ATTR_REQUEST_OWNER_ID, VARINT)
ATTR_REQUEST_KEY = 2
ATTR_REQUEST_KEY_TAG = tag(ATTR_REQUEST_KEY, LENGTH)
ATTR_REQUEST_VALUE = 3
ATTR_REQUEST_VALUE_TAG = tag(ATTR_REQUEST_VALUE, LENGTH)

# GetStudyIdFromNameRequest
NAME_REQUEST_STUDY_NAME = 1
NAME_REQUEST_STUDY_NAME_TAG = tag(NAME_REQUEST_STUDY_NAME, LENGTH)

# CreateNewStudyRequest
CREATE_STUDY_REQUEST_DIRECTIONS = 1
CREATE_STUDY_REQUEST_DIRECTIONS_TAG = tag(CREATE_STUDY_REQUEST_DIRECTIONS, LENGTH)
CREATE_STUDY_REQUEST_STUDY_NAME = 2
CREATE_STUDY_REQUEST_STUDY_NAME_TAG = tag(CREATE_STUDY_REQUEST_STUDY_NAME, LENGTH)

# CreateNewTrialRequest
CREATE_TRIAL_REQUEST_STUDY_ID = 1
CREATE_TRIAL_REQUEST_STUDY_ID_TAG = tag(CREATE_TRIAL_REQUEST_STUDY_ID, VARINT)
CREATE_TRIAL_REQUEST_TEMPLATE = 2
CREATE_TRIAL_REQUEST_TEMPLATE_TAG = tag(CREATE_TRIAL_REQUEST_TEMPLATE, LENGTH)
CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE = 3
CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE_TAG = tag(CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE, VARINT)

# SetTrialParameterRequest
SET_PARAM_REQUEST_TRIAL_ID = 1
SET_PARAM_REQUEST_TRIAL_ID_TAG = tag(SET_PARAM_REQUEST_TRIAL_ID, VARINT)
SET_PARAM_REQUEST_NAME = 2
SET_PARAM_REQUEST_NAME_TAG = tag(SET_PARAM_REQUEST_NAME, LENGTH)
SET_PARAM_REQUEST_VALUE = 3
SET_PARAM_REQUEST_VALUE_TAG = tag(SET_PARAM_REQUEST_VALUE, FIXED64)
SET_PARAM_REQUEST_DISTRIBUTION = 4
SET_PARAM_REQUEST_DISTRIBUTION_TAG = tag(SET_PARAM_REQUEST_DISTRIBUTION, LENGTH)

# GetTrialIdFromStudyIdTrialNumberRequest
TRIAL_NUMBER_REQUEST_STUDY_ID = 1
TRIAL_NUMBER_REQUEST_STUDY_ID_TAG = tag(TRIAL_NUMBER_REQUEST_STUDY_ID, VARINT)
TRIAL_NUMBER_REQUEST_NUMBER = 2
TRIAL_NUMBER_REQUEST_NUMBER_TAG = tag(TRIAL_NUMBER_REQUEST_NUMBER, VARINT)

# SetTrialStateValuesRequest
STATE_VALUES_REQUEST_TRIAL_ID = 1
STATE_VALUES_REQUEST_TRIAL_ID_TAG = tag(STATE_VALUES_REQUEST_TRIAL_ID, VARINT)
STATE_VALUES_REQUEST_STATE = 2
STATE_VALUES_REQUEST_STATE_TAG = tag(STATE_VALUES_REQUEST_STATE, VARINT)
STATE_VALUES_REQUEST_VALUES = 3
STATE_VALUES_REQUEST_VALUES_TAG = tag(STATE_VALUES_REQUEST_VALUES, LENGTH)

# SetTrialIntermediateValueRequest
INTERMEDIATE_REQUEST_TRIAL_ID = 1
INTERMEDIATE_REQUEST_TRIAL_ID_TAG = tag(INTERMEDIATE_REQUEST_TRIAL_ID, VARINT)
INTERMEDIATE_REQUEST_STEP = 2
INTERMEDIATE_REQUEST_STEP_TAG = tag(INTERMEDIATE_REQUEST_STEP, VARINT)
INTERMEDIATE_REQUEST_VALUE = 3
INTERMEDIATE_REQUEST_VALUE_TAG = tag(INTERMEDIATE_REQUEST_VALUE, FIXED64)

# GetTrialsRequest
GET_TRIALS_REQUEST_STUDY_ID = 1
GET_TRIALS_REQUEST_STUDY_ID_TAG = tag(GET_TRIALS_REQUEST_STUDY_ID, VARINT)
GET_TRIALS_REQUEST_INCLUDED_IDS = 2
GET_TRIALS_REQUEST_INCLUDED_IDS_TAG = tag(GET_TRIALS_REQUEST_INCLUDED_IDS, LENGTH)
GET_TRIALS_REQUEST_ID_GREATER_THAN = 3
GET_TRIALS_REQUEST_ID_GREATER_THAN_TAG = tag(GET_TRIALS_REQUEST_ID_GREATER_THAN, VARINT)

# -- replies --------------------------------------------------------------------

# CreateNewStudy, GetStudyIdFromName, CreateNewTrial and
# GetTrialIdFromStudyIdTrialNumber replies: the one id they carry.
ID_REPLY_ID = 1
ID_REPLY_ID_TAG = tag(ID_REPLY_ID, VARINT)

# GetStudyNameFromIdReply
NAME_REPLY_STUDY_NAME = 1
NAME_REPLY_STUDY_NAME_TAG = tag(NAME_REPLY_STUDY_NAME, LENGTH)

# GetStudyDirectionsReply
DIRECTIONS_REPLY_DIRECTIONS = 1
DIRECTIONS_REPLY_DIRECTIONS_TAG = tag(DIRECTIONS_REPLY_DIRECTIONS, LENGTH)

# GetStudyUserAttributesReply and GetStudySystemAttributesReply: the map of them.
ATTRS_REPLY_ATTRS = 1
ATTRS_REPLY_ATTRS_TAG = tag(ATTRS_REPLY_ATTRS, LENGTH)

# GetAllStudiesReply
ALL_STUDIES_REPLY_STUDIES = 1
ALL_STUDIES_REPLY_STUDIES_TAG = tag(ALL_STUDIES_REPLY_STUDIES, LENGTH)

# SetTrialStateValuesReply
STATE_VALUES_REPLY_UPDATED = 1
STATE_VALUES_REPLY_UPDATED_TAG = tag(STATE_VALUES_REPLY_UPDATED, VARINT)

# GetTrialReply
TRIAL_REPLY_TRIAL = 1
TRIAL_REPLY_TRIAL_TAG = tag(TRIAL_REPLY_TRIAL, LENGTH)

# GetTrialsReply
TRIALS_REPLY_TRIALS = 1
TRIALS_REPLY_TRIALS_TAG = tag(TRIALS_REPLY_TRIALS, LENGTH)

# -- Study ----------------------------------------------------------------------

STUDY_ID = 1
STUDY_ID_TAG = tag(STUDY_ID, VARINT)
STUDY_NAME = 2
STUDY_NAME_TAG = tag(STUDY_NAME, LENGTH)
STUDY_DIRECTIONS = 3
STUDY_DIRECTIONS_TAG = tag(STUDY_DIRECTIONS, LENGTH)
STUDY_USER_ATTRS = 4
STUDY_USER_ATTRS_TAG = tag(STUDY_USER_ATTRS, LENGTH)
STUDY_SYSTEM_ATTRS = 5
STUDY_SYSTEM_ATTRS_TAG = tag(STUDY_SYSTEM_ATTRS, LENGTH)

# -- Trial ----------------------------------------------------------------------

TRIAL_ID = 1
TRIAL_ID_TAG = tag(TRIAL_ID, VARINT)
TRIAL_NUMBER = 2
TRIAL_NUMBER_TAG = tag(TRIAL_NUMBER, VARINT)
TRIAL_STATE = 3
TRIAL_STATE_TAG = tag(TRIAL_STATE, VARINT)
TRIAL_VALUES = 4
TRIAL_VALUES_TAG = tag(TRIAL_VALUES, LENGTH)
TRIAL_DATETIME_START = 5
TRIAL_DATETIME_START_TAG = tag(TRIAL_DATETIME_START, LENGTH)
TRIAL_DATETIME_COMPLETE = 6
TRIAL_DATETIME_COMPLETE_TAG = tag(TRIAL_DATETIME_COMPLETE, LENGTH)
# The five maps are numbered in a row: decoders route TRIAL_PARAMS up to
# TRIAL_INTERMEDIATE_VALUES to the map entry readers with one range test.
TRIAL_PARAMS = 7
TRIAL_PARAMS_TAG = tag(TRIAL_PARAMS, LENGTH)
TRIAL_DISTRIBUTIONS = 8
TRIAL_DISTRIBUTIONS_TAG = tag(TRIAL_DISTRIBUTIONS, LENGTH)
TRIAL_USER_ATTRS = 9
TRIAL_USER_ATTRS_TAG = tag(TRIAL_USER_ATTRS, LENGTH)
TRIAL_SYSTEM_ATTRS = 10
TRIAL_SYSTEM_ATTRS_TAG = tag(TRIAL_SYSTEM_ATTRS, LENGTH)
TRIAL_INTERMEDIATE_VALUES = 11
TRIAL_INTERMEDIATE_VALUES_TAG = tag(TRIAL_INTERMEDIATE_VALUES, LENGTH)

# -- map entries ----------------------------------------------------------------

# Every map entry is `{1: key, 2: value}`; the wire type follows the key's and the
# value's type: map<string, string>, map<string, double>, map<int64, double>.
MAP_STRING_KEY = 1
MAP_STRING_KEY_TAG = tag(MAP_STRING_KEY, LENGTH)
MAP_INT64_KEY = 1
MAP_INT64_KEY_TAG = tag(MAP_INT64_KEY, VARINT)
MAP_STRING_VALUE = 2
MAP_STRING_VALUE_TAG = tag(MAP_STRING_VALUE, LENGTH)
MAP_DOUBLE_VALUE = 2
MAP_DOUBLE_VALUE_TAG = tag(MAP_DOUBLE_VALUE, FIXED64)
