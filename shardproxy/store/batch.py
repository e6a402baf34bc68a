"""One group-commit transaction: many clients' trial writes, set by set.

The batch reads what it must check in a fixed number of statements (the studies it
adds trials to, locked, and their trial counts; the trials it writes to, locked),
checks every operation against those rows in memory, in arrival order, and then
writes each kind of row with one multi-row statement. An operation that fails a
check gets its own exception and contributes nothing; the others go on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optuna.distributions import check_distribution_compatibility
from optuna.exceptions import UpdateFinishedTrialError
from sqlalchemy import and_, bindparam, func, insert, or_, select, update
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
from shardproxy.store.pending import PendingRows, utc_now, write_states
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import studies, trial_params, trials

FINISHED_NAMES = frozenset(STATE_NAMES[s] for s in FINISHED_STATES)
# RDBStorage's message for a missing row.
NOT_FOUND = "Record does not exist."

# (study_id, param name) -> the distribution JSON of the study's first such param.
DistributionLookup = Callable[[Connection, int, str], "str | None"]


@dataclass
class _Trial:
    """A trial row as this batch sees it, changes included."""

    study_id: int
    number: int
    state: str
    start_changed: bool = False
    complete_changed: bool = False
    found_state: str = ""

    def __post_init__(self) -> None:
        self.found_state = self.state

    @property
    def state_changed(self) -> bool:
        return self.state != self.found_state


@dataclass
class Witness:
    """Rows only this batch's commit can have produced (see `commit_check`)."""

    created_ids: list[int]
    # trial id -> state name this batch set (the state differs from the one it found)
    state_changes: dict[int, str]

    def is_empty(self) -> bool:
        return not self.created_ids and not self.state_changes


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
        self.created_ids: list[int] = []
        self._distribution_of = distribution_of
        self._rows = PendingRows()
        self._trials: dict[int, _Trial] = {}
        self._now = utc_now()

    def run(self) -> list[Any]:
        """Each operation's result, or the exception that operation alone raised.

        The operations take effect as if applied one by one: first the new trials,
        then the trial writes in arrival order. (They arrived concurrently, so any
        order is one their callers could have seen.)
        """
        self._create_trials()
        self._lock_trials()
        for index, op in enumerate(self.operations):
            if isinstance(op, CreateTrial):
                continue
            try:
                self.results[index] = self._apply(op)
            except (KeyError, ValueError, UpdateFinishedTrialError) as exc:
                self.results[index] = exc
        self._rows.write(self.conn)
        changes = {
            i: (t.state, t.start_changed, t.complete_changed)
            for i, t in self._trials.items()
            if t.state_changed or t.start_changed or t.complete_changed
        }
        write_states(self.conn, changes, self._now)
        return self.results

    def witness(self) -> Witness:
        """What shows, after a lost COMMIT reply, whether this batch committed."""
        changes = {i: t.state for i, t in self._trials.items() if t.state_changed}
        return Witness(list(self.created_ids), changes)

    # -- new trials -------------------------------------------------------------------

    def _create_trials(self) -> None:
        creates = [(i, op) for i, op in enumerate(self.operations) if isinstance(op, CreateTrial)]
        if not creates:
            return
        counts = self._lock_studies(sorted({op.study_id for _, op in creates}))
        accepted: list[tuple[int, CreateTrial, dict[str, Any]]] = []
        for index, op in creates:
            if op.study_id not in counts:
                self.results[index] = KeyError(NOT_FOUND)
                continue
            try:
                self._check_template_params(op)
            except ValueError as exc:
                self.results[index] = exc
                continue
            number = counts[op.study_id]
            counts[op.study_id] = number + 1
            accepted.append((index, op, self._trial_row(op, number)))
        if not accepted:
            return
        new_ids = self._insert_trials([row for _, _, row in accepted])
        for index, op, row in accepted:
            trial_id = new_ids[(row["study_id"], row["number"])]
            self.results[index] = trial_id
            self.created_ids.append(trial_id)
            if op.template is not None:
                self._template_children(trial_id, op)

    def _lock_studies(self, study_ids: list[int]) -> dict[int, int]:
        """Locks the studies' rows, as RDBStorage does, and counts their trials.

        The lock makes "number = trials so far" safe: every trial of these studies
        committed before it was granted, and none can be added until this commits.
        """
        locked = _LOCK_STUDIES.execute(self.conn, {"ids": study_ids}).scalars().all()
        counts: dict[int, int] = dict.fromkeys(locked, 0)
        if locked:
            found = _COUNT_TRIALS.execute(self.conn, {"ids": sorted(locked)})
            counts.update({sid: n for sid, n in found})
        return counts

    def _insert_trials(self, rows: list[dict[str, Any]]) -> dict[tuple[int, int], int]:
        """The new trial ids by (study_id, number), in one statement where RETURNING exists."""
        if self.conn.dialect.insert_returning:
            created = self.conn.execute(_INSERT_TRIALS_RETURNING, rows).all()
        else:  # MySQL proper: find them by number, under the study locks
            self.conn.execute(insert(trials), rows)
            first: dict[int, int] = {}
            for row in rows:
                first.setdefault(row["study_id"], row["number"])
            created = self.conn.execute(
                select(trials.c.trial_id, trials.c.study_id, trials.c.number).where(
                    or_(*(and_(trials.c.study_id == s, trials.c.number >= n)
                          for s, n in first.items()))
                )
            ).all()
        ids = {(study_id, number): trial_id for trial_id, study_id, number in created}
        self._keep_numbers_in_id_order(ids)
        return ids

    def _keep_numbers_in_id_order(self, ids: dict[tuple[int, int], int]) -> None:
        """Renumbers, should the database have handed out ids out of row order.

        Within a study trial id order must equal number order (readers rely on it);
        every backend assigns the ids of one multi-row INSERT in row order, so this
        finds nothing to do unless that ever changes.
        """
        by_study: dict[int, list[tuple[int, int]]] = {}
        for (study_id, number), trial_id in ids.items():
            by_study.setdefault(study_id, []).append((number, trial_id))
        for study_id, pairs in by_study.items():
            numbers = sorted(number for number, _ in pairs)
            in_id_order = sorted(trial_id for _, trial_id in pairs)
            if [t for _, t in sorted(pairs)] == in_id_order:
                continue
            for number, trial_id in zip(numbers, in_id_order, strict=True):
                self.conn.execute(
                    update(trials).where(trials.c.trial_id == trial_id).values(number=number)
                )
                ids[(study_id, number)] = trial_id

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
        pending: dict[tuple[int, str], str] = {}
        for name, _, distribution_json in op.template.params:
            self._check_distribution(op.study_id, name, distribution_json, pending)
        # Only a trial that is created establishes its distributions.
        self.new_distributions.update(pending)

    def _template_children(self, trial_id: int, op: CreateTrial) -> None:
        template = op.template
        assert template is not None
        rows = self._rows
        for objective, value in enumerate(template.values):
            rows.add_value(trial_id, objective, value)
        for name, value, distribution_json in template.params:
            rows.add_param(trial_id, name, value, distribution_json)
        for key, value_json in template.user_attrs:
            rows.add_attr(False, trial_id, key, value_json)
        for key, value_json in template.system_attrs:
            rows.add_attr(True, trial_id, key, value_json)
        for step, value in template.intermediate_values:
            rows.add_intermediate(trial_id, step, value)

    # -- writes to existing trials ------------------------------------------------------

    def _lock_trials(self) -> None:
        ids = sorted({op.trial_id for op in self.operations if not isinstance(op, CreateTrial)})
        for part in sql.chunks(ids):
            locked = _LOCK_TRIALS.execute(self.conn, {"ids": list(part)})
            for trial_id, study_id, number, state in locked:
                self._trials[trial_id] = _Trial(study_id, number, state)

    def _updatable(self, trial_id: int) -> _Trial:
        trial = self._trials.get(trial_id)
        if trial is None:
            raise KeyError(NOT_FOUND)
        if trial.state in FINISHED_NAMES:
            raise UpdateFinishedTrialError(
                f"Trial#{trial.number} has already finished and can not be updated."
            )
        return trial

    def _check_distribution(
        self,
        study_id: int,
        name: str,
        distribution_json: str,
        pending: dict[tuple[int, str], str] | None = None,
    ) -> None:
        key = (study_id, name)
        previous = (
            (pending or {}).get(key)
            or self.new_distributions.get(key)
            or self._distribution_of(self.conn, study_id, name)
        )
        if previous is None:
            (self.new_distributions if pending is None else pending)[key] = distribution_json
        elif previous != distribution_json:
            check_distribution_compatibility(
                parse_distribution(previous), parse_distribution(distribution_json)
            )

    def _apply(self, op: Operation) -> Any:
        rows = self._rows
        trial = self._updatable(op.trial_id)  # type: ignore[union-attr]
        if isinstance(op, SetParam):
            self._check_distribution(trial.study_id, op.name, op.distribution_json)
            rows.add_param(op.trial_id, op.name, op.value, op.distribution_json)
            return None
        if isinstance(op, SetStateValues):
            return self._set_state_values(op, trial)
        if isinstance(op, SetIntermediate):
            rows.add_intermediate(op.trial_id, op.step, op.value)
            return None
        assert isinstance(op, SetTrialAttr)
        rows.add_attr(op.system, op.trial_id, op.key, op.value_json)
        return None

    def _set_state_values(self, op: SetStateValues, trial: _Trial) -> bool:
        # In RDBStorage's order: the values are written (and committed) even when
        # the WAITING check below then answers False.
        for objective, value in enumerate(op.values or ()):
            self._rows.add_value(op.trial_id, objective, value)
        if op.state == RUNNING and trial.state != STATE_NAMES[WAITING]:
            return False
        trial.state = STATE_NAMES[op.state]
        trial.start_changed = trial.start_changed or op.state == RUNNING
        trial.complete_changed = trial.complete_changed or op.state in FINISHED_STATES
        return True


def first_distribution(conn: Connection, study_id: int, name: str) -> str | None:
    """The distribution of the study's earlier param of that name, as RDBStorage reads it."""
    row = _FIRST_DISTRIBUTION.execute(conn, {"sid": study_id, "name": name}).first()
    return None if row is None else str(row[0])


# The batch's statements, built once (building one costs more than running it).
_LOCK_STUDIES = Prepared(
    select(studies.c.study_id)
    .where(studies.c.study_id.in_(bindparam("ids", expanding=True)))
    .with_for_update(),
    expanding=["ids"],
)
_COUNT_TRIALS = Prepared(
    select(trials.c.study_id, func.count(trials.c.trial_id))
    .where(trials.c.study_id.in_(bindparam("ids", expanding=True)))
    .group_by(trials.c.study_id),
    expanding=["ids"],
)
_INSERT_TRIALS_RETURNING = insert(trials).returning(
    trials.c.trial_id, trials.c.study_id, trials.c.number
)
_LOCK_TRIALS = Prepared(
    select(trials.c.trial_id, trials.c.study_id, trials.c.number, trials.c.state)
    .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
    .with_for_update(),
    expanding=["ids"],
)
_FIRST_DISTRIBUTION = Prepared(
    select(trial_params.c.distribution_json)
    .join(trials, trials.c.trial_id == trial_params.c.trial_id)
    .where(and_(trials.c.study_id == bindparam("sid"),
                trial_params.c.param_name == bindparam("name")))
    .limit(1)
)
