# Reply encoders: the twins of the encode_* functions in shardproxy/_codec_py/replies.py.


def encode_id_reply(value):
    """The one id of CreateNewStudy, GetStudyIdFromName, CreateNewTrial, GetTrialId... replies."""
    cdef WriteBuf wb
    wb_init(&wb, 16)
    try:
        wb_int64_field(&wb, ID_REPLY_ID_TAG, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_name_reply(name):
    """GetStudyNameFromIdReply."""
    cdef WriteBuf wb
    wb_init(&wb, 64)
    try:
        wb_string_field(&wb, NAME_REPLY_STUDY_NAME_TAG, name)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_directions_reply(directions):
    """GetStudyDirectionsReply."""
    cdef WriteBuf wb
    wb_init(&wb, 16)
    try:
        wb_packed_enums(&wb, DIRECTIONS_REPLY_DIRECTIONS_TAG, directions)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_attrs_reply(attrs):
    """Get{Study}{User,System}AttributesReply: key -> JSON text."""
    cdef WriteBuf wb
    wb_init(&wb, 256)
    try:
        for key, value in attrs.items():
            wb_string_entry(&wb, ATTRS_REPLY_ATTRS_TAG, key, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_study(study):
    """A `Study` message."""
    cdef WriteBuf wb
    study_id, name, directions, user_attrs, system_attrs = study
    wb_init(&wb, 256)
    try:
        wb_int64_field(&wb, STUDY_ID_TAG, study_id)
        wb_string_field(&wb, STUDY_NAME_TAG, name)
        wb_packed_enums(&wb, STUDY_DIRECTIONS_TAG, directions)
        for key, value in user_attrs.items():
            wb_string_entry(&wb, STUDY_USER_ATTRS_TAG, key, value)
        for key, value in system_attrs.items():
            wb_string_entry(&wb, STUDY_SYSTEM_ATTRS_TAG, key, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_all_studies_reply(studies):
    """GetAllStudiesReply from encoded `Study` messages."""
    return repeated_messages(ALL_STUDIES_REPLY_STUDIES_TAG, studies)


cdef bytes UPDATED_REPLY = bytes((STATE_VALUES_REPLY_UPDATED_TAG, 1))


def encode_bool_reply(flag):
    """SetTrialStateValuesReply."""
    return UPDATED_REPLY if flag else b""


def encode_trial(row):
    """A `Trial` message straight from row values."""
    cdef WriteBuf wb
    wb_init(&wb, 4096)
    try:
        write_trial(&wb, <tuple>row if PyTuple_Check(row) else tuple(row))
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


cdef int write_trial(WriteBuf* wb, tuple row) except -1:
    (trial_id, number, state, values, datetime_start, datetime_complete,
     params, user_attrs, system_attrs, intermediate_values) = row
    cdef int32_t state_number = state
    wb_int64_field(wb, TRIAL_ID_TAG, trial_id)
    wb_int64_field(wb, TRIAL_NUMBER_TAG, number)
    wb_int64_field(wb, TRIAL_STATE_TAG, state_number)
    wb_packed_doubles(wb, TRIAL_VALUES_TAG, values)
    wb_string_field(wb, TRIAL_DATETIME_START_TAG, datetime_start)
    wb_string_field(wb, TRIAL_DATETIME_COMPLETE_TAG, datetime_complete)
    for name, value, _ in params:
        wb_double_entry(wb, TRIAL_PARAMS_TAG, name, value)
    for name, _, text in params:
        wb_string_entry(wb, TRIAL_DISTRIBUTIONS_TAG, name, text)
    for key, text in user_attrs:
        wb_string_entry(wb, TRIAL_USER_ATTRS_TAG, key, text)
    for key, text in system_attrs:
        wb_string_entry(wb, TRIAL_SYSTEM_ATTRS_TAG, key, text)
    for step, value in intermediate_values:
        wb_step_entry(wb, TRIAL_INTERMEDIATE_VALUES_TAG, step, value)
    return 0


def encode_trial_reply(trial_bytes):
    """GetTrialReply around an encoded `Trial` (present even when it is empty)."""
    return repeated_messages(TRIAL_REPLY_TRIAL_TAG, (trial_bytes,))


def encode_trials_reply(trials):
    """GetTrialsReply from encoded `Trial` messages, copied once and never re-encoded."""
    return repeated_messages(TRIALS_REPLY_TRIALS_TAG, trials)


cdef bytes repeated_messages(unsigned char tag, object messages):
    """`tag: message` for each message, into one bytes object sized in advance."""
    cdef list items = [as_bytes(item) for item in messages]
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t size
    cdef bytes message
    for message in items:
        size = PyBytes_GET_SIZE(message)
        total += 1 + varint_size(<uint64_t>size) + size
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* at = PyBytes_AS_STRING(out)
    for message in items:
        size = PyBytes_GET_SIZE(message)
        at[0] = <char>tag
        at = put_varint(at + 1, <uint64_t>size)
        memcpy(at, PyBytes_AS_STRING(message), size)
        at += size
    return out


cdef inline char* put_varint(char* at, uint64_t value) noexcept:
    while value >= 0x80:
        at[0] = <char>((value & 0x7F) | 0x80)
        at += 1
        value >>= 7
    at[0] = <char>value
    return at + 1
