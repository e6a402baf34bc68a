"""The 19 RPCs of Optuna's StorageService, from request bytes to reply bytes.

This is the owner's side of a request: the study it touches is served by this
process. Requests are decoded by the codec into plain values, answered from the
study cache (reads) or the store (writes), and replies are encoded straight to
bytes. Errors become the status codes Optuna's own servicer uses, because the
client turns codes into exceptions (NOT_FOUND → KeyError, ALREADY_EXISTS →
DuplicatedStudyError, FAILED_PRECONDITION → UpdateFinishedTrialError,
INVALID_ARGUMENT → ValueError).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import grpc
import sqlalchemy.exc
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError

from shardproxy import codec
from shardproxy.cache import StudyCaches
from shardproxy.errors import StatusError
from shardproxy.rows import DIRECTION_NAMES, STATE_NAMES, TrialRow
from shardproxy.store import Store

_logger = logging.getLogger(__name__)

# The service's methods in the order of proto/storage.proto; a method's index is
# its identity on the forwarding channel between workers.
METHODS = (
    "CreateNewStudy",
    "DeleteStudy",
    "SetStudyUserAttribute",
    "SetStudySystemAttribute",
    "GetStudyIdFromName",
    "GetStudyNameFromId",
    "GetStudyDirections",
    "GetStudyUserAttributes",
    "GetStudySystemAttributes",
    "GetAllStudies",
    "CreateNewTrial",
    "SetTrialParameter",
    "GetTrialIdFromStudyIdTrialNumber",
    "SetTrialStateValues",
    "SetTrialIntermediateValue",
    "SetTrialUserAttribute",
    "SetTrialSystemAttribute",
    "GetTrial",
    "GetTrials",
)
METHOD_INDEX = {name: index for index, name in enumerate(METHODS)}


class TrialStudies(Protocol):
    """Where this process remembers which study a trial belongs to."""

    def get(self, trial_id: int) -> int | None: ...

    def learn(self, trial_id: int, study_id: int) -> None: ...

    def forget_study(self, study_id: int) -> None: ...


class Service:
    """Answers requests for the studies this process owns."""

    def __init__(self, store: Store, caches: StudyCaches, trial_studies: TrialStudies) -> None:
        self._store = store
        self._caches = caches
        self._trial_studies = trial_studies
        self._handlers: list[Callable[[bytes], bytes]] = [
            getattr(self, "_" + _snake_case(name)) for name in METHODS
        ]

    def handle(self, method_index: int, request: bytes) -> bytes:
        """The reply bytes for `request`; raises StatusError with the status to send."""
        try:
            return self._handlers[method_index](request)
        except _DOMAIN_ERRORS as exc:
            raise status_error(exc) from exc
        except sqlalchemy.exc.OperationalError as exc:
            # The store already retried transient errors up to its deadline.
            _logger.warning("database unavailable: %s", exc)
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "database unavailable") from exc

    def handle_status(self, method_index: int, request: bytes) -> tuple[int, bytes]:
        """`handle` for the forwarding channel: (0, reply) or (status code, details)."""
        try:
            return 0, self.handle(method_index, request)
        except StatusError as exc:
            return exc.code.value[0], exc.details.encode()

    def study_of_trial(self, trial_id: int) -> int:
        """The study of a trial: remembered, or one primary-key lookup (KeyError if none)."""
        study_id = self._trial_studies.get(trial_id)
        if study_id is None:
            study_id = self._store.get_study_id_of_trial(trial_id)
            self._trial_studies.learn(trial_id, study_id)
        return study_id

    def remember_trial(self, trial_id: int, study_id: int) -> None:
        self._trial_studies.learn(trial_id, study_id)

    # -- studies ---------------------------------------------------------------

    def _create_new_study(self, request: bytes) -> bytes:
        directions, study_name = codec.decode_create_new_study_request(request)
        if not directions:
            raise ValueError("a study needs at least one direction")
        for direction in directions:
            _check_enum(direction, DIRECTION_NAMES, "study direction")
        return codec.encode_id_reply(self._store.create_new_study(directions, study_name))

    def _delete_study(self, request: bytes) -> bytes:
        study_id = codec.decode_id_request(request)
        self._store.delete_study(study_id)
        self._caches.drop(study_id)
        self._trial_studies.forget_study(study_id)
        return b""

    def _set_study_user_attribute(self, request: bytes) -> bytes:
        study_id, key, value_json = codec.decode_attr_request(request)
        self._store.set_study_user_attr(study_id, key, value_json)
        return b""

    def _set_study_system_attribute(self, request: bytes) -> bytes:
        study_id, key, value_json = codec.decode_attr_request(request)
        self._store.set_study_system_attr(study_id, key, value_json)
        return b""

    def _get_study_id_from_name(self, request: bytes) -> bytes:
        study_name = codec.decode_name_request(request)
        return codec.encode_id_reply(self._store.get_study_id_from_name(study_name))

    def _get_study_name_from_id(self, request: bytes) -> bytes:
        study_id = codec.decode_id_request(request)
        return codec.encode_name_reply(self._store.get_study_name_from_id(study_id))

    def _get_study_directions(self, request: bytes) -> bytes:
        study_id = codec.decode_id_request(request)
        return codec.encode_directions_reply(self._store.get_study_directions(study_id))

    def _get_study_user_attributes(self, request: bytes) -> bytes:
        study_id = codec.decode_id_request(request)
        return codec.encode_attrs_reply(self._store.get_study_user_attrs(study_id))

    def _get_study_system_attributes(self, request: bytes) -> bytes:
        study_id = codec.decode_id_request(request)
        return codec.encode_attrs_reply(self._store.get_study_system_attrs(study_id))

    def _get_all_studies(self, request: bytes) -> bytes:
        codec.decode_empty_request(request)
        studies = self._store.get_all_studies()
        return codec.encode_all_studies_reply([codec.encode_study(s) for s in studies])

    # -- trials ----------------------------------------------------------------

    def _create_new_trial(self, request: bytes) -> bytes:
        study_id, template = codec.decode_create_new_trial_request(request)
        if template is not None:
            _check_template(template)
        trial_id = self._store.create_new_trial(study_id, template)
        self.remember_trial(trial_id, study_id)
        return codec.encode_id_reply(trial_id)

    def _set_trial_parameter(self, request: bytes) -> bytes:
        trial_id, name, value, distribution_json = codec.decode_set_trial_param_request(request)
        # Routing has just looked the trial's study up, so it is remembered.
        study_id = self._trial_studies.get(trial_id)
        self._store.set_trial_param(trial_id, name, value, distribution_json, study_id=study_id)
        return b""

    def _get_trial_id_from_study_id_trial_number(self, request: bytes) -> bytes:
        study_id, number = codec.decode_trial_number_request(request)
        trial_id = self._store.get_trial_id_from_study_id_trial_number(study_id, number)
        return codec.encode_id_reply(trial_id)

    def _set_trial_state_values(self, request: bytes) -> bytes:
        trial_id, state, values = codec.decode_set_trial_state_values_request(request)
        _check_enum(state, STATE_NAMES, "trial state")
        updated = self._store.set_trial_state_values(trial_id, state, values or None)
        return codec.encode_bool_reply(updated)

    def _set_trial_intermediate_value(self, request: bytes) -> bytes:
        trial_id, step, value = codec.decode_set_trial_intermediate_value_request(request)
        self._store.set_trial_intermediate_value(trial_id, step, value)
        return b""

    def _set_trial_user_attribute(self, request: bytes) -> bytes:
        trial_id, key, value_json = codec.decode_attr_request(request)
        self._store.set_trial_user_attr(trial_id, key, value_json)
        return b""

    def _set_trial_system_attribute(self, request: bytes) -> bytes:
        trial_id, key, value_json = codec.decode_attr_request(request)
        self._store.set_trial_system_attr(trial_id, key, value_json)
        return b""

    def _get_trial(self, request: bytes) -> bytes:
        trial_id = codec.decode_id_request(request)
        study_id = self.study_of_trial(trial_id)
        try:
            encoded = self._trial_bytes(study_id, trial_id)
        except KeyError:  # the remembered study is gone
            encoded = None
        if encoded is None:
            # The remembered study can be stale where the database reuses the ids of
            # a deleted study's trials (SQLite does): ask the database once more.
            actual_study_id = self._store.get_study_id_of_trial(trial_id)
            if actual_study_id != study_id:
                self.remember_trial(trial_id, actual_study_id)
                encoded = self._trial_bytes(actual_study_id, trial_id)
            if encoded is None:
                raise KeyError(f"trial {trial_id} not found")
        return codec.encode_trial_reply(encoded)

    def _trial_bytes(self, study_id: int, trial_id: int) -> bytes | None:
        # A finished trial never changes: no sync needed to answer for it.
        encoded = self._caches.get(study_id).finished_trial_bytes(trial_id)
        if encoded is None:
            encoded = self._caches.synced(study_id).trial_bytes(trial_id)
        return encoded

    def _get_trials(self, request: bytes) -> bytes:
        study_id, included_ids, id_greater_than = codec.decode_get_trials_request(request)
        cache = self._caches.synced(study_id)
        return codec.encode_trials_reply(cache.trials_bytes(included_ids, id_greater_than))


def _snake_case(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _check_enum(value: int, names: tuple[str, ...], what: str) -> None:
    if not 0 <= value < len(names):
        raise ValueError(f"unknown {what} {value}")


def _check_template(template: TrialRow) -> None:
    _check_enum(template.state, STATE_NAMES, "trial state")


# The client's mapping of codes to exceptions, read backwards; first match wins
# (DecodeError is a ValueError, but says more).
_CODE_OF_ERROR: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (codec.DecodeError, grpc.StatusCode.INVALID_ARGUMENT, "malformed request"),
    (KeyError, grpc.StatusCode.NOT_FOUND, "not found"),
    (DuplicatedStudyError, grpc.StatusCode.ALREADY_EXISTS, "study name taken"),
    (UpdateFinishedTrialError, grpc.StatusCode.FAILED_PRECONDITION, "trial already finished"),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, "invalid value"),
)
_DOMAIN_ERRORS = tuple(kind for kind, _, _ in _CODE_OF_ERROR)


def status_error(exc: Exception) -> StatusError:
    """The status that answers a domain error, as the client expects it."""
    for kind, code, summary in _CODE_OF_ERROR:
        if isinstance(exc, kind):
            # str(KeyError("x")) is "'x'": take the message itself.
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            return StatusError(code, f"{summary}: {text}" if text else summary)
    raise AssertionError(f"no status for {exc!r}")
