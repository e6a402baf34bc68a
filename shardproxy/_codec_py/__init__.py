"""The pure-Python wire codec: the twin of the compiled `shardproxy._codec`.

It reads the few fields a handler needs straight from request bytes and writes
reply bytes from row values, with no generated protobuf classes; every field
number and tag is named in shardproxy.wire. Both codecs behave the same, down to
the error messages; the tests hold them to it and to Optuna's own `api_pb2`
classes. This package only gathers the public API; its modules mirror the compiled
codec's files (_codec/*.pxi): `reading` (readbuf), `writing` (writebuf),
`requests` and `replies`.

Decoding follows proto3 as Python protobuf (upb) parses it: last scalar wins,
repeated scalars packed or not, map entries last key wins with missing key or
value defaulted (and an entry carrying an unknown field dropped), a repeated
submessage merged, unknown fields (groups included) skipped, nesting limited to
100 levels. Deliberately stricter than protobuf: a known field sent with the wrong
wire type is a DecodeError here (protobuf keeps it as an unknown field and reports
the field unset), and so is field number 0 inside a group or in a message without
fields (which protobuf ignores there, and refuses everywhere else).
"""

from __future__ import annotations

from shardproxy._codec_py.reading import MAX_DEPTH, Buffer, DecodeError
from shardproxy._codec_py.replies import (
    encode_all_studies_reply,
    encode_attrs_reply,
    encode_bool_reply,
    encode_directions_reply,
    encode_id_reply,
    encode_name_reply,
    encode_study,
    encode_trial,
    encode_trial_reply,
    encode_trials_reply,
)
from shardproxy._codec_py.requests import (
    decode_attr_request,
    decode_create_new_study_request,
    decode_create_new_trial_request,
    decode_empty_request,
    decode_get_trials_request,
    decode_id_request,
    decode_name_request,
    decode_set_trial_intermediate_value_request,
    decode_set_trial_param_request,
    decode_set_trial_state_values_request,
    decode_trial,
    decode_trial_number_request,
)

__all__ = [
    "MAX_DEPTH",
    "Buffer",
    "DecodeError",
    "decode_attr_request",
    "decode_create_new_study_request",
    "decode_create_new_trial_request",
    "decode_empty_request",
    "decode_get_trials_request",
    "decode_id_request",
    "decode_name_request",
    "decode_set_trial_intermediate_value_request",
    "decode_set_trial_param_request",
    "decode_set_trial_state_values_request",
    "decode_trial",
    "decode_trial_number_request",
    "encode_all_studies_reply",
    "encode_attrs_reply",
    "encode_bool_reply",
    "encode_directions_reply",
    "encode_id_reply",
    "encode_name_reply",
    "encode_study",
    "encode_trial",
    "encode_trial_reply",
    "encode_trials_reply",
]
