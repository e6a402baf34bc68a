"""The pure codec's request decoders, and `decode_trial`: bytes in, plain values out.

The twin of _codec/requests.pxi. Each decoder reads the fields its handler needs
with the primitives of `reading`, matching field numbers named in shardproxy.wire;
a `Trial` (a CreateNewTrial template, or a whole message for `decode_trial`) is
gathered by `_TrialFields` into a shardproxy.rows.TrialRow.
"""

from __future__ import annotations

from shardproxy._codec_py.reading import (
    MAX_DEPTH,
    Buffer,
    DecodeError,
    as_bytes,
    as_int32,
    as_int64,
    read_bool,
    read_double,
    read_doubles,
    read_enum,
    read_int64,
    read_message,
    read_string,
    read_tag,
    read_varints,
    skip,
)
from shardproxy.rows import TrialRow
from shardproxy.wire import (
    ATTR_REQUEST_KEY,
    ATTR_REQUEST_OWNER_ID,
    ATTR_REQUEST_VALUE,
    CREATE_STUDY_REQUEST_DIRECTIONS,
    CREATE_STUDY_REQUEST_STUDY_NAME,
    CREATE_TRIAL_REQUEST_STUDY_ID,
    CREATE_TRIAL_REQUEST_TEMPLATE,
    CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE,
    GET_TRIALS_REQUEST_ID_GREATER_THAN,
    GET_TRIALS_REQUEST_INCLUDED_IDS,
    GET_TRIALS_REQUEST_STUDY_ID,
    ID_REQUEST_ID,
    INTERMEDIATE_REQUEST_STEP,
    INTERMEDIATE_REQUEST_TRIAL_ID,
    INTERMEDIATE_REQUEST_VALUE,
    MAP_DOUBLE_VALUE,
    MAP_INT64_KEY,
    MAP_STRING_KEY,
    MAP_STRING_VALUE,
    NAME_REQUEST_STUDY_NAME,
    SET_PARAM_REQUEST_DISTRIBUTION,
    SET_PARAM_REQUEST_NAME,
    SET_PARAM_REQUEST_TRIAL_ID,
    SET_PARAM_REQUEST_VALUE,
    STATE_VALUES_REQUEST_STATE,
    STATE_VALUES_REQUEST_TRIAL_ID,
    STATE_VALUES_REQUEST_VALUES,
    TRIAL_DATETIME_COMPLETE,
    TRIAL_DATETIME_START,
    TRIAL_DISTRIBUTIONS,
    TRIAL_ID,
    TRIAL_INTERMEDIATE_VALUES,
    TRIAL_NUMBER,
    TRIAL_NUMBER_REQUEST_NUMBER,
    TRIAL_NUMBER_REQUEST_STUDY_ID,
    TRIAL_PARAMS,
    TRIAL_STATE,
    TRIAL_SYSTEM_ATTRS,
    TRIAL_USER_ATTRS,
    TRIAL_VALUES,
)


def decode_id_request(data: Buffer) -> int:
    """The one int64 id of DeleteStudy, GetStudy*, GetTrial requests (and id replies)."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    value = 0
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == ID_REQUEST_ID:
            value, pos = read_int64(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return value


def decode_attr_request(data: Buffer) -> tuple[int, str, str]:
    """(id, key, value JSON text) of Set{Study,Trial}{User,System}AttributeRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    owner_id, key, value = 0, "", ""
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == ATTR_REQUEST_OWNER_ID:
            owner_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == ATTR_REQUEST_KEY:
            key, pos = read_string(data, pos, end, field, wire_type)
        elif field == ATTR_REQUEST_VALUE:
            value, pos = read_string(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return owner_id, key, value


def decode_name_request(data: Buffer) -> str:
    """The study name of GetStudyIdFromNameRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    name = ""
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == NAME_REQUEST_STUDY_NAME:
            name, pos = read_string(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return name


def decode_empty_request(data: Buffer) -> None:
    """Checks a message without fields (GetAllStudiesRequest): unknown fields are skipped."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)


def decode_create_new_study_request(data: Buffer) -> tuple[list[int], str]:
    """(directions, study name) of CreateNewStudyRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    directions: list[int] = []
    name = ""
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == CREATE_STUDY_REQUEST_DIRECTIONS:
            pos = read_varints(data, pos, end, field, wire_type, directions, as_int32)
        elif field == CREATE_STUDY_REQUEST_STUDY_NAME:
            name, pos = read_string(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return directions, name


def decode_create_new_trial_request(data: Buffer) -> tuple[int, TrialRow | None]:
    """(study id, template) of CreateNewTrialRequest, as Optuna's servicer reads it.

    The template is None iff `template_trial_is_none` is set; it is still checked.
    """
    data = as_bytes(data)
    pos, end = 0, len(data)
    study_id = 0
    template = _TrialFields()
    template_is_none = False
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == CREATE_TRIAL_REQUEST_STUDY_ID:
            study_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == CREATE_TRIAL_REQUEST_TEMPLATE:
            start, pos = read_message(data, pos, end, field, wire_type)
            template.merge(data, start, pos, MAX_DEPTH - 1)
        elif field == CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE:
            template_is_none, pos = read_bool(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, None if template_is_none else template.row()


def decode_set_trial_param_request(data: Buffer) -> tuple[int, str, float, str]:
    """(trial id, name, internal value, distribution JSON) of SetTrialParameterRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    trial_id, name, value, distribution = 0, "", 0.0, ""
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == SET_PARAM_REQUEST_TRIAL_ID:
            trial_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_NAME:
            name, pos = read_string(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_VALUE:
            value, pos = read_double(data, pos, end, field, wire_type)
        elif field == SET_PARAM_REQUEST_DISTRIBUTION:
            distribution, pos = read_string(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, name, value, distribution


def decode_trial_number_request(data: Buffer) -> tuple[int, int]:
    """(study id, trial number) of GetTrialIdFromStudyIdTrialNumberRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    study_id, number = 0, 0
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == TRIAL_NUMBER_REQUEST_STUDY_ID:
            study_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == TRIAL_NUMBER_REQUEST_NUMBER:
            number, pos = read_int64(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, number


def decode_set_trial_state_values_request(data: Buffer) -> tuple[int, int, list[float]]:
    """(trial id, state, values) of SetTrialStateValuesRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    trial_id, state = 0, 0
    values: list[float] = []
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == STATE_VALUES_REQUEST_TRIAL_ID:
            trial_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == STATE_VALUES_REQUEST_STATE:
            state, pos = read_enum(data, pos, end, field, wire_type)
        elif field == STATE_VALUES_REQUEST_VALUES:
            pos = read_doubles(data, pos, end, field, wire_type, values)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, state, values


def decode_set_trial_intermediate_value_request(data: Buffer) -> tuple[int, int, float]:
    """(trial id, step, value) of SetTrialIntermediateValueRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    trial_id, step, value = 0, 0, 0.0
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == INTERMEDIATE_REQUEST_TRIAL_ID:
            trial_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == INTERMEDIATE_REQUEST_STEP:
            step, pos = read_int64(data, pos, end, field, wire_type)
        elif field == INTERMEDIATE_REQUEST_VALUE:
            value, pos = read_double(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return trial_id, step, value


def decode_get_trials_request(data: Buffer) -> tuple[int, list[int], int]:
    """(study id, included trial ids, trial_id_greater_than) of GetTrialsRequest."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    study_id, id_greater_than = 0, 0
    included: list[int] = []
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == GET_TRIALS_REQUEST_STUDY_ID:
            study_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == GET_TRIALS_REQUEST_INCLUDED_IDS:
            pos = read_varints(data, pos, end, field, wire_type, included, as_int64)
        elif field == GET_TRIALS_REQUEST_ID_GREATER_THAN:
            id_greater_than, pos = read_int64(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, MAX_DEPTH)
    return study_id, included, id_greater_than


def decode_trial(data: Buffer) -> TrialRow:
    """A `Trial` message as a TrialRow; params joined with their distributions by name."""
    data = as_bytes(data)
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
            field, wire_type, pos = read_tag(data, pos, end)
            if field == TRIAL_ID:
                self.trial_id, pos = read_int64(data, pos, end, field, wire_type)
            elif field == TRIAL_NUMBER:
                self.number, pos = read_int64(data, pos, end, field, wire_type)
            elif field == TRIAL_STATE:
                self.state, pos = read_enum(data, pos, end, field, wire_type)
            elif field == TRIAL_VALUES:
                pos = read_doubles(data, pos, end, field, wire_type, self.values)
            elif field == TRIAL_DATETIME_START:
                self.datetime_start, pos = read_string(data, pos, end, field, wire_type)
            elif field == TRIAL_DATETIME_COMPLETE:
                self.datetime_complete, pos = read_string(data, pos, end, field, wire_type)
            elif TRIAL_PARAMS <= field <= TRIAL_INTERMEDIATE_VALUES:  # the five maps
                start, pos = read_message(data, pos, end, field, wire_type)
                self._merge_entry(field, data, start, pos, depth - 1)
            else:
                pos = skip(data, pos, end, field, wire_type, depth)

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
        field, wire_type, pos = read_tag(data, pos, end)
        if field == MAP_STRING_KEY:
            key, pos = read_string(data, pos, end, field, wire_type)
        elif field == MAP_STRING_VALUE:
            value, pos = read_string(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value


def _read_string_double_entry(
    data: bytes, pos: int, end: int, depth: int, into: dict[str, float]
) -> None:
    key, value = "", 0.0
    dropped = False
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == MAP_STRING_KEY:
            key, pos = read_string(data, pos, end, field, wire_type)
        elif field == MAP_DOUBLE_VALUE:
            value, pos = read_double(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value


def _read_int64_double_entry(
    data: bytes, pos: int, end: int, depth: int, into: dict[int, float]
) -> None:
    key, value = 0, 0.0
    dropped = False
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == MAP_INT64_KEY:
            key, pos = read_int64(data, pos, end, field, wire_type)
        elif field == MAP_DOUBLE_VALUE:
            value, pos = read_double(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, depth)
            dropped = True
    if not dropped:
        into[key] = value
