# cython: language_level=3
"""The compiled wire codec, `shardproxy._codec`: the twin of shardproxy/_codec_py.py.

Decoders read request bytes through a bounds-checked struct buffer (readbuf),
encoders write replies into a growable buffer (writebuf). Behaviour, error
messages included, is the pure module's; DecodeError is that module's class.
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

from readbuf cimport (
    END_GROUP,
    FIXED32,
    FIXED64,
    LENGTH,
    MAX_DEPTH,
    START_GROUP,
    VARINT,
    ReadBuf,
    Tag,
)
from writebuf cimport WriteBuf

from shardproxy._codec_py import DecodeError
from shardproxy.rows import TrialRow

include "readbuf.pxi"
include "writebuf.pxi"
include "requests.pxi"
include "replies.pxi"
