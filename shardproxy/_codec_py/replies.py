"""The pure codec's reply encoders: row values in, reply bytes out.

The twin of _codec/replies.pxi. Each encoder writes its message's fields with the
helpers of `writing`, in field-number order as protobuf does, and joins the pieces
once; an already encoded `Study` or `Trial` is copied, never re-encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shardproxy._codec_py.reading import Buffer
from shardproxy._codec_py.writing import (
    ONE_BYTE,
    double_entry,
    enum_field,
    int64_field,
    packed_doubles,
    packed_enums,
    step_entry,
    string_entry,
    string_field,
    varint,
)
from shardproxy.rows import StudyRow, TrialRow
from shardproxy.wire import (
    ALL_STUDIES_REPLY_STUDIES_TAG,
    ATTRS_REPLY_ATTRS_TAG,
    DIRECTIONS_REPLY_DIRECTIONS_TAG,
    ID_REPLY_ID_TAG,
    NAME_REPLY_STUDY_NAME_TAG,
    STATE_VALUES_REPLY_UPDATED_TAG,
    STUDY_DIRECTIONS_TAG,
    STUDY_ID_TAG,
    STUDY_NAME_TAG,
    STUDY_SYSTEM_ATTRS_TAG,
    STUDY_USER_ATTRS_TAG,
    TRIAL_DATETIME_COMPLETE_TAG,
    TRIAL_DATETIME_START_TAG,
    TRIAL_DISTRIBUTIONS_TAG,
    TRIAL_ID_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_PARAMS_TAG,
    TRIAL_REPLY_TRIAL_TAG,
    TRIAL_STATE_TAG,
    TRIAL_SYSTEM_ATTRS_TAG,
    TRIAL_USER_ATTRS_TAG,
    TRIAL_VALUES_TAG,
    TRIALS_REPLY_TRIALS_TAG,
)

_UPDATED_REPLY = bytes((STATE_VALUES_REPLY_UPDATED_TAG, 1))


def _repeated_messages(tag: int, messages: Iterable[Buffer]) -> bytes:
    """`tag: message` for each message, joined once."""
    pieces: list[bytes] = []
    append = pieces.append
    tag_byte = ONE_BYTE[tag]
    for message in messages:
        if type(message) is not bytes:
            message = bytes(memoryview(message))
        append(tag_byte)
        append(varint(len(message)))
        append(message)
    return b"".join(pieces)


def encode_id_reply(value: int) -> bytes:
    """The one id of CreateNewStudy, GetStudyIdFromName, CreateNewTrial, GetTrialId... replies."""
    return int64_field(ID_REPLY_ID_TAG, value)


def encode_name_reply(name: str) -> bytes:
    """GetStudyNameFromIdReply."""
    return string_field(NAME_REPLY_STUDY_NAME_TAG, name)


def encode_directions_reply(directions: Iterable[int]) -> bytes:
    """GetStudyDirectionsReply."""
    return packed_enums(DIRECTIONS_REPLY_DIRECTIONS_TAG, directions)


def encode_attrs_reply(attrs: Mapping[str, str]) -> bytes:
    """Get{Study}{User,System}AttributesReply: key -> JSON text."""
    return b"".join(
        [string_entry(ATTRS_REPLY_ATTRS_TAG, key, value) for key, value in attrs.items()]
    )


def encode_study(study: StudyRow) -> bytes:
    """A `Study` message."""
    study_id, name, directions, user_attrs, system_attrs = study
    pieces = [
        int64_field(STUDY_ID_TAG, study_id),
        string_field(STUDY_NAME_TAG, name),
        packed_enums(STUDY_DIRECTIONS_TAG, directions),
    ]
    pieces += [string_entry(STUDY_USER_ATTRS_TAG, k, v) for k, v in user_attrs.items()]
    pieces += [string_entry(STUDY_SYSTEM_ATTRS_TAG, k, v) for k, v in system_attrs.items()]
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
        int64_field(TRIAL_ID_TAG, trial_id),
        int64_field(TRIAL_NUMBER_TAG, number),
        enum_field(TRIAL_STATE_TAG, state),
        packed_doubles(TRIAL_VALUES_TAG, values),
        string_field(TRIAL_DATETIME_START_TAG, datetime_start),
        string_field(TRIAL_DATETIME_COMPLETE_TAG, datetime_complete),
    ]
    pieces += [double_entry(TRIAL_PARAMS_TAG, name, value) for name, value, _ in params]
    pieces += [string_entry(TRIAL_DISTRIBUTIONS_TAG, name, text) for name, _, text in params]
    pieces += [string_entry(TRIAL_USER_ATTRS_TAG, key, text) for key, text in user_attrs]
    pieces += [string_entry(TRIAL_SYSTEM_ATTRS_TAG, key, text) for key, text in system_attrs]
    pieces += [step_entry(step, value) for step, value in intermediate_values]
    return b"".join(pieces)


def encode_trial_reply(trial_bytes: Buffer) -> bytes:
    """GetTrialReply around an encoded `Trial` (present even when it is empty)."""
    return _repeated_messages(TRIAL_REPLY_TRIAL_TAG, (trial_bytes,))


def encode_trials_reply(trials: Iterable[Buffer]) -> bytes:
    """GetTrialsReply from encoded `Trial` messages, copied once and never re-encoded."""
    return _repeated_messages(TRIALS_REPLY_TRIALS_TAG, trials)
