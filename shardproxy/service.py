"""The 19 RPCs of Optuna's StorageService, for the studies this worker owns.

The owner's side of a request: the front has decoded it into its arguments and
found its study, and the study belongs to this worker. Reads are answered from
the study cache, writes go to the store; replies are encoded straight to bytes.
Each handler takes the decoded fields of its request in the order of the message;
a trial-scoped handler takes the trial's study first, as the router found it.
Errors are raised as the exceptions RDBStorage raises (KeyError, ValueError,
DuplicatedStudyError, UpdateFinishedTrialError); `errors.status_error` picks the
status that makes the client raise the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardproxy import codec
from shardproxy.reply_room import ReplyRoom
from shardproxy.rows import DIRECTION_NAMES, STATE_NAMES, TrialRow
from shardproxy.store import Store
from shardproxy.study_caches import StudyCaches
from shardproxy.trial_reads import TrialReads
from shardproxy.wire import METHODS


class Service:
    """Answers decoded requests for the studies this process owns."""

    def __init__(
        self, store: Store, caches: StudyCaches, trial_reads: TrialReads, room: ReplyRoom
    ) -> None:
        self._store = store
        self._caches = caches
        self._trial_reads = trial_reads
        self._room = room
        self._handlers: list[Callable[..., bytes]] = [
            getattr(self, "_" + _snake_case(name)) for name in METHODS
        ]

    def call(self, method_index: int, args: tuple[Any, ...]) -> bytes:
        """The reply bytes for one decoded request."""
        return self._handlers[method_index](*args)

    # -- studies ---------------------------------------------------------------

    def _create_new_study(self, directions: list[int], study_name: str) -> bytes:
        if not directions:
            raise ValueError("a study needs at least one direction")
        for direction in directions:
            _check_enum(direction, DIRECTION_NAMES, "study direction")
        return codec.encode_id_reply(self._store.create_new_study(directions, study_name))

    def _delete_study(self, study_id: int) -> bytes:
        self._store.delete_study(study_id)
        self._caches.drop(study_id)
        return b""

    def _set_study_user_attribute(self, study_id: int, key: str, value_json: str) -> bytes:
        self._store.set_study_user_attr(study_id, key, value_json)
        return b""

    def _set_study_system_attribute(self, study_id: int, key: str, value_json: str) -> bytes:
        self._store.set_study_system_attr(study_id, key, value_json)
        return b""

    def _get_study_id_from_name(self, study_name: str) -> bytes:
        return codec.encode_id_reply(self._store.get_study_id_from_name(study_name))

    def _get_study_name_from_id(self, study_id: int) -> bytes:
        return codec.encode_name_reply(self._store.get_study_name_from_id(study_id))

    def _get_study_directions(self, study_id: int) -> bytes:
        return codec.encode_directions_reply(self._store.get_study_directions(study_id))

    def _get_study_user_attributes(self, study_id: int) -> bytes:
        return codec.encode_attrs_reply(self._store.get_study_user_attrs(study_id))

    def _get_study_system_attributes(self, study_id: int) -> bytes:
        return codec.encode_attrs_reply(self._store.get_study_system_attrs(study_id))

    def _get_all_studies(self) -> bytes:
        studies = self._store.get_all_studies()
        return codec.encode_all_studies_reply([codec.encode_study(s) for s in studies])

    # -- trials ----------------------------------------------------------------

    def _create_new_trial(self, study_id: int, template: TrialRow | None) -> bytes:
        if template is not None:
            _check_enum(template.state, STATE_NAMES, "trial state")
        return codec.encode_id_reply(self._store.create_new_trial(study_id, template))

    def _set_trial_parameter(
        self, study_id: int, trial_id: int, name: str, value: float, distribution_json: str
    ) -> bytes:
        self._store.set_trial_param(trial_id, name, value, distribution_json, study_id=study_id)
        return b""

    def _get_trial_id_from_study_id_trial_number(self, study_id: int, number: int) -> bytes:
        # Where the study is cached, its trial of that rank by id is the likely one,
        # which the store confirms by primary key instead of reading the study.
        cache = self._caches.held(study_id)
        guess = None if cache is None else cache.id_of_rank(number)
        trial_id = self._store.get_trial_id_from_study_id_trial_number(study_id, number, guess)
        return codec.encode_id_reply(trial_id)

    def _set_trial_state_values(
        self, study_id: int, trial_id: int, state: int, values: list[float]
    ) -> bytes:
        _check_enum(state, STATE_NAMES, "trial state")
        updated = self._store.set_trial_state_values(trial_id, state, values or None)
        return codec.encode_bool_reply(updated)

    def _set_trial_intermediate_value(
        self, study_id: int, trial_id: int, step: int, value: float
    ) -> bytes:
        self._store.set_trial_intermediate_value(trial_id, step, value)
        return b""

    def _set_trial_user_attribute(
        self, study_id: int, trial_id: int, key: str, value_json: str
    ) -> bytes:
        self._store.set_trial_user_attr(trial_id, key, value_json)
        return b""

    def _set_trial_system_attribute(
        self, study_id: int, trial_id: int, key: str, value_json: str
    ) -> bytes:
        self._store.set_trial_system_attr(trial_id, key, value_json)
        return b""

    def _get_trial(self, study_id: int, trial_id: int) -> bytes:
        cache = self._caches.get(study_id)
        # A finished trial never changes: no database read needed to answer for it.
        encoded = cache.finished_trial_bytes(trial_id)
        if encoded is None and cache.syncing:
            # The study's reads keep a sync going: the next one, shared with them,
            # costs no statement of this read's own (see trial_reads).
            encoded = self._caches.synced(study_id).trial_bytes(trial_id)
        elif encoded is None:
            # Read alone (batched with other GetTrials), not by syncing the study,
            # which would re-read every unfinished trial of it (see trial_reads).
            row = self._trial_reads.read(trial_id)
            encoded = None if row is None else codec.encode_trial(row)
        if encoded is None:
            raise KeyError(f"trial {trial_id} not found")
        return codec.encode_trial_reply(encoded)

    def _get_trials(self, study_id: int, included_ids: list[int], id_greater_than: int) -> bytes:
        return self._caches.synced(study_id).trials_reply(
            included_ids, id_greater_than, lambda size: self._room.hold(size, study_id)
        )


def _snake_case(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _check_enum(value: int, names: tuple[str, ...], what: str) -> None:
    if not 0 <= value < len(names):
        raise ValueError(f"unknown {what} {value}")
