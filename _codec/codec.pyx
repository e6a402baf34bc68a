# cython: language_level=3
"""The compiled wire codec, `shardproxy._codec`: the twin of shardproxy/_codec_py/.

Decoders read request bytes through a bounds-checked struct buffer (readbuf),
encoders write replies into a growable buffer (writebuf); field numbers and tags
are the C constants of wire.pxd, the twin of shardproxy/wire.py. Behaviour, error
messages included, is the pure codec's; DecodeError is that codec's class.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    _PyBytes_Resize,
)
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_Check
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from readbuf cimport MAX_DEPTH, ReadBuf, Tag
from writebuf cimport WriteBuf
from wire cimport (
    ALL_STUDIES_REPLY_STUDIES_TAG,
    ATTRS_REPLY_ATTRS_TAG,
    ATTR_REQUEST_KEY,
    ATTR_REQUEST_OWNER_ID,
    ATTR_REQUEST_VALUE,
    CREATE_STUDY_REQUEST_DIRECTIONS,
    CREATE_STUDY_REQUEST_STUDY_NAME,
    CREATE_TRIAL_REQUEST_STUDY_ID,
    CREATE_TRIAL_REQUEST_TEMPLATE,
    CREATE_TRIAL_REQUEST_TEMPLATE_IS_NONE,
    DIRECTIONS_REPLY_DIRECTIONS_TAG,
    END_GROUP,
    FIXED32,
    FIXED64,
    GET_TRIALS_REQUEST_ID_GREATER_THAN,
    GET_TRIALS_REQUEST_INCLUDED_IDS,
    GET_TRIALS_REQUEST_STUDY_ID,
    ID_REPLY_ID_TAG,
    ID_REQUEST_ID,
    INTERMEDIATE_REQUEST_STEP,
    INTERMEDIATE_REQUEST_TRIAL_ID,
    INTERMEDIATE_REQUEST_VALUE,
    LENGTH,
    MAP_DOUBLE_VALUE,
    MAP_DOUBLE_VALUE_TAG,
    MAP_INT64_KEY,
    MAP_INT64_KEY_TAG,
    MAP_STRING_KEY,
    MAP_STRING_KEY_TAG,
    MAP_STRING_VALUE,
    MAP_STRING_VALUE_TAG,
    NAME_REPLY_STUDY_NAME_TAG,
    NAME_REQUEST_STUDY_NAME,
    SET_PARAM_REQUEST_DISTRIBUTION,
    SET_PARAM_REQUEST_NAME,
    SET_PARAM_REQUEST_TRIAL_ID,
    SET_PARAM_REQUEST_VALUE,
    START_GROUP,
    STATE_VALUES_REPLY_UPDATED_TAG,
    STATE_VALUES_REQUEST_STATE,
    STATE_VALUES_REQUEST_TRIAL_ID,
    STATE_VALUES_REQUEST_VALUES,
    STUDY_DIRECTIONS_TAG,
    STUDY_ID_TAG,
    STUDY_NAME_TAG,
    STUDY_SYSTEM_ATTRS_TAG,
    STUDY_USER_ATTRS_TAG,
    TRIALS_REPLY_TRIALS_TAG,
    TRIAL_DATETIME_COMPLETE,
    TRIAL_DATETIME_COMPLETE_TAG,
    TRIAL_DATETIME_START,
    TRIAL_DATETIME_START_TAG,
    TRIAL_DISTRIBUTIONS,
    TRIAL_DISTRIBUTIONS_TAG,
    TRIAL_ID,
    TRIAL_ID_TAG,
    TRIAL_INTERMEDIATE_VALUES,
    TRIAL_INTERMEDIATE_VALUES_TAG,
    TRIAL_NUMBER,
    TRIAL_NUMBER_REQUEST_NUMBER,
    TRIAL_NUMBER_REQUEST_STUDY_ID,
    TRIAL_NUMBER_TAG,
    TRIAL_PARAMS,
    TRIAL_PARAMS_TAG,
    TRIAL_REPLY_TRIAL_TAG,
    TRIAL_STATE,
    TRIAL_STATE_TAG,
    TRIAL_SYSTEM_ATTRS,
    TRIAL_SYSTEM_ATTRS_TAG,
    TRIAL_USER_ATTRS,
    TRIAL_USER_ATTRS_TAG,
    TRIAL_VALUES,
    TRIAL_VALUES_TAG,
    VARINT,
)

from shardproxy._codec_py import DecodeError
from shardproxy.rows import TrialRow

include "readbuf.pxi"
include "writebuf.pxi"
include "requests.pxi"
include "replies.pxi"
