"""Optuna's RDBStorage behind the Store's wire-level API, for side-by-side tests.

The conversions are the ones Optuna's own gRPC servicer applies between the wire
and RDBStorage (JSON text <-> values, distribution JSON <-> objects, wire
datetimes <-> datetimes), so the two sides see the same calls and are compared
on the same values.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from shardproxy.rows import STATE_NAMES, WIRE_DATETIME_FORMAT, StudyRow, TrialRow

_DIRECTIONS = (StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE)


def wire_row(trial: FrozenTrial) -> TrialRow:
    """A FrozenTrial as the servicer puts it on the wire, in the Store's row shape."""
    return TrialRow(
        trial._trial_id,
        trial.number,
        STATE_NAMES.index(trial.state.name),
        list(trial.values or []),
        _wire_time(trial.datetime_start),
        _wire_time(trial.datetime_complete),
        [
            (name, trial.distributions[name].to_internal_repr(value),
             distribution_to_json(trial.distributions[name]))
            for name, value in trial.params.items()
        ],
        [(k, json.dumps(v)) for k, v in trial.user_attrs.items()],
        [(k, json.dumps(v)) for k, v in trial.system_attrs.items()],
        list(trial.intermediate_values.items()),
    )


def frozen_template(row: TrialRow) -> FrozenTrial:
    """A template row as the servicer turns it into a FrozenTrial."""
    distributions = {name: json_to_distribution(d) for name, _, d in row.params}
    return FrozenTrial(
        number=row.number,
        state=TrialState[STATE_NAMES[row.state]],
        value=None,
        values=list(row.values) or None,
        datetime_start=_parse_time(row.datetime_start),
        datetime_complete=_parse_time(row.datetime_complete),
        params={n: distributions[n].to_external_repr(v) for n, v, _ in row.params},
        distributions=distributions,
        user_attrs={k: json.loads(v) for k, v in row.user_attrs},
        system_attrs={k: json.loads(v) for k, v in row.system_attrs},
        intermediate_values=dict(row.intermediate_values),
        trial_id=row.trial_id,
    )


def _wire_time(value: datetime | None) -> str:
    return value.strftime(WIRE_DATETIME_FORMAT) if value else ""


def _parse_time(text: str) -> datetime | None:
    return datetime.strptime(text, WIRE_DATETIME_FORMAT) if text else None


class ReferenceStore:
    """The Store's methods, answered by Optuna's RDBStorage."""

    def __init__(self, url: str) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = RDBStorage(url)

    def close(self) -> None:
        self.storage.engine.dispose()

    def create_new_study(self, directions: Sequence[int], study_name: str) -> int:
        return self.storage.create_new_study([_DIRECTIONS[d] for d in directions], study_name)

    def delete_study(self, study_id: int) -> None:
        self.storage.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value_json: str) -> None:
        self.storage.set_study_user_attr(study_id, key, json.loads(value_json))

    def set_study_system_attr(self, study_id: int, key: str, value_json: str) -> None:
        self.storage.set_study_system_attr(study_id, key, json.loads(value_json))

    def get_study_id_from_name(self, name: str) -> int:
        return self.storage.get_study_id_from_name(name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[int]:
        return [_DIRECTIONS.index(d) for d in self.storage.get_study_directions(study_id)]

    def get_study_user_attrs(self, study_id: int) -> dict[str, str]:
        attrs = self.storage.get_study_user_attrs(study_id)
        return {k: json.dumps(v) for k, v in attrs.items()}

    def get_study_system_attrs(self, study_id: int) -> dict[str, str]:
        attrs = self.storage.get_study_system_attrs(study_id)
        return {k: json.dumps(v) for k, v in attrs.items()}

    def get_all_studies(self) -> list[StudyRow]:
        return [
            StudyRow(
                s._study_id,
                s.study_name,
                [_DIRECTIONS.index(d) for d in s.directions],
                {k: json.dumps(v) for k, v in s.user_attrs.items()},
                {k: json.dumps(v) for k, v in s.system_attrs.items()},
            )
            for s in self.storage.get_all_studies()
        ]

    def create_new_trial(self, study_id: int, template: TrialRow | None) -> int:
        frozen = None if template is None else frozen_template(template)
        return self.storage.create_new_trial(study_id, frozen)

    def set_trial_param(
        self, trial_id: int, name: str, value_internal: float, distribution_json: str
    ) -> None:
        distribution = json_to_distribution(distribution_json)
        self.storage.set_trial_param(trial_id, name, value_internal, distribution)

    def set_trial_state_values(
        self, trial_id: int, state: int, values: Sequence[float] | None
    ) -> bool:
        return self.storage.set_trial_state_values(
            trial_id, TrialState[STATE_NAMES[state]], None if values is None else list(values)
        )

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self.storage.set_trial_intermediate_value(trial_id, step, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value_json: str) -> None:
        self.storage.set_trial_user_attr(trial_id, key, json.loads(value_json))

    def set_trial_system_attr(self, trial_id: int, key: str, value_json: str) -> None:
        self.storage.set_trial_system_attr(trial_id, key, json.loads(value_json))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def get_trial(self, trial_id: int) -> TrialRow:
        return wire_row(self.storage.get_trial(trial_id))

    def load_trials(
        self, study_id: int, *, id_greater_than: int, ids: Collection[int] = ()
    ) -> list[TrialRow]:
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        return [
            wire_row(t) for t in trials if t._trial_id > id_greater_than or t._trial_id in ids
        ]
