"""The store: the only code that speaks SQL, on Optuna's own schema.

`Store` offers the storage operations the 19 RPCs need, with RDBStorage's
semantics, on wire-level values (direction and state ints, JSON text, `TrialRow`).
Reads run on an autocommit pool, one short statement each. Trial writes go
through the group committer and share transactions; study writes are rare and
run in transactions of their own. Transient errors are retried up to a deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import sqlalchemy.exc
from optuna.exceptions import DuplicatedStudyError
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from shardproxy.rows import DIRECTION_NAMES, StudyRow, TrialRow
from shardproxy.store import reads, sql
from shardproxy.store.batch import Batch, first_distribution
from shardproxy.store.committer import GroupCommitter
from shardproxy.store.database import SchemaError, make_engine, prepare_schema
from shardproxy.store.operations import (
    CreateTrial,
    Operation,
    SetIntermediate,
    SetParam,
    SetStateValues,
    SetTrialAttr,
    check_json,
)
from shardproxy.store.retry import with_retries
from shardproxy.store.schema import (
    studies,
    study_directions,
    study_system_attributes,
    study_user_attributes,
    trial_intermediate_values,
    trial_params,
    trial_system_attributes,
    trial_user_attributes,
    trial_values,
    trials,
)

__all__ = ["SchemaError", "Store", "prepare_schema"]

T = TypeVar("T")


class Store:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        max_batch: int = 256,
        retry_deadline: float = 60.0,
        prepare: bool = True,
    ) -> None:
        if prepare:
            prepare_schema(url)
        self._retry_deadline = retry_deadline
        self._writer = make_engine(url, pool_size)
        # Reads are single statements: autocommit, and no ROLLBACK on every return
        # to the pool (a statement the database would count for nothing).
        self._reader = make_engine(url, pool_size).execution_options(
            isolation_level="AUTOCOMMIT"
        )
        self._reader.pool._reset_on_return = None  # type: ignore[attr-defined]
        self._distributions: dict[tuple[int, str], str] = {}
        self._distributions_lock = threading.Lock()
        self._committer = GroupCommitter(self._run_batch, max_batch)

    def close(self) -> None:
        self._committer.close()
        self._writer.dispose()
        self._reader.engine.dispose()

    # -- studies ---------------------------------------------------------------------

    def create_new_study(self, directions: Sequence[int], study_name: str) -> int:
        def create(conn: Connection) -> int:
            result = conn.execute(insert(studies).values(study_name=study_name))
            study_id = int(result.inserted_primary_key[0])
            sql.insert_rows(conn, study_directions, [
                {"study_id": study_id, "objective": i, "direction": DIRECTION_NAMES[d]}
                for i, d in enumerate(directions)
            ])
            return study_id

        try:
            return self._transaction(create, "create study")
        except sqlalchemy.exc.IntegrityError as exc:
            raise DuplicatedStudyError(f"study {study_name!r} already exists") from exc

    def delete_study(self, study_id: int) -> None:
        def remove(conn: Connection) -> None:
            reads.require_study(conn, study_id)
            of_study = select(trials.c.trial_id).where(trials.c.study_id == study_id)
            for table in (trial_params, trial_values, trial_intermediate_values,
                          trial_user_attributes, trial_system_attributes, _heartbeats()):
                conn.execute(delete(table).where(table.c.trial_id.in_(of_study)))
            conn.execute(delete(trials).where(trials.c.study_id == study_id))
            for table in (study_directions, study_user_attributes, study_system_attributes):
                conn.execute(delete(table).where(table.c.study_id == study_id))
            conn.execute(delete(studies).where(studies.c.study_id == study_id))

        self._transaction(remove, "delete study")
        with self._distributions_lock:
            self._distributions = {
                k: v for k, v in self._distributions.items() if k[0] != study_id
            }

    def set_study_user_attr(self, study_id: int, key: str, value_json: str) -> None:
        self._set_study_attr(study_user_attributes, study_id, key, value_json)

    def set_study_system_attr(self, study_id: int, key: str, value_json: str) -> None:
        self._set_study_attr(study_system_attributes, study_id, key, value_json)

    def _set_study_attr(self, table: Any, study_id: int, key: str, value_json: str) -> None:
        check_json(value_json)

        def write(conn: Connection) -> None:
            reads.require_study(conn, study_id)
            sql.upsert(conn, table, [{"study_id": study_id, "key": key,
                                      "value_json": value_json}], ("study_id", "key"))

        self._transaction(write, "set study attribute")

    def get_study_id_from_name(self, name: str) -> int:
        return self._read(lambda conn: reads.study_id_from_name(conn, name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._read(lambda conn: reads.study_name_from_id(conn, study_id))

    def get_study_directions(self, study_id: int) -> list[int]:
        return self._read(lambda conn: reads.study_directions_of(conn, study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, str]:
        return self._read(lambda conn: reads.study_attrs(conn, study_id, system=False))

    def get_study_system_attrs(self, study_id: int) -> dict[str, str]:
        return self._read(lambda conn: reads.study_attrs(conn, study_id, system=True))

    def get_all_studies(self) -> list[StudyRow]:
        return self._read(reads.all_studies)

    # -- trial writes (group commit) ---------------------------------------------------

    def create_new_trial(self, study_id: int, template: TrialRow | None) -> int:
        return int(self._committer.submit(CreateTrial(study_id, template)))

    def set_trial_param(
        self, trial_id: int, name: str, value_internal: float, distribution_json: str
    ) -> None:
        self._committer.submit(SetParam(trial_id, name, value_internal, distribution_json))

    def set_trial_state_values(
        self, trial_id: int, state: int, values: Sequence[float] | None
    ) -> bool:
        operation = SetStateValues(trial_id, state, None if values is None else list(values))
        return bool(self._committer.submit(operation))

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self._committer.submit(SetIntermediate(trial_id, step, value))

    def set_trial_user_attr(self, trial_id: int, key: str, value_json: str) -> None:
        self._committer.submit(SetTrialAttr(trial_id, False, key, value_json))

    def set_trial_system_attr(self, trial_id: int, key: str, value_json: str) -> None:
        self._committer.submit(SetTrialAttr(trial_id, True, key, value_json))

    # -- trial reads -----------------------------------------------------------------

    def get_trial_id_from_study_id_trial_number(self, study_id: int, number: int) -> int:
        return self._read(lambda conn: reads.trial_id_from_number(conn, study_id, number))

    def get_trial(self, trial_id: int) -> TrialRow:
        return self._read(lambda conn: reads.load_trial(conn, trial_id))

    def get_study_id_of_trial(self, trial_id: int) -> int:
        return self._read(lambda conn: reads.study_id_of_trial(conn, trial_id))

    def load_trials(
        self, study_id: int, *, id_greater_than: int, ids: Collection[int] = ()
    ) -> list[TrialRow]:
        return self._read(
            lambda conn: reads.load_trials(conn, study_id, id_greater_than, ids)
        )

    # -- plumbing --------------------------------------------------------------------

    def _read(self, query: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._reader.connect() as conn:
                return query(conn)

        return with_retries(attempt, self._retry_deadline, "read")

    def _transaction(self, body: Callable[[Connection], T], what: str) -> T:
        def attempt() -> T:
            with self._writer.begin() as conn:
                return body(conn)

        return with_retries(attempt, self._retry_deadline, what)

    def _run_batch(self, operations: list[Operation]) -> list[Any]:
        batches: list[Batch] = []

        def body(conn: Connection) -> list[Any]:
            batch = Batch(conn, operations, self._distribution_of)
            batches.append(batch)
            return batch.run()

        results = self._transaction(body, f"batch of {len(operations)}")
        with self._distributions_lock:  # committed: the distributions now exist
            self._distributions.update(batches[-1].new_distributions)
        return results

    def _distribution_of(self, conn: Connection, study_id: int, name: str) -> str | None:
        known = self._distributions.get((study_id, name))
        if known is not None:
            return known
        found = first_distribution(conn, study_id, name)
        if found is not None:
            with self._distributions_lock:
                self._distributions[(study_id, name)] = found
        return found


def _heartbeats() -> Any:
    """trial_heartbeats, which only Optuna's heartbeat writes; reflected when needed."""
    from sqlalchemy import Column, DateTime, Integer, MetaData, Table

    return Table("trial_heartbeats", MetaData(), Column("trial_heartbeat_id", Integer),
                 Column("trial_id", Integer), Column("heartbeat", DateTime))
