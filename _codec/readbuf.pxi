# The read primitives. Each one checks what is left before it reads, and each
# error message matches shardproxy/_codec_py/reading.py, which has the same functions.


cdef inline ReadBuf rb_over(bytes data):
    cdef ReadBuf rb
    rb.data = <const unsigned char*>PyBytes_AS_STRING(data)
    rb.pos = 0
    rb.end = PyBytes_GET_SIZE(data)
    return rb


cdef inline bytes as_bytes(object data):
    if type(data) is bytes:
        return <bytes>data
    return bytes(memoryview(data))


cdef int rb_varint_slow(ReadBuf* rb, uint64_t* out, int max_bytes) except -1:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    cdef Py_ssize_t pos = rb.pos
    cdef Py_ssize_t limit = rb.pos + max_bytes
    while True:
        if pos >= rb.end:
            raise DecodeError("truncated varint")
        if pos == limit:
            raise DecodeError(f"varint longer than {max_bytes} bytes")
        byte = rb.data[pos]
        pos += 1
        # At most 10 bytes: the last shift is 63, and bits past 64 fall off as in protobuf.
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            out[0] = result
            rb.pos = pos
            return 0
        shift += 7


cdef inline int rb_varint(ReadBuf* rb, uint64_t* out) except -1:
    cdef unsigned char byte
    if rb.pos < rb.end:
        byte = rb.data[rb.pos]
        if byte < 0x80:
            out[0] = byte
            rb.pos += 1
            return 0
    return rb_varint_slow(rb, out, 10)


cdef inline int rb_tag(ReadBuf* rb, Tag* tag) except -1:
    cdef uint64_t key
    cdef unsigned char byte
    if rb.pos < rb.end and rb.data[rb.pos] < 0x80:
        key = rb.data[rb.pos]
        rb.pos += 1
    else:
        rb_varint_slow(rb, &key, 5)
    if key > 0xFFFFFFFFULL:
        raise DecodeError("field number out of range")
    if key < 8:
        raise DecodeError("field number 0")
    tag.wire_type = <int>(key & 7)
    if tag.wire_type > FIXED32:
        raise DecodeError(f"invalid wire type {tag.wire_type}")
    tag.field = <uint32_t>(key >> 3)
    return 0


cdef inline Py_ssize_t rb_length(ReadBuf* rb) except -1:
    """A length prefix, checked against what is left."""
    cdef uint64_t length
    if rb.pos < rb.end and rb.data[rb.pos] < 0x80:
        length = rb.data[rb.pos]
        rb.pos += 1
    else:
        rb_varint_slow(rb, &length, 5)
    if length > <uint64_t>(rb.end - rb.pos):
        raise DecodeError("length past the end")
    return <Py_ssize_t>length


cdef inline ReadBuf rb_message(ReadBuf* rb, Tag* tag) except *:
    """The bytes of an embedded message as a buffer of their own; `rb` moves past them."""
    cdef ReadBuf sub
    if tag.wire_type != LENGTH:
        raise wrong_type(tag)
    sub.data = rb.data
    sub.end = rb_length(rb) + rb.pos
    sub.pos = rb.pos
    rb.pos = sub.end
    return sub


cdef inline object wrong_type(Tag* tag):
    return DecodeError(f"wrong wire type {tag.wire_type} for field {tag.field}")


cdef inline double load_double(const unsigned char* p) noexcept:
    """A little-endian IEEE double, whatever the host's byte order."""
    cdef uint64_t bits = 0
    cdef int i
    for i in range(7, -1, -1):
        bits = (bits << 8) | p[i]
    cdef double value
    memcpy(&value, &bits, 8)
    return value


# -- scalar fields ---------------------------------------------------------------

cdef inline int64_t rb_int64(ReadBuf* rb, Tag* tag) except? -1:
    cdef uint64_t value
    if tag.wire_type != VARINT:
        raise wrong_type(tag)
    rb_varint(rb, &value)
    return <int64_t>value


cdef inline int32_t rb_enum(ReadBuf* rb, Tag* tag) except? -1:
    """An enum is an int32 on the wire: the low 32 bits of the varint, signed."""
    cdef uint64_t value
    if tag.wire_type != VARINT:
        raise wrong_type(tag)
    rb_varint(rb, &value)
    return <int32_t><uint32_t>value


cdef inline bint rb_bool(ReadBuf* rb, Tag* tag) except? -1:
    cdef uint64_t value
    if tag.wire_type != VARINT:
        raise wrong_type(tag)
    rb_varint(rb, &value)
    return value != 0


cdef inline double rb_double(ReadBuf* rb, Tag* tag) except? -1:
    cdef double value
    if tag.wire_type != FIXED64:
        raise wrong_type(tag)
    if rb.end - rb.pos < 8:
        raise DecodeError("truncated fixed-size field")
    value = load_double(rb.data + rb.pos)
    rb.pos += 8
    return value


cdef inline str rb_string(ReadBuf* rb, Tag* tag):
    cdef Py_ssize_t length
    cdef str text
    if tag.wire_type != LENGTH:
        raise wrong_type(tag)
    length = rb_length(rb)
    if length == 0:
        return ""
    try:
        text = PyUnicode_DecodeUTF8(<const char*>rb.data + rb.pos, length, NULL)
    except UnicodeDecodeError:
        raise DecodeError(f"invalid UTF-8 in field {tag.field}") from None
    rb.pos += length
    return text


# -- repeated scalars, packed or not -------------------------------------------

cdef int rb_doubles(ReadBuf* rb, Tag* tag, list into) except -1:
    cdef Py_ssize_t length, stop
    if tag.wire_type == FIXED64:
        into.append(rb_double(rb, tag))
        return 0
    if tag.wire_type != LENGTH:
        raise wrong_type(tag)
    length = rb_length(rb)
    if length % 8:
        raise DecodeError(f"packed doubles of field {tag.field} do not fill 8-byte words")
    stop = rb.pos + length
    while rb.pos < stop:
        into.append(load_double(rb.data + rb.pos))
        rb.pos += 8
    return 0


cdef int rb_int64s(ReadBuf* rb, Tag* tag, list into, bint as_enum) except -1:
    """A repeated int64 (or enum, as int32), packed or not, appended to `into`."""
    cdef uint64_t value
    cdef ReadBuf packed
    if tag.wire_type == VARINT:
        rb_varint(rb, &value)
        into.append(<int32_t><uint32_t>value if as_enum else <int64_t>value)
        return 0
    packed = rb_message(rb, tag)
    while packed.pos < packed.end:
        rb_varint(&packed, &value)
        into.append(<int32_t><uint32_t>value if as_enum else <int64_t>value)
    return 0


# -- unknown fields --------------------------------------------------------------

cdef int rb_skip(ReadBuf* rb, Tag* tag, int depth) except -1:
    """Moves past an unknown field whose tag was just read."""
    cdef uint64_t ignored
    if tag.wire_type == VARINT:
        rb_varint(rb, &ignored)
    elif tag.wire_type == FIXED64:
        rb_skip_fixed(rb, 8)
    elif tag.wire_type == LENGTH:
        rb.pos += rb_length(rb)
    elif tag.wire_type == FIXED32:
        rb_skip_fixed(rb, 4)
    elif tag.wire_type == START_GROUP:
        rb_skip_group(rb, tag.field, depth)
    else:
        raise DecodeError("end-group tag without a group")
    return 0


cdef inline int rb_skip_fixed(ReadBuf* rb, Py_ssize_t size) except -1:
    if rb.end - rb.pos < size:
        raise DecodeError("truncated fixed-size field")
    rb.pos += size
    return 0


cdef int rb_skip_group(ReadBuf* rb, uint32_t field, int depth) except -1:
    """Moves past the end-group tag that closes `field`, and any groups nested in it."""
    cdef uint32_t open_groups[MAX_DEPTH + 1]
    cdef int count = 1
    cdef Tag tag
    open_groups[0] = field
    while True:
        if count > depth:
            raise DecodeError("message nested too deeply")
        if rb.pos >= rb.end:
            raise DecodeError("unterminated group")
        rb_tag(rb, &tag)
        if tag.wire_type == START_GROUP:
            open_groups[count] = tag.field
            count += 1
        elif tag.wire_type == END_GROUP:
            count -= 1
            if open_groups[count] != tag.field:
                raise DecodeError("end-group tag does not match its group")
            if count == 0:
                return 0
        else:
            rb_skip(rb, &tag, depth)
