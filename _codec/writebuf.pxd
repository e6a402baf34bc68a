# Declarations of the write side: a growable byte buffer (writebuf.pxi).


cdef struct WriteBuf:
    char* data  # PyMem_Malloc'ed; wb_free releases it
    Py_ssize_t length
    Py_ssize_t capacity
