# Reply encoders: the twins of the encode_* functions in shardproxy/_codec_py.py.


def encode_id_reply(value):
    """`1: int64`: CreateNewStudy, GetStudyIdFromName, CreateNewTrial, GetTrialId... replies."""
    cdef WriteBuf wb
    wb_init(&wb, 16)
    try:
        wb_int64_field(&wb, 0x08, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_name_reply(name):
    """GetStudyNameFromIdReply."""
    cdef WriteBuf wb
    wb_init(&wb, 64)
    try:
        wb_string_field(&wb, 0x0A, name)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_directions_reply(directions):
    """GetStudyDirectionsReply."""
    cdef WriteBuf wb
    wb_init(&wb, 16)
    try:
        wb_packed_enums(&wb, 0x0A, directions)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_attrs_reply(attrs):
    """Get{Study}{User,System}AttributesReply: key -> JSON text at field 1."""
    cdef WriteBuf wb
    wb_init(&wb, 256)
    try:
        for key, value in attrs.items():
            wb_string_entry(&wb, 0x0A, key, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_study(study):
    """A `Study` message."""
    cdef WriteBuf wb
    study_id, name, directions, user_attrs, system_attrs = study
    wb_init(&wb, 256)
    try:
        wb_int64_field(&wb, 0x08, study_id)
        wb_string_field(&wb, 0x12, name)
        wb_packed_enums(&wb, 0x1A, directions)
        for key, value in user_attrs.items():
            wb_string_entry(&wb, 0x22, key, value)
        for key, value in system_attrs.items():
            wb_string_entry(&wb, 0x2A, key, value)
        return wb_finish(&wb)
    finally:
        wb_free(&wb)


def encode_all_studies_reply(studies):
    """GetAllStudiesReply from encoded `Study` messages."""
    return repeated_messages(0x0A, studies)


def encode_bool_reply(flag):
    """SetTrialStateValuesReply."""
    return b"\x08\x01" if flag else b""


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
    wb_int64_field(wb, 0x08, trial_id)
    wb_int64_field(wb, 0x10, number)
    wb_int64_field(wb, 0x18, state_number)
    wb_packed_doubles(wb, 0x22, values)
    wb_string_field(wb, 0x2A, datetime_start)
    wb_string_field(wb, 0x32, datetime_complete)
    for name, value, _ in params:
        wb_double_entry(wb, 0x3A, name, value)
    for name, _, text in params:
        wb_string_entry(wb, 0x42, name, text)
    for key, text in user_attrs:
        wb_string_entry(wb, 0x4A, key, text)
    for key, text in system_attrs:
        wb_string_entry(wb, 0x52, key, text)
    for step, value in intermediate_values:
        wb_step_entry(wb, 0x5A, step, value)
    return 0


def encode_trial_reply(trial_bytes):
    """GetTrialReply around an encoded `Trial` (present even when it is empty)."""
    return repeated_messages(0x0A, (trial_bytes,))


def encode_trials_reply(trials):
    """GetTrialsReply from encoded `Trial` messages, copied once and never re-encoded."""
    return repeated_messages(0x0A, trials)


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
