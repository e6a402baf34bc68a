# The write primitives: a growable buffer that callers size with wb_reserve before
# the unchecked wb_put_* writes.


cdef int wb_init(WriteBuf* wb, Py_ssize_t capacity) except -1:
    out = PyBytes_FromStringAndSize(NULL, capacity)
    Py_INCREF(out)
    wb.out = <PyObject*>out
    wb.data = PyBytes_AS_STRING(out)
    wb.length = 0
    wb.capacity = capacity
    return 0


cdef inline void wb_free(WriteBuf* wb) noexcept:
    Py_XDECREF(wb.out)
    wb.out = NULL


cdef int wb_grow(WriteBuf* wb, Py_ssize_t needed) except -1:
    cdef Py_ssize_t capacity = wb.capacity * 2
    if capacity < needed:
        capacity = needed
    _PyBytes_Resize(&wb.out, capacity)  # on failure it releases `out` and sets NULL
    wb.data = PyBytes_AS_STRING(<object>wb.out)
    wb.capacity = capacity
    return 0


cdef inline int wb_reserve(WriteBuf* wb, Py_ssize_t extra) except -1:
    """Room for `extra` more bytes; the wb_put_* calls that follow do not check."""
    if wb.length + extra > wb.capacity:
        wb_grow(wb, wb.length + extra)
    return 0


cdef bytes wb_finish(WriteBuf* wb):
    """The bytes written, handed over to the caller; wb_free is a no-op afterwards."""
    _PyBytes_Resize(&wb.out, wb.length)
    cdef bytes out = <bytes>wb.out
    wb_free(wb)
    return out


cdef inline int varint_size(uint64_t value) noexcept:
    cdef int size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef inline void wb_put_byte(WriteBuf* wb, unsigned char byte) noexcept:
    wb.data[wb.length] = <char>byte
    wb.length += 1


cdef inline void wb_put_varint(WriteBuf* wb, uint64_t value) noexcept:
    while value >= 0x80:
        wb.data[wb.length] = <char>((value & 0x7F) | 0x80)
        wb.length += 1
        value >>= 7
    wb.data[wb.length] = <char>value
    wb.length += 1


cdef inline void wb_put_raw(WriteBuf* wb, const char* data, Py_ssize_t size) noexcept:
    memcpy(wb.data + wb.length, data, size)
    wb.length += size


cdef inline void store_double(char* out, double value) noexcept:
    """A little-endian IEEE double, whatever the host's byte order."""
    cdef uint64_t bits
    cdef int i
    memcpy(&bits, &value, 8)
    for i in range(8):
        out[i] = <char>(bits & 0xFF)
        bits >>= 8


cdef inline void wb_put_double(WriteBuf* wb, double value) noexcept:
    store_double(wb.data + wb.length, value)
    wb.length += 8


# -- whole fields ----------------------------------------------------------------

cdef inline int wb_int64_field(WriteBuf* wb, unsigned char tag, int64_t value) except -1:
    """A varint field, left out when 0 (the proto3 default)."""
    if value:
        wb_reserve(wb, 11)
        wb_put_byte(wb, tag)
        wb_put_varint(wb, <uint64_t>value)
    return 0


cdef int wb_bytes_field(WriteBuf* wb, unsigned char tag, const char* data,
                        Py_ssize_t size) except -1:
    wb_reserve(wb, 1 + 10 + size)
    wb_put_byte(wb, tag)
    wb_put_varint(wb, <uint64_t>size)
    wb_put_raw(wb, data, size)
    return 0


cdef int wb_string_field(WriteBuf* wb, unsigned char tag, object text) except -1:
    """A string field, left out when empty."""
    cdef Py_ssize_t size
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &size)
    if size:
        wb_bytes_field(wb, tag, utf8, size)
    return 0


cdef int wb_string_entry(WriteBuf* wb, unsigned char tag, object key, object value) except -1:
    """A map<string, string> entry: `tag: {key, value}`."""
    cdef Py_ssize_t key_size, value_size
    cdef const char* key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_size)
    cdef const char* value_utf8 = PyUnicode_AsUTF8AndSize(value, &value_size)
    cdef Py_ssize_t entry_size = (
        2 + varint_size(key_size) + key_size + varint_size(value_size) + value_size
    )
    wb_reserve(wb, 1 + 10 + entry_size)
    wb_put_byte(wb, tag)
    wb_put_varint(wb, <uint64_t>entry_size)
    wb_put_byte(wb, MAP_STRING_KEY_TAG)
    wb_put_varint(wb, <uint64_t>key_size)
    wb_put_raw(wb, key_utf8, key_size)
    wb_put_byte(wb, MAP_STRING_VALUE_TAG)
    wb_put_varint(wb, <uint64_t>value_size)
    wb_put_raw(wb, value_utf8, value_size)
    return 0


cdef int wb_double_entry(WriteBuf* wb, unsigned char tag, object key, double value) except -1:
    """A map<string, double> entry: `tag: {key, value}`."""
    cdef Py_ssize_t key_size
    cdef const char* key_utf8 = PyUnicode_AsUTF8AndSize(key, &key_size)
    cdef Py_ssize_t entry_size = 1 + varint_size(key_size) + key_size + 9
    wb_reserve(wb, 1 + 10 + entry_size)
    wb_put_byte(wb, tag)
    wb_put_varint(wb, <uint64_t>entry_size)
    wb_put_byte(wb, MAP_STRING_KEY_TAG)
    wb_put_varint(wb, <uint64_t>key_size)
    wb_put_raw(wb, key_utf8, key_size)
    wb_put_byte(wb, MAP_DOUBLE_VALUE_TAG)
    wb_put_double(wb, value)
    return 0


cdef int wb_step_entry(WriteBuf* wb, unsigned char tag, int64_t step, double value) except -1:
    """A map<int64, double> entry: `tag: {step, value}`."""
    cdef int entry_size = 1 + varint_size(<uint64_t>step) + 9
    wb_reserve(wb, 2 + entry_size)
    wb_put_byte(wb, tag)
    wb_put_byte(wb, <unsigned char>entry_size)
    wb_put_byte(wb, MAP_INT64_KEY_TAG)
    wb_put_varint(wb, <uint64_t>step)
    wb_put_byte(wb, MAP_DOUBLE_VALUE_TAG)
    wb_put_double(wb, value)
    return 0


cdef int wb_packed_enums(WriteBuf* wb, unsigned char tag, object values) except -1:
    """A repeated enum as one packed field, left out when empty; int32 values."""
    cdef list numbers = [<int32_t>value for value in values]
    cdef Py_ssize_t size = 0
    cdef int32_t number
    if not numbers:
        return 0
    for value in numbers:
        number = value
        size += varint_size(<uint64_t><int64_t>number)
    wb_reserve(wb, 1 + 10 + size)
    wb_put_byte(wb, tag)
    wb_put_varint(wb, <uint64_t>size)
    for value in numbers:
        number = value
        wb_put_varint(wb, <uint64_t><int64_t>number)
    return 0


cdef int wb_packed_doubles(WriteBuf* wb, unsigned char tag, object values) except -1:
    """A repeated double as one packed field, left out when empty."""
    # A tuple cannot change size while its items are converted and written.
    cdef tuple numbers = tuple(values)
    cdef Py_ssize_t count = len(numbers)
    cdef double number
    if not count:
        return 0
    wb_reserve(wb, 1 + 10 + 8 * count)
    wb_put_byte(wb, tag)
    wb_put_varint(wb, <uint64_t>(8 * count))
    for value in numbers:
        number = value
        wb_put_double(wb, number)
    return 0
