"""shardproxy's own service beside Optuna's (proto/client_extension.proto), by hand.

Optuna's StorageService stays byte for byte Optuna's (`wire`). What
`shardproxy.client` adds, heartbeats and writes applied at most once, travels on
this second service, which Optuna's stock proxy answers with UNIMPLEMENTED. Its
messages are small and rare next to GetTrials, so both ends read and write them
with the pure codec's primitives; the requests the "Once" methods wrap are
Optuna's own, decoded by the codec.

On the forwarding channel between workers a method of this service is numbered
after Optuna's: `EXTENSION_INDEX[name]` starts at `len(wire.METHODS)`.
"""

from __future__ import annotations

import math

from shardproxy._codec_py.reading import (
    DecodeError,
    as_bytes,
    as_int64,
    read_bool,
    read_double,
    read_int64,
    read_message,
    read_string,
    read_tag,
    read_varints,
    skip,
)
from shardproxy._codec_py.writing import varint
from shardproxy.wire import FIXED64, LENGTH, METHODS, VARINT, tag

EXTENSION_SERVICE = "shardproxy.ClientExtension"
EXTENSION_METHODS = (
    "RecordHeartbeat",
    "GetStaleTrialIds",
    "CreateNewTrialOnce",
    "SetTrialStateValuesOnce",
)
EXTENSION_INDEX = {name: len(METHODS) + i for i, name in enumerate(EXTENSION_METHODS)}
# Every method a front serves, by its index: Optuna's, then shardproxy's own.
ALL_METHODS = (*METHODS, *EXTENSION_METHODS)
# A request key is chosen by the client (a UUID is 36 characters).
MAX_REQUEST_KEY = 64


def extension_path(method: str) -> str:
    """`/shardproxy.ClientExtension/RecordHeartbeat`."""
    return f"/{EXTENSION_SERVICE}/{method}"


# Field numbers (proto/client_extension.proto).
HEARTBEAT_TRIAL_ID = 1
STALE_STUDY_ID = 1
STALE_GRACE_PERIOD = 2
STALE_REPLY_TRIAL_IDS = 1
ONCE_REQUEST_KEY = 1
ONCE_REPEATED = 2
ONCE_REQUEST = 3


# -- requests -----------------------------------------------------------------------


def decode_heartbeat_request(data: bytes) -> tuple[int]:
    """(trial id,) of RecordHeartbeatRequest."""
    data = as_bytes(data)
    pos, end, trial_id = 0, len(data), 0
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == HEARTBEAT_TRIAL_ID:
            trial_id, pos = read_int64(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, 0)
    return (trial_id,)


def decode_stale_request(data: bytes) -> tuple[int, float]:
    """(study id, grace period in seconds) of GetStaleTrialIdsRequest; the period > 0."""
    data = as_bytes(data)
    pos, end, study_id, grace = 0, len(data), 0, 0.0
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == STALE_STUDY_ID:
            study_id, pos = read_int64(data, pos, end, field, wire_type)
        elif field == STALE_GRACE_PERIOD:
            grace, pos = read_double(data, pos, end, field, wire_type)
        else:
            pos = skip(data, pos, end, field, wire_type, 0)
    if not (grace > 0 and math.isfinite(grace)):
        raise DecodeError(f"the grace period must be a positive number of seconds, not {grace}")
    return study_id, grace


def decode_once_request(data: bytes) -> tuple[str, bool, bytes]:
    """(request key, repeated, the wrapped Optuna request's bytes) of a "Once" request."""
    data = as_bytes(data)
    pos, end = 0, len(data)
    key, repeated, inner = "", False, b""
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == ONCE_REQUEST_KEY:
            key, pos = read_string(data, pos, end, field, wire_type)
        elif field == ONCE_REPEATED:
            repeated, pos = read_bool(data, pos, end, field, wire_type)
        elif field == ONCE_REQUEST:
            start, pos = read_message(data, pos, end, field, wire_type)
            inner = data[start:pos]
        else:
            pos = skip(data, pos, end, field, wire_type, 0)
    if not 0 < len(key) <= MAX_REQUEST_KEY or not key.isascii():
        raise DecodeError(f"a request key must be 1 to {MAX_REQUEST_KEY} ASCII characters")
    return key, repeated, inner


def encode_heartbeat_request(trial_id: int) -> bytes:
    return _int_field(HEARTBEAT_TRIAL_ID, trial_id)


def encode_stale_request(study_id: int, grace_period: float) -> bytes:
    import struct

    return _int_field(STALE_STUDY_ID, study_id) + bytes(
        (tag(STALE_GRACE_PERIOD, FIXED64),)
    ) + struct.pack("<d", grace_period)


def encode_once_request(key: str, repeated: bool, inner: bytes) -> bytes:
    encoded_key = key.encode()
    return (
        bytes((tag(ONCE_REQUEST_KEY, LENGTH),)) + varint(len(encoded_key)) + encoded_key
        + (bytes((tag(ONCE_REPEATED, VARINT), 1)) if repeated else b"")
        + bytes((tag(ONCE_REQUEST, LENGTH),)) + varint(len(inner)) + inner
    )


# -- replies ------------------------------------------------------------------------


def encode_stale_reply(trial_ids: list[int]) -> bytes:
    if not trial_ids:
        return b""
    payload = b"".join(varint(i & ((1 << 64) - 1)) for i in trial_ids)
    return bytes((tag(STALE_REPLY_TRIAL_IDS, LENGTH),)) + varint(len(payload)) + payload


def decode_stale_reply(data: bytes) -> list[int]:
    data = as_bytes(data)
    pos, end = 0, len(data)
    ids: list[int] = []
    while pos < end:
        field, wire_type, pos = read_tag(data, pos, end)
        if field == STALE_REPLY_TRIAL_IDS:
            pos = read_varints(data, pos, end, field, wire_type, ids, as_int64)
        else:
            pos = skip(data, pos, end, field, wire_type, 0)
    return ids


def _int_field(field: int, value: int) -> bytes:
    if not value:
        return b""
    return bytes((tag(field, VARINT),)) + varint(value & ((1 << 64) - 1))
