"""One group-commit transaction: many clients' trial writes, set by set.

The batch reads what it must check in a fixed number of statements (the studies it
adds trials to, locked; the trials it writes to, locked), checks every operation
against those rows in memory, in arrival order, and then writes each kind of row
with one multi-row statement. An operation that fails a check gets its own
exception and contributes nothing; the others go on.

Statements are saved where the database allows it, because a client's trial
costs about three batches and every statement is a round trip:
- New trials are numbered by the INSERT itself (`INSERT ... SELECT` over the
  study's trial count, with RETURNING), not by a COUNT before it; the count reads
  only the trials added since the store last numbered the study (`numbering`).
- An optimistic batch that finishes trials does not lock them first: one guarded
  UPDATE sets the states of the trials it finishes, locks the others, and counts
  the trials it found unfinished.
- An optimistic batch that only sets params (besides new trials) does not lock
  them first either: its INSERT takes its rows from a locking SELECT of the
  trials still unfinished, and counts the rows it found.
Should a guard find a trial finished or gone, the batch raises `GuardMissed`; the
committer rolls it back and runs it again the locking way, which gives each
operation its exact outcome.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import check_distribution_compatibility
from optuna.exceptions import UpdateFinishedTrialError
from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from shardproxy.rows import FINISHED_STATES, RUNNING, STATE_NAMES, WAITING, stored_datetime
from shardproxy.store import numbering, shapes
from shardproxy.store.errors import NOT_FOUND
from shardproxy.store.numbering import Counted
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
from shardproxy.store.schema import trial_params, trials
from shardproxy.store.witness import Witness

FINISHED_NAMES = frozenset(STATE_NAMES[s] for s in FINISHED_STATES)
UNFINISHED_NAMES = (STATE_NAMES[RUNNING], STATE_NAMES[WAITING])
# As SQL literals: a bound Enum value would take SQLAlchemy's type conversion.
_UNFINISHED_LITERALS: list[ColumnElement[Any]] = [
    literal_column(f"'{name}'") for name in UNFINISHED_NAMES
]
# Bound on the guarded UPDATE's shapes (each is compiled and kept): a batch
# finishing more trials locks them first.
GUARD_MAX_FINISHING = 64
# The same for the guarded param INSERT (shapes of a power of two rows up to it).
GUARD_MAX_PARAMS = 64
# A guarded INSERT's unused places: trial id -1 matches no trial.
_NO_PARAM = {"trial_id": -1, "param_name": "", "param_value": 0.0, "distribution_json": ""}

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


class GuardMissed(Exception):
    """An optimistic batch found an assumption wrong: a trial it writes to finished
    or gone, or a study's remembered trial count stale.

    Its transaction holds partial writes and must be rolled back; the batch is
    then run again with `optimistic=False` (and without remembered counts).
    """


class Batch:
    """Applies `operations` inside the caller's transaction on `conn`."""

    def __init__(
        self,
        conn: Connection,
        operations: list[Operation],
        distribution_of: DistributionLookup,
        *,
        optimistic: bool = False,
        counted: Mapping[int, Counted] | None = None,
        certify_numbering: bool = False,
        guarded_alone: bool = False,
    ) -> None:
        """`counted`: what the store remembers of the studies it adds trials to
        (see `numbering`); with none, their trials are counted in full.
        `certify_numbering`: on Galera, numbering also makes the write that
        certification orders across nodes (see `cluster`).
        `guarded_alone`: `conn` is in autocommit, where a lock ends with its
        statement: only the guarded param INSERT, one statement, may write, and
        GuardMissed is raised before anything else would."""
        self.conn = conn
        self.operations = operations
        self._optimistic = optimistic or guarded_alone
        self._guarded_alone = guarded_alone
        # What stood in for the trial lock (set by `run`): "states", a guarded
        # UPDATE; "params", a guarded INSERT; "" for none.
        self.guarded = ""
        # The guarded param INSERT has gone to the server: in autocommit, an error
        # from here on may come after it was applied.
        self.write_sent = False
        self.results: list[Any] = [None] * len(operations)
        # Distributions this batch establishes, for the store's cache once committed.
        self.new_distributions: dict[tuple[int, str], str] = {}
        self.created_ids: list[int] = []
        # trial id -> (study_id, number) of each created trial, for the witness.
        self._created_as: dict[int, tuple[int, int]] = {}
        # What to remember of the studies the batch added trials to, once committed.
        self.counted: dict[int, Counted] = {}
        self._counted = dict(counted or {})
        self._certify_numbering = certify_numbering
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
        if self._guarded_alone and not (
            len(self.operations) == 1 and writes_alone(self.operations[0])
            and self.conn.dialect.name != "sqlite"
        ):
            raise GuardMissed("not a lone param write")
        self._create_trials()
        written = sorted(
            {op.trial_id for op in self.operations if not isinstance(op, CreateTrial)}
        )
        finishing = self._guard_plan(len(written)) if self._optimistic else None
        if finishing is not None:
            self._guard_trials(written, finishing)
            self.guarded = "states"
        elif self._optimistic and self._params_guardable(written):
            self._assume_unfinished(written)
            self.guarded = "params"
        else:
            self._lock_trials(written)
        for index, op in enumerate(self.operations):
            if isinstance(op, CreateTrial):
                continue
            try:
                self.results[index] = self._apply(op)
            except (KeyError, ValueError, UpdateFinishedTrialError) as exc:
                self.results[index] = exc
        if self.guarded == "params":
            self._write_guarded_params()
            return self.results  # params were all it wrote to existing trials
        self._rows.write(self.conn)
        if finishing is not None:
            return self.results  # the guard wrote the states
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
        first = self._created_as.get(self.created_ids[0]) if self.created_ids else None
        return Witness(list(self.created_ids), changes, first)

    # -- new trials -------------------------------------------------------------------

    def _create_trials(self) -> None:
        creates = [(i, op) for i, op in enumerate(self.operations) if isinstance(op, CreateTrial)]
        if not creates:
            return
        existing = numbering.lock_studies(
            self.conn, sorted({op.study_id for _, op in creates}), self._certify_numbering
        )
        counted = {s: c for s, c in self._counted.items() if s in existing}
        # Trials from a template carry their own state and dates, row by row; the
        # numbering INSERT writes plain RUNNING trials only.
        numbered_by_insert = (
            self.conn.dialect.insert_returning
            and len(creates) <= numbering.NUMBERED_INSERT_MAX_ROWS
            and all(op.template is None for _, op in creates)
        )
        # (operation index, operation, its place among the batch's new trials of its study)
        accepted: list[tuple[int, CreateTrial, int]] = []
        places: dict[int, int] = {}
        for index, op in creates:
            if op.study_id not in existing:
                self.results[index] = KeyError(NOT_FOUND)
                continue
            try:
                self._check_template_params(op)
            except ValueError as exc:
                self.results[index] = exc
                continue
            place = places.get(op.study_id, 0)
            places[op.study_id] = place + 1
            accepted.append((index, op, place))
        # Studies without new trials keep what was known of them.
        self.counted = {s: c for s, c in counted.items() if s not in places}
        if not accepted:
            return
        try:
            if numbered_by_insert:
                new_ids = numbering.insert_numbered(
                    self.conn, [(op.study_id, place) for _, op, place in accepted], counted,
                    self._now,
                )
            else:
                counts = numbering.trials_so_far(self.conn, places, counted)
                new_ids = numbering.insert_trials(self.conn, [
                    self._trial_row(op, counts[op.study_id] + place) for _, op, place in accepted
                ], counted)
        except numbering.StaleCount as stale:
            raise GuardMissed(str(stale)) from stale
        first_numbers: dict[int, int] = {}
        for study_id, number in new_ids:
            first_numbers[study_id] = min(number, first_numbers.get(study_id, number))
        for index, op, place in accepted:
            number = first_numbers[op.study_id] + place
            trial_id = new_ids[(op.study_id, number)]
            self.results[index] = trial_id
            self.created_ids.append(trial_id)
            self._created_as.setdefault(trial_id, (op.study_id, number))
            if op.template is not None:
                self._template_children(trial_id, op)
        self.counted.update(numbering.counted_after(new_ids))

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

    def _lock_trials(self, ids: list[int]) -> None:
        for part in shapes.chunks(ids):
            locked = _LOCK_TRIALS.execute(self.conn, {"ids": list(part)})
            for trial_id, study_id, number, state in locked:
                self._trials[trial_id] = _Trial(study_id, number, state)

    def _guard_plan(self, written: int) -> dict[int, str] | None:
        """The state each finished trial gets, where a guarded UPDATE can take the lock's place.

        That needs every operation's outcome to follow from "all these trials exist
        and are unfinished" alone: no transition that depends on the state found
        (RUNNING only from WAITING), no write after a trial's finishing one (its
        error names the trial's number), and the study of every trial that gets a
        param (for the distribution check). Not on SQLite: there a statement costs
        no round trip, and a deleted study's trial ids come back, so a remembered
        study may be stale.
        """
        if self.conn.dialect.name == "sqlite":
            return None
        finishing: dict[int, str] = {}
        for op in self.operations:
            if isinstance(op, CreateTrial):
                continue
            if op.trial_id in finishing:
                return None
            if isinstance(op, SetStateValues):
                if op.state not in FINISHED_STATES:
                    return None
                finishing[op.trial_id] = STATE_NAMES[op.state]
            elif isinstance(op, SetParam) and op.study_id is None:
                return None
        if not finishing:
            return None  # without a state to set, the lock costs the same one statement
        if len(finishing) > GUARD_MAX_FINISHING or written > shapes.CHUNK:
            return None
        return finishing

    def _guard_trials(self, ids: list[int], finishing: dict[int, str]) -> None:
        """Sets the finishing states and locks the batch's other trials, all in one UPDATE.

        Raises GuardMissed unless it found every trial of the batch unfinished.
        """
        params: dict[str, Any] = {"ids": ids, "now": self._now}
        # A repeated arm of the CASE changes nothing: one shape per power of two.
        arms = shapes.padded(sorted(finishing.items()))
        for i, (trial_id, state) in enumerate(arms):
            params[f"finish_id_{i}"] = trial_id
            params[f"finish_state_{i}"] = state
        found = _guarded_update(len(arms)).execute(self.conn, params).rowcount
        if found != len(ids):
            raise GuardMissed(f"{len(ids) - found} of {len(ids)} trials finished or gone")
        self._assume_unfinished(ids)

    def _params_guardable(self, written: list[int]) -> bool:
        """Whether a guarded INSERT can take the lock's place: the batch's only
        writes to existing trials set params of trials whose study is known (for the
        distribution check), and not on SQLite (see `_guard_plan`)."""
        params = sum(isinstance(op, SetParam) for op in self.operations)
        if not written or params > GUARD_MAX_PARAMS or self.conn.dialect.name == "sqlite":
            return False
        return all(
            isinstance(op, CreateTrial) or (isinstance(op, SetParam) and op.study_id is not None)
            for op in self.operations
        )

    def _assume_unfinished(self, ids: list[int]) -> None:
        """Takes the trials as unfinished, as a guard found them (or will check),
        each in the study its params name (-1 for a trial without one)."""
        study_of = {op.trial_id: op.study_id for op in self.operations
                    if isinstance(op, SetParam) and op.study_id is not None}
        for trial_id in ids:
            # The state found is one of RUNNING/WAITING; which one no operation here
            # depends on. The number is needed only for errors, which cannot occur.
            self._trials[trial_id] = _Trial(study_of.get(trial_id, -1), -1, UNFINISHED_NAMES[0])

    def _write_guarded_params(self) -> None:
        """Inserts the params where their trials are unfinished, locking those trials.

        Raises GuardMissed unless every row found its trial unfinished (on
        PostgreSQL also when a param of that name existed: its row is not counted
        there), or when a param failed its check: which error it gets (or whether
        the trial's being finished comes first) depends on the trial's row.
        """
        if any(isinstance(result, BaseException) and isinstance(op, SetParam)
               for op, result in zip(self.operations, self.results, strict=True)):
            raise GuardMissed("a param failed its check")
        rows = list(self._rows.params.values())
        size = shapes.statement_size(len(rows))
        params: dict[str, Any] = {}
        for i in range(size):
            # The places past the rows name no trial, and so insert nothing.
            row = rows[i] if i < len(rows) else _NO_PARAM
            params[f"trial_id_{i}"] = row["trial_id"]
            params[f"name_{i}"] = row["param_name"]
            params[f"value_{i}"] = row["param_value"]
            params[f"distribution_{i}"] = row["distribution_json"]
        statement = _guarded_param_insert(self.conn.dialect.name, size)
        self.write_sent = True
        found = statement.execute(self.conn, params).rowcount
        if found != len(rows):
            raise GuardMissed(
                f"{len(rows) - found} of {len(rows)} params found no unfinished trial")

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


def writes_alone(operation: Operation) -> bool:
    """Whether a lone write can be one guarded statement in autocommit (`guarded_alone`):
    a param whose trial's study is known, for the distribution check."""
    return isinstance(operation, SetParam) and operation.study_id is not None


def first_distribution(conn: Connection, study_id: int, name: str) -> str | None:
    """The distribution of the study's earlier param of that name, as RDBStorage reads it."""
    row = _FIRST_DISTRIBUTION.execute(conn, {"sid": study_id, "name": name}).first()
    return None if row is None else str(row[0])


# The batch's statements, built once (building one costs more than running it).
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


@functools.cache  # one shape per power of two up to GUARD_MAX_FINISHING
def _guarded_update(finishing: int) -> Prepared:
    """UPDATE that finishes `finishing` trials and touches the others of the batch.

    It matches only unfinished trials, so its row count says whether all were
    (MySQL drivers count matched rows, SQLAlchemy asks for that; PostgreSQL and
    SQLite count every row the WHERE selects). Each matched row is locked until
    COMMIT, like the lock it stands in for.
    """
    trial_id = trials.c.trial_id
    finished = [trial_id == bindparam(f"finish_id_{i}") for i in range(finishing)]
    state = case(
        *((match, bindparam(f"finish_state_{i}")) for i, match in enumerate(finished)),
        else_=trials.c.state,
    )
    complete = case(
        (or_(*finished), bindparam("now", type_=DateTime)), else_=trials.c.datetime_complete
    )
    return Prepared(
        update(trials)
        .where(trial_id.in_(bindparam("ids", expanding=True)),
               trials.c.state.in_(_UNFINISHED_LITERALS))
        .values(state=state, datetime_complete=complete),
        expanding=["ids"],
    )


@functools.cache  # at most one shape per power of two up to GUARD_MAX_PARAMS, per dialect
def _guarded_param_insert(dialect: str, size: int) -> Prepared:
    """INSERT of `size` params that takes its rows from a locking SELECT of their
    trials where unfinished: each matched trial is locked until COMMIT, like the
    lock it stands in for, and the row count says how many rows found theirs.

    A param of the same name that exists is left as it is, as RDBStorage leaves it
    (MySQL drivers count such a row as found, SQLAlchemy asks for that; PostgreSQL
    counts only the rows inserted).
    """
    new = union_all(*(
        select(bindparam(f"trial_id_{i}", type_=Integer).label("trial_id"),
               bindparam(f"name_{i}", type_=String).label("param_name"),
               bindparam(f"value_{i}", type_=Float).label("param_value"),
               bindparam(f"distribution_{i}", type_=String).label("distribution_json"))
        for i in range(size)
    )).subquery("new")
    found = (
        select(new.c.trial_id, new.c.param_name, new.c.param_value, new.c.distribution_json)
        .select_from(new.join(trials, and_(trials.c.trial_id == new.c.trial_id,
                                           trials.c.state.in_(_UNFINISHED_LITERALS))))
        # PostgreSQL locks no row of a UNION: the trials only. MariaDB knows no OF.
        .with_for_update(of=trials if dialect == "postgresql" else None)
    )
    columns = ["trial_id", "param_name", "param_value", "distribution_json"]
    if dialect == "mysql":
        mysql_insert = mysql.insert(trial_params).from_select(columns, found)
        param_id = trial_params.c.param_id
        return Prepared(mysql_insert.on_duplicate_key_update({param_id.name: param_id}))
    return Prepared(postgresql.insert(trial_params).from_select(columns, found)
                    .on_conflict_do_nothing(index_elements=["trial_id", "param_name"]))
