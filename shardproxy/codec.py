"""The one place that picks the codec: compiled Cython, or its pure-Python twin.

Both modules expose the same functions with the same behaviour (the test suite
runs every codec test against each). `SHARDPROXY_NO_EXTENSIONS=1` forces the pure
one; a missing or broken extension falls back to it, and `WHY_PURE` says why.
"""

from __future__ import annotations

import os
import platform
from types import ModuleType

from shardproxy import _codec_py


def _load() -> tuple[ModuleType, str | None]:
    if os.environ.get("SHARDPROXY_NO_EXTENSIONS", "") not in ("", "0"):
        return _codec_py, "SHARDPROXY_NO_EXTENSIONS is set"
    if platform.python_implementation() != "CPython":
        return _codec_py, f"{platform.python_implementation()} runs the pure codec"
    try:
        from shardproxy import _codec  # type: ignore[attr-defined]
    except ImportError as exc:
        return _codec_py, f"extension not importable: {exc}"
    return _codec, None


impl, WHY_PURE = _load()
IS_COMPILED: bool = WHY_PURE is None
NAME: str = "cython" if IS_COMPILED else "pure-python"

DecodeError = _codec_py.DecodeError

decode_create_new_study_request = impl.decode_create_new_study_request
decode_id_request = impl.decode_id_request
decode_attr_request = impl.decode_attr_request
decode_name_request = impl.decode_name_request
decode_empty_request = impl.decode_empty_request
decode_create_new_trial_request = impl.decode_create_new_trial_request
decode_set_trial_param_request = impl.decode_set_trial_param_request
decode_trial_number_request = impl.decode_trial_number_request
decode_set_trial_state_values_request = impl.decode_set_trial_state_values_request
decode_set_trial_intermediate_value_request = impl.decode_set_trial_intermediate_value_request
decode_get_trials_request = impl.decode_get_trials_request
decode_trial = impl.decode_trial

encode_id_reply = impl.encode_id_reply
encode_name_reply = impl.encode_name_reply
encode_directions_reply = impl.encode_directions_reply
encode_attrs_reply = impl.encode_attrs_reply
encode_study = impl.encode_study
encode_all_studies_reply = impl.encode_all_studies_reply
encode_bool_reply = impl.encode_bool_reply
encode_trial = impl.encode_trial
encode_trial_reply = impl.encode_trial_reply
encode_trials_reply = impl.encode_trials_reply


def describe() -> str:
    """One line for logs and `--version`: which codec runs, and why if it is the slow one."""
    return NAME if IS_COMPILED else f"{NAME} ({WHY_PURE})"
