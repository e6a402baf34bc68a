"""Hand-encoded requests and the two reply fields the client cache reads.

The virtual workers send exactly the bytes `GrpcStorageProxy` sends (proto3: fields
in number order, zero values omitted, repeated scalars packed, negative int64 as a
ten-byte varint); tests compare every encoder here with Optuna's `api_pb2`. Only
trial ids and states are read from replies: that is all the client cache's
`included_trial_ids`/`trial_id_greater_than` bookkeeping needs.
"""

from __future__ import annotations

import struct

SERVICE = "optuna.StorageService"

RUNNING, COMPLETE, PRUNED, FAIL, WAITING = 0, 1, 2, 3, 4
FINISHED = frozenset((COMPLETE, PRUNED, FAIL))

_MASK64 = (1 << 64) - 1
_pack_double = struct.Struct("<d").pack


def method_path(name: str) -> str:
    return f"/{SERVICE}/{name}"


def varint(value: int) -> bytes:
    """An int64 as protobuf writes it (negative numbers take ten bytes)."""
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int_field(tag: int, value: int) -> bytes:
    return bytes((tag,)) + varint(value) if value else b""


def _bytes_field(tag: int, data: bytes) -> bytes:
    return bytes((tag,)) + varint(len(data)) + data if data else b""


def _double_field(tag: int, value: float) -> bytes:
    # proto3 omits +0.0 only; -0.0 has a sign bit and is written.
    packed = _pack_double(value)
    return bytes((tag,)) + packed if packed != b"\0" * 8 else b""


def get_trials(study_id: int, included_trial_ids: object, trial_id_greater_than: int) -> bytes:
    ids = b"".join(varint(i) for i in included_trial_ids)  # type: ignore[attr-defined]
    return (
        _int_field(0x08, study_id)
        + _bytes_field(0x12, ids)
        + _int_field(0x18, trial_id_greater_than)
    )


def create_new_trial(study_id: int) -> bytes:
    """A CreateNewTrialRequest without a template (`template_trial_is_none=True`)."""
    return _int_field(0x08, study_id) + b"\x18\x01"


def get_trial(trial_id: int) -> bytes:
    return _int_field(0x08, trial_id)


def param_tail(param_name: str, distribution_json: str) -> tuple[bytes, bytes]:
    """The constant parts of a SetTrialParameterRequest around its value field."""
    return (
        _bytes_field(0x12, param_name.encode()),
        _bytes_field(0x22, distribution_json.encode()),
    )


def set_trial_parameter(trial_id: int, tail: tuple[bytes, bytes], value: float) -> bytes:
    name, distribution = tail
    return _int_field(0x08, trial_id) + name + _double_field(0x19, value) + distribution


def set_trial_state_values(trial_id: int, state: int, values: list[float]) -> bytes:
    packed = b"".join(_pack_double(v) for v in values)
    return _int_field(0x08, trial_id) + _int_field(0x10, state) + _bytes_field(0x1A, packed)


def set_trial_system_attribute(trial_id: int, key: str, value_json: str) -> bytes:
    return (
        _int_field(0x08, trial_id)
        + _bytes_field(0x12, key.encode())
        + _bytes_field(0x1A, value_json.encode())
    )


# -- replies ------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _read_varint(data, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unexpected wire type {wire_type}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def single_int(reply: bytes) -> int:
    """Field 1 of a reply holding one int64 (CreateNewTrialReply.trial_id, ...)."""
    pos, end, value = 0, len(reply), 0
    while pos < end:
        key, pos = _read_varint(reply, pos)
        if key == 0x08:
            raw, pos = _read_varint(reply, pos)
            value = _signed(raw)
        else:
            pos = _skip(reply, pos, key & 7)
    return value


def _trial_id_and_state(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Trial.trial_id (1) and Trial.state (3), wherever they are in the message."""
    trial_id = state = 0
    while pos < end:
        key, pos = _read_varint(data, pos)
        if key == 0x08:
            raw, pos = _read_varint(data, pos)
            trial_id = _signed(raw)
        elif key == 0x18:
            state, pos = _read_varint(data, pos)
        else:
            pos = _skip(data, pos, key & 7)
    return trial_id, state


def trials_of_reply(reply: bytes) -> list[tuple[int, int]]:
    """(trial_id, state) of every trial in a GetTrialsReply."""
    trials = []
    pos, end = 0, len(reply)
    while pos < end:
        key, pos = _read_varint(reply, pos)
        if key != 0x0A:
            pos = _skip(reply, pos, key & 7)
            continue
        length, pos = _read_varint(reply, pos)
        trials.append(_trial_id_and_state(reply, pos, pos + length))
        pos += length
    return trials
