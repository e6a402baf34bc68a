# Declarations of the read side: the read buffer (wire types are in wire.pxd).
#
# A ReadBuf is a plain struct over bytes that a Python object owned by the caller
# keeps alive. Every read in readbuf.pxi checks `end - pos` first: a length or
# count found in the data is never trusted.

from libc.stdint cimport uint32_t, uint64_t


cdef enum:
    # Python protobuf lets a message nest 100 levels deep; every submessage, map
    # entry and group takes one level.
    MAX_DEPTH = 100


cdef struct ReadBuf:
    const unsigned char* data
    Py_ssize_t pos
    Py_ssize_t end


cdef struct Tag:
    uint32_t field
    int wire_type
