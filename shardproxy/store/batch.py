"""One group-commit transaction: many clients' trial writes, set by set.

The batch reads what it must check in a fixed number of statements (the trials it
touches, locked; the studies it adds trials to, locked; their trial counts), checks
every operation against those rows in memory, in arrival order, and then writes
each kind of row with one multi-row statement. An operation that fails a check
gets its own exception and contributes nothing; the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from optuna.distributions import check_distribution_compatibility
from optuna.exceptions import UpdateFinishedTrialError
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from shardproxy.rows import FINISHED_STATES, RUNNING, STATE_NAMES, WAITING, stored_datetime
from shardproxy.store import sql
from shardproxy.store.operations import (
    CreateTrial,
    Operation,
    SetIntermediate,
    SetParam,
    SetStateValues,
    SetTrialAttr,
    parse_distribution,
)
from shardproxy.store.schema import (
    studies,
    trial_intermediate_values,
    trial_params,
    trial_system_attributes,
    trial_user_attributes,
    trial_values,
    trials,
)

FINISHED_NAMES = frozenset(STATE_NAMES[s] for s in FINISHED_STATES)

# (study_id, param name) -> the distribution JSON of the study's first such param.
DistributionLookup = Callable[[Connection, int, str], "str | None"]


def utc_now() -> datetime:
    """Optuna stores naive UTC datetimes."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def value_repr(value: float) -> tuple[float | None, str]:
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def intermediate_repr(value: float) -> tuple[float | None, str]:
    if math.isnan(value):
        return None, "NAN"
    return value_repr(value)


@dataclass
class _Trial:
    study_id: int
    number: int
    state: str


@dataclass
class _Rows:
    """What the batch will write, gathered while the operations are checked."""

    params: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    values: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    intermediates: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    user_attrs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    system_attrs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    # (state, sets datetime_start, sets datetime_complete) -> trial ids
    states: dict[tuple[str, bool, bool], list[int]] = field(default_factory=dict)
    _state_key: dict[int, tuple[str, bool, bool]] = field(default_factory=dict)

    def set_state(self, trial_id: int, state: str, start: bool, complete: bool) -> None:
        """One UPDATE per kind of change; a trial changed twice gets the combined change."""
        earlier = self._state_key.pop(trial_id, None)
        if earlier is not None:
            self.states[earlier].remove(trial_id)
            start, complete = start or earlier[1], complete or earlier[2]
        key = (state, start, complete)
        self.states.setdefault(key, []).append(trial_id)
        self._state_key[trial_id] = key

    def write(self, conn: Connection, now: datetime) -> None:
        if self.params:
            sql.insert_or_ignore(conn, trial_params, list(self.params.values()),
                                 ("trial_id", "param_name"))
        if self.values:
            sql.upsert(conn, trial_values, list(self.values.values()), ("trial_id", "objective"))
        if self.intermediates:
            sql.upsert(conn, trial_intermediate_values, list(self.intermediates.values()),
                       ("trial_id", "step"))
        for table, rows in ((trial_user_attributes, self.user_attrs),
                            (trial_system_attributes, self.system_attrs)):
            if rows:
                sql.upsert(conn, table, list(rows.values()), ("trial_id", "key"))
        for (state, start, complete), trial_ids in self.states.items():
            if not trial_ids:
                continue
            changes: dict[str, Any] = {"state": state}
            if start:
                changes["datetime_start"] = now
            if complete:
                changes["datetime_complete"] = now
            for part in sql.chunks(trial_ids):
                conn.execute(update(trials).where(trials.c.trial_id.in_(part)).values(changes))


class Batch:
    """Applies `operations` inside the caller's transaction on `conn`."""

    def __init__(
        self, conn: Connection, operations: list[Operation], distribution_of: DistributionLookup
    ) -> None:
        self.conn = conn
        self.operations = operations
        self.results: list[Any] = [None] * len(operations)
        # Distributions this batch establishes, for the store's cache once committed.
        self.new_distributions: dict[tuple[int, str], str] = {}
        self._distribution_of = distribution_of
        self._rows = _Rows()
        self._trials: dict[int, _Trial] = {}
        self._now = utc_now()

    def run(self) -> list[Any]:
        """Each operation's result, or the exception that operation alone raised."""
        self._lock_trials()
        self._create_trials()
        for index, op in enumerate(self.operations):
            if isinstance(op, CreateTrial):
                continue
            try:
                self.results[index] = self._apply(op)
            except (KeyError, ValueError, UpdateFinishedTrialError) as exc:
                self.results[index] = exc
        self._rows.write(self.conn, self._now)
        return self.results

    # -- reading and locking ----------------------------------------------------------

    def _lock_trials(self) -> None:
        ids = sorted({op.trial_id for op in self.operations if not isinstance(op, CreateTrial)})
        for part in sql.chunks(ids):
            query = (
                select(trials.c.trial_id, trials.c.study_id, trials.c.number, trials.c.state)
                .where(trials.c.trial_id.in_(part))
                .with_for_update()
            )
            for trial_id, study_id, number, state in self.conn.execute(query):
                self._trials[trial_id] = _Trial(study_id, number, state)

    def _create_trials(self) -> None:
        creates = [(i, op) for i, op in enumerate(self.operations) if isinstance(op, CreateTrial)]
        if not creates:
            return
        study_ids = sorted({op.study_id for _, op in creates})
        # The study-row lock makes "number = trials so far" safe, as in RDBStorage.
        locked = {
            sid for (sid,) in self.conn.execute(
                select(studies.c.study_id).where(studies.c.study_id.in_(study_ids))
                .with_for_update()
            )
        }
        counts: dict[int, int] = dict.fromkeys(locked, 0)
        if locked:
            query = (
                select(trials.c.study_id, func.count())
                .where(trials.c.study_id.in_(sorted(locked)))
                .group_by(trials.c.study_id)
            )
            counts.update({sid: n for sid, n in self.conn.execute(query)})
        accepted: list[tuple[int, CreateTrial]] = []
        rows: list[dict[str, Any]] = []
        for index, op in creates:
            if op.study_id not in locked:
                self.results[index] = KeyError(f"study {op.study_id} not found")
                continue
            try:
                self._check_template_params(op)
            except ValueError as exc:
                self.results[index] = exc
                continue
            number = counts[op.study_id]
            counts[op.study_id] = number + 1
            rows.append(self._trial_row(op, number))
            accepted.append((index, op))
        if not rows:
            return
        statement = insert(trials).returning(trials.c.trial_id, sort_by_parameter_order=True)
        new_ids = self.conn.execute(statement, rows).scalars().all()
        for (index, op), trial_id in zip(accepted, new_ids, strict=True):
            self.results[index] = trial_id
            if op.template is not None:
                self._template_children(trial_id, op)

    def _trial_row(self, op: CreateTrial, number: int) -> dict[str, Any]:
        template = op.template
        if template is None:
            return {"study_id": op.study_id, "number": number, "state": "RUNNING",
                    "datetime_start": self._now, "datetime_complete": None}
        return {
            "study_id": op.study_id,
            "number": number,
            "state": STATE_NAMES[template.state],
            "datetime_start": stored_datetime(template.datetime_start),
            "datetime_complete": stored_datetime(template.datetime_complete),
        }

    def _check_template_params(self, op: CreateTrial) -> None:
        if op.template is None:
            return
        for name, _, distribution_json in op.template.params:
            self._check_distribution(op.study_id, name, distribution_json)

    def _template_children(self, trial_id: int, op: CreateTrial) -> None:
        template = op.template
        assert template is not None
        rows = self._rows
        for objective, value in enumerate(template.values):
            stored, kind = value_repr(value)
            rows.values[(trial_id, objective)] = {
                "trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
        for name, value, distribution_json in template.params:
            rows.params.setdefault((trial_id, name), {
                "trial_id": trial_id, "param_name": name, "param_value": value,
                "distribution_json": distribution_json})
        for key, value_json in template.user_attrs:
            rows.user_attrs[(trial_id, key)] = {
                "trial_id": trial_id, "key": key, "value_json": value_json}
        for key, value_json in template.system_attrs:
            rows.system_attrs[(trial_id, key)] = {
                "trial_id": trial_id, "key": key, "value_json": value_json}
        for step, value in template.intermediate_values:
            stored, kind = intermediate_repr(value)
            rows.intermediates[(trial_id, step)] = {
                "trial_id": trial_id, "step": step, "intermediate_value": stored,
                "intermediate_value_type": kind}

    # -- checking one write -----------------------------------------------------------

    def _updatable(self, trial_id: int) -> _Trial:
        trial = self._trials.get(trial_id)
        if trial is None:
            raise KeyError(f"trial {trial_id} not found")
        if trial.state in FINISHED_NAMES:
            raise UpdateFinishedTrialError(
                f"Trial#{trial.number} has already finished and can not be updated."
            )
        return trial

    def _check_distribution(self, study_id: int, name: str, distribution_json: str) -> None:
        key = (study_id, name)
        previous = self.new_distributions.get(key) or self._distribution_of(
            self.conn, study_id, name
        )
        if previous is None:
            self.new_distributions[key] = distribution_json
        elif previous != distribution_json:
            check_distribution_compatibility(
                parse_distribution(previous), parse_distribution(distribution_json)
            )

    def _apply(self, op: Operation) -> Any:
        rows = self._rows
        trial = self._updatable(op.trial_id)  # type: ignore[union-attr]
        if isinstance(op, SetParam):
            self._check_distribution(trial.study_id, op.name, op.distribution_json)
            rows.params.setdefault((op.trial_id, op.name), {
                "trial_id": op.trial_id, "param_name": op.name, "param_value": op.value,
                "distribution_json": op.distribution_json})
            return None
        if isinstance(op, SetStateValues):
            return self._set_state_values(op, trial)
        if isinstance(op, SetIntermediate):
            stored, kind = intermediate_repr(op.value)
            rows.intermediates[(op.trial_id, op.step)] = {
                "trial_id": op.trial_id, "step": op.step, "intermediate_value": stored,
                "intermediate_value_type": kind}
            return None
        assert isinstance(op, SetTrialAttr)
        target = rows.system_attrs if op.system else rows.user_attrs
        target[(op.trial_id, op.key)] = {
            "trial_id": op.trial_id, "key": op.key, "value_json": op.value_json}
        return None

    def _set_state_values(self, op: SetStateValues, trial: _Trial) -> bool:
        # In RDBStorage's order: values are written before the WAITING check.
        for objective, value in enumerate(op.values or ()):
            stored, kind = value_repr(value)
            self._rows.values[(op.trial_id, objective)] = {
                "trial_id": op.trial_id, "objective": objective, "value": stored,
                "value_type": kind}
        if op.state == RUNNING and trial.state != STATE_NAMES[WAITING]:
            return False
        trial.state = STATE_NAMES[op.state]
        self._rows.set_state(op.trial_id, trial.state, op.state == RUNNING,
                             op.state in FINISHED_STATES)
        return True


def first_distribution(conn: Connection, study_id: int, name: str) -> str | None:
    """The distribution of the study's earlier param of that name, as RDBStorage reads it."""
    query = (
        select(trial_params.c.distribution_json)
        .join(trials, trials.c.trial_id == trial_params.c.trial_id)
        .where(and_(trials.c.study_id == study_id, trial_params.c.param_name == name))
        .limit(1)
    )
    row = conn.execute(query).first()
    return None if row is None else str(row[0])
