# Declarations of the write side: a growable byte buffer (writebuf.pxi).

from cpython.object cimport PyObject


cdef struct WriteBuf:
    # A bytes object filled in place and shrunk to its length at the end, so a
    # reply is never copied out of a scratch buffer. The buffer owns one reference
    # to it until wb_finish hands it over; wb_free drops what is left.
    PyObject* out
    char* data  # the contents of `out`
    Py_ssize_t length
    Py_ssize_t capacity
