# Request decoders: the twins of the decode_* functions in shardproxy/_codec_py/requests.py.


def decode_id_request(data):
    """The one int64 id of DeleteStudy, GetStudy*, GetTrial requests (and id replies)."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t value = 0
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == ID_REQUEST_ID:
            value = rb_int64(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return value


def decode_attr_request(data):
    """(id, key, value JSON text) of Set{Study,Trial}{User,System}AttributeRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t owner_id = 0
    cdef str key = ""
    cdef str value = ""
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == ATTR_REQUEST_OWNER_ID:
            owner_id = rb_int64(&rb, &tag)
        elif tag.field == ATTR_REQUEST_KEY:
            key = rb_string(&rb, &tag)
        elif tag.field == ATTR_REQUEST_VALUE:
            value = rb_string(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return owner_id, key, value


def decode_name_request(data):
    """The study name of GetStudyIdFromNameRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef str name = ""
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == NAME_REQUEST_STUDY_NAME:
            name = rb_string(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return name


def decode_empty_request(data):
    """Checks a message without fields (GetAllStudiesRequest): unknown fields are skipped."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        rb_skip(&rb, &tag, MAX_DEPTH)
    return None


def decode_create_new_study_request(data):
    """(directions, study name) of CreateNewStudyRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef list directions = []
    cdef str name = ""
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == CREATE_STUDY_REQUEST_DIRECTIONS:
            rb_int64s(&rb, &tag, directions, True)
        elif tag.field == CREATE_STUDY_REQUEST_STUDY_NAME:
            name = rb_string(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return directions, name


def decode_create_new_trial_request(data):
    """(study id, template) of CreateNewTrialRequest, as Optuna's servicer reads it.

    The template is None iff `template_trial_is_none` is set; it is still checked.
    """
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef ReadBuf sub
    cdef Tag tag
    cdef int64_t study_id = 0
    cdef _TrialFields template = _TrialFields()
    cdef bint template_is_none = False
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == CREATE_TRIAL_REQUEST_STUDY_ID:
            study_id = rb_int64(&rb, &tag)
        elif tag.field == CREATE_TRIAL_REQUEST_TEMPLATE:
            sub = rb_message(&rb, &tag)
            template.merge(&sub, MAX_DEPTH - 1)
        elif tag.field == CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE:
            template_is_none = rb_bool(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return study_id, None if template_is_none else template.row()


def decode_set_trial_param_request(data):
    """(trial id, name, internal value, distribution JSON) of SetTrialParameterRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t trial_id = 0
    cdef str name = ""
    cdef double value = 0.0
    cdef str distribution = ""
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == SET_PARAM_REQUEST_TRIAL_ID:
            trial_id = rb_int64(&rb, &tag)
        elif tag.field == SET_PARAM_REQUEST_NAME:
            name = rb_string(&rb, &tag)
        elif tag.field == SET_PARAM_REQUEST_VALUE:
            value = rb_double(&rb, &tag)
        elif tag.field == SET_PARAM_REQUEST_DISTRIBUTION:
            distribution = rb_string(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return trial_id, name, value, distribution


def decode_trial_number_request(data):
    """(study id, trial number) of GetTrialIdFromStudyIdTrialNumberRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t study_id = 0
    cdef int64_t number = 0
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == TRIAL_NUMBER_REQUEST_STUDY_ID:
            study_id = rb_int64(&rb, &tag)
        elif tag.field == TRIAL_NUMBER_REQUEST_NUMBER:
            number = rb_int64(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return study_id, number


def decode_set_trial_state_values_request(data):
    """(trial id, state, values) of SetTrialStateValuesRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t trial_id = 0
    cdef int32_t state = 0
    cdef list values = []
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == STATE_VALUES_REQUEST_TRIAL_ID:
            trial_id = rb_int64(&rb, &tag)
        elif tag.field == STATE_VALUES_REQUEST_STATE:
            state = rb_enum(&rb, &tag)
        elif tag.field == STATE_VALUES_REQUEST_VALUES:
            rb_doubles(&rb, &tag, values)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return trial_id, state, values


def decode_set_trial_intermediate_value_request(data):
    """(trial id, step, value) of SetTrialIntermediateValueRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t trial_id = 0
    cdef int64_t step = 0
    cdef double value = 0.0
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == INTERMEDIATE_REQUEST_TRIAL_ID:
            trial_id = rb_int64(&rb, &tag)
        elif tag.field == INTERMEDIATE_REQUEST_STEP:
            step = rb_int64(&rb, &tag)
        elif tag.field == INTERMEDIATE_REQUEST_VALUE:
            value = rb_double(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return trial_id, step, value


def decode_get_trials_request(data):
    """(study id, included trial ids, trial_id_greater_than) of GetTrialsRequest."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef Tag tag
    cdef int64_t study_id = 0
    cdef int64_t id_greater_than = 0
    cdef list included = []
    while rb.pos < rb.end:
        rb_tag(&rb, &tag)
        if tag.field == GET_TRIALS_REQUEST_STUDY_ID:
            study_id = rb_int64(&rb, &tag)
        elif tag.field == GET_TRIALS_REQUEST_INCLUDED_IDS:
            rb_int64s(&rb, &tag, included, False)
        elif tag.field == GET_TRIALS_REQUEST_ID_GREATER_THAN:
            id_greater_than = rb_int64(&rb, &tag)
        else:
            rb_skip(&rb, &tag, MAX_DEPTH)
    return study_id, included, id_greater_than


def decode_trial(data):
    """A `Trial` message as a TrialRow; params joined with their distributions by name."""
    cdef bytes buf = as_bytes(data)
    cdef ReadBuf rb = rb_over(buf)
    cdef _TrialFields fields = _TrialFields()
    fields.merge(&rb, MAX_DEPTH)
    return fields.row()


@cython.final
cdef class _TrialFields:
    """A `Trial` being read; a submessage sent in pieces merges them, as protobuf does."""

    cdef int64_t trial_id
    cdef int64_t number
    cdef int32_t state
    cdef list values
    cdef str datetime_start
    cdef str datetime_complete
    cdef dict params
    cdef dict distributions
    cdef dict user_attrs
    cdef dict system_attrs
    cdef dict intermediate_values

    def __cinit__(self):
        self.values = []
        self.datetime_start = ""
        self.datetime_complete = ""
        self.params = {}
        self.distributions = {}
        self.user_attrs = {}
        self.system_attrs = {}
        self.intermediate_values = {}

    cdef int merge(self, ReadBuf* rb, int depth) except -1:
        cdef Tag tag
        cdef ReadBuf entry
        while rb.pos < rb.end:
            rb_tag(rb, &tag)
            if tag.field == TRIAL_ID:
                self.trial_id = rb_int64(rb, &tag)
            elif tag.field == TRIAL_NUMBER:
                self.number = rb_int64(rb, &tag)
            elif tag.field == TRIAL_STATE:
                self.state = rb_enum(rb, &tag)
            elif tag.field == TRIAL_VALUES:
                rb_doubles(rb, &tag, self.values)
            elif tag.field == TRIAL_DATETIME_START:
                self.datetime_start = rb_string(rb, &tag)
            elif tag.field == TRIAL_DATETIME_COMPLETE:
                self.datetime_complete = rb_string(rb, &tag)
            elif TRIAL_PARAMS <= tag.field <= TRIAL_INTERMEDIATE_VALUES:  # the five maps
                entry = rb_message(rb, &tag)
                self.merge_entry(tag.field, &entry, depth - 1)
            else:
                rb_skip(rb, &tag, depth)
        return 0

    cdef int merge_entry(self, uint32_t field, ReadBuf* rb, int depth) except -1:
        if field == TRIAL_PARAMS:
            read_string_double_entry(rb, depth, self.params)
        elif field == TRIAL_DISTRIBUTIONS:
            read_string_string_entry(rb, depth, self.distributions)
        elif field == TRIAL_USER_ATTRS:
            read_string_string_entry(rb, depth, self.user_attrs)
        elif field == TRIAL_SYSTEM_ATTRS:
            read_string_string_entry(rb, depth, self.system_attrs)
        else:  # TRIAL_INTERMEDIATE_VALUES
            read_int64_double_entry(rb, depth, self.intermediate_values)
        return 0

    cdef object row(self):
        cdef dict distributions = self.distributions
        cdef list params = []
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


cdef int read_string_string_entry(ReadBuf* rb, int depth, dict into) except -1:
    cdef Tag tag
    cdef bint dropped = False
    cdef str key = ""
    cdef str value = ""
    while rb.pos < rb.end:
        rb_tag(rb, &tag)
        if tag.field == MAP_STRING_KEY:
            key = rb_string(rb, &tag)
        elif tag.field == MAP_STRING_VALUE:
            value = rb_string(rb, &tag)
        else:
            rb_skip(rb, &tag, depth)
            dropped = True
    if not dropped:
        into[key] = value
    return 0


cdef int read_string_double_entry(ReadBuf* rb, int depth, dict into) except -1:
    cdef Tag tag
    cdef bint dropped = False
    cdef str key = ""
    cdef double value = 0.0
    while rb.pos < rb.end:
        rb_tag(rb, &tag)
        if tag.field == MAP_STRING_KEY:
            key = rb_string(rb, &tag)
        elif tag.field == MAP_DOUBLE_VALUE:
            value = rb_double(rb, &tag)
        else:
            rb_skip(rb, &tag, depth)
            dropped = True
    if not dropped:
        into[key] = value
    return 0


cdef int read_int64_double_entry(ReadBuf* rb, int depth, dict into) except -1:
    cdef Tag tag
    cdef bint dropped = False
    cdef int64_t key = 0
    cdef double value = 0.0
    while rb.pos < rb.end:
        rb_tag(rb, &tag)
        if tag.field == MAP_INT64_KEY:
            key = rb_int64(rb, &tag)
        elif tag.field == MAP_DOUBLE_VALUE:
            value = rb_double(rb, &tag)
        else:
            rb_skip(rb, &tag, depth)
            dropped = True
    if not dropped:
        into[key] = value
    return 0
