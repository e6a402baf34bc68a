"""`Store`: the storage operations the 19 RPCs need, on Optuna's own schema.

Values are wire-level (direction and state ints, JSON text, `TrialRow`), and the
semantics are RDBStorage's. Reads run on an autocommit pool, one short statement
each. Trial writes go through the group committer and share transactions; study
writes are rare and run in transactions of their own. Transient errors are
retried up to a deadline, and past it while a COMMIT's outcome is unknown.
Engines, pools and the committing thread are created in the constructor, so a
server builds its Store after forking its workers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TypeVar

import sqlalchemy.exc
from optuna.exceptions import DuplicatedStudyError
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.engine import Connection

from shardproxy.rows import DIRECTION_NAMES, StudyRow, TrialRow
from shardproxy.store import cluster, heartbeats, loads, reads, request_keys, retry, sql
from shardproxy.store.batch import Batch, GuardMissed, first_distribution, writes_alone
from shardproxy.store.bootstrap import prepare_schema
from shardproxy.store.committer import Applied, GroupCommitter, OutcomeUnknown
from shardproxy.store.database import cursor_scope, make_read_engine, make_write_engine
from shardproxy.store.errors import NOT_FOUND
from shardproxy.store.extended import Keyed, apply_extended, is_extended
from shardproxy.store.numbering import Numbered, TrialCounts
from shardproxy.store.operations import (
    CreateTrial,
    Operation,
    SetIntermediate,
    SetParam,
    SetStateValues,
    SetTrialAttr,
    check_json,
)
from shardproxy.store.retry import is_transient, with_retries, with_retries_until_settled
from shardproxy.store.schema import (
    STUDY_CHILD_TABLES,
    TRIAL_CHILD_TABLES,
    studies,
    study_directions,
    study_system_attributes,
    study_user_attributes,
    trials,
)
from shardproxy.store.settled import SettledRanges
from shardproxy.store.witness import Witness, witness_present
from shardproxy.urls import masked_url as masked

T = TypeVar("T")
_logger = logging.getLogger(__name__)


class Store:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        max_batch: int = 256,
        retry_deadline: float = 60.0,
        commit_window: float = 0.0,
    ) -> None:
        self._retry_deadline = retry_deadline
        self._closed = False
        self._writer = make_write_engine(url, pool_size)
        self._reader = make_read_engine(url, pool_size)
        try:
            prepare_schema(self._writer, masked(url))
            # A multi-primary cluster needs a write that certification orders in every
            # numbering transaction, and causal reads; a single server needs neither.
            self.topology = with_retries(
                lambda: cluster.detect_engine(self._writer), retry_deadline, "detect cluster"
            )
        except BaseException:
            self._writer.dispose()
            self._reader.dispose()
            raise
        cluster.log_topology(self.topology, masked(url), logging.DEBUG)  # serve says it once
        if self.topology.galera:
            cluster.wait_for_causality(self._reader)
        self._certify_numbering = self.topology.certifies_numbering
        # (study_id, param name) -> the JSON of the study's first distribution of that
        # name. It never changes while the study exists, so it is read only once. Not
        # on SQLite, which hands out a deleted study's id again (and reads cost no
        # round trip there).
        self._distributions: dict[tuple[int, str], str] = {}
        self._cache_distributions = self._writer.dialect.name != "sqlite"
        self._distributions_lock = threading.Lock()
        # Each study's trial count as this store last numbered it, so that numbering
        # reads only the trials added since (`numbering`). Not on SQLite, where
        # counting the whole study costs no round trip: it keeps the plain count.
        self._counts = TrialCounts()
        self._remember_counts = self._writer.dialect.name != "sqlite"
        # About how many trials each study has, from the trials read: on PostgreSQL a
        # read of the newer trials picks the cheaper index by it (see `newer`). A hint
        # only, so written without a lock.
        self._study_sizes: dict[int, int] = {}
        # PostgreSQL: id ranges where no trial of a study can appear any more, so that
        # a sync of a study others do not write to skips their trials (`settled`).
        self._settled = SettledRanges()
        self._request_keys_ready = False
        self._request_keys_pruned = -request_keys.PRUNE_EVERY
        self._committer = GroupCommitter(
            self._writer,
            self._apply_batch,
            self._batch_committed,
            max_batch=max_batch,
            retry_deadline=retry_deadline,
            window=commit_window,
            apply_alone=None if self._writer.dialect.name == "sqlite" else self._apply_alone,
        )

    def close(self) -> None:
        """Commits the writes already submitted, then closes the pools."""
        self._closed = True
        self._committer.close()
        self._writer.dispose()
        self._reader.dispose()

    def ping(self) -> None:
        """One `SELECT 1` on the read pool, not retried: raises if the database is down."""
        with self._reader.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()

    # -- studies ---------------------------------------------------------------------

    def create_new_study(self, directions: Sequence[int], study_name: str) -> int:
        names = [DIRECTION_NAMES[d] for d in directions]
        attempted: list[int] = []

        def ours(conn: Connection) -> int | None:
            """The study of that name, if its id is one an attempt of this call was given."""
            existing = reads.study_id_from_name(conn, study_name)
            return existing if existing in attempted else None

        def create(conn: Connection) -> int:
            if attempted:  # a COMMIT whose reply was lost may have gone through
                existing = ours(conn)
                if existing is not None:
                    return existing
            result = conn.execute(insert(studies).values(study_name=study_name))
            assert result.inserted_primary_key is not None
            study_id = int(result.inserted_primary_key[0])
            # SQLite always says whether a COMMIT happened, and may hand a rolled-back
            # id out again (to another caller's study): its ids prove nothing.
            if conn.dialect.name != "sqlite":
                attempted.append(study_id)
            sql.insert_rows(conn, study_directions, [
                {"study_id": study_id, "objective": i, "direction": name}
                for i, name in enumerate(names)
            ])
            return study_id

        try:
            return self._transaction(create, "create study")
        except sqlalchemy.exc.IntegrityError as exc:
            # The name may be taken by an earlier attempt of this call: its COMMIT,
            # whose reply was lost, reached the server only after this attempt
            # looked for it, and this attempt's INSERT waited on the name's unique
            # key until that transaction committed. MySQL, MariaDB and PostgreSQL do
            # not hand a rolled-back id out again (MySQL before 8.0 could, after a
            # restart): a study with an id this call was given is its study.
            existing = self._read(ours) if attempted else None
            if existing is not None:
                return existing
            raise DuplicatedStudyError from exc

    def delete_study(self, study_id: int) -> None:
        attempted = False

        def remove(conn: Connection) -> None:
            nonlocal attempted
            if not _lock_study(conn, study_id):
                if attempted:  # the earlier attempt's COMMIT went through
                    return
                raise KeyError(NOT_FOUND)
            of_study = select(trials.c.trial_id).where(trials.c.study_id == study_id)
            # A trial write locks its trial's row, not the study's: locking the
            # trials keeps one from adding a child row between the deletes below
            # (which the DELETE of the trials would then fail on).
            conn.execute(of_study.with_for_update())
            for table in TRIAL_CHILD_TABLES:
                conn.execute(delete(table).where(table.c.trial_id.in_(of_study)))
            conn.execute(delete(trials).where(trials.c.study_id == study_id))
            for table in STUDY_CHILD_TABLES:
                conn.execute(delete(table).where(table.c.study_id == study_id))
            conn.execute(delete(studies).where(studies.c.study_id == study_id))
            attempted = True

        self._transaction(remove, "delete study")
        self._counts.forget(study_id)
        self._study_sizes.pop(study_id, None)
        self._settled.forget(study_id)
        with self._distributions_lock:
            self._distributions = {
                k: v for k, v in self._distributions.items() if k[0] != study_id
            }

    def set_study_user_attr(self, study_id: int, key: str, value_json: str) -> None:
        self._set_study_attr(study_user_attributes, study_id, key, value_json)

    def set_study_system_attr(self, study_id: int, key: str, value_json: str) -> None:
        self._set_study_attr(study_system_attributes, study_id, key, value_json)

    def _set_study_attr(self, table: Table, study_id: int, key: str, value_json: str) -> None:
        check_json(value_json)

        def write(conn: Connection) -> None:
            if not _lock_study(conn, study_id, shared=True):
                raise KeyError(NOT_FOUND)
            row = {"study_id": study_id, "key": key, "value_json": value_json}
            sql.upsert(conn, table, [row], ("study_id", "key"))

        self._transaction(write, "set study attribute")

    def get_study_id_from_name(self, name: str) -> int:
        study_id = self._read(lambda conn: reads.study_id_from_name(conn, name))
        if study_id is None:
            raise KeyError(NOT_FOUND)
        return study_id

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
        self,
        trial_id: int,
        name: str,
        value_internal: float,
        distribution_json: str,
        *,
        study_id: int | None = None,
    ) -> None:
        """`study_id`: the trial's study, if the caller knows it (it saves a lock)."""
        self._committer.submit(
            SetParam(trial_id, name, value_internal, distribution_json, study_id)
        )

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

    # -- what shardproxy.client adds (see `extended`) ---------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        # The committer carries any operation its apply_batch takes (`extended`).
        self._committer.submit(heartbeats.RecordHeartbeat(trial_id))  # type: ignore[arg-type]

    def stale_trial_ids(
        self, study_id: int, grace_period: float, among: Sequence[int] | None = None
    ) -> list[int]:
        """See `heartbeats.stale_trial_ids`."""
        return self._read(
            lambda conn: heartbeats.stale_trial_ids(conn, study_id, grace_period, among))

    def create_new_trial_once(
        self, study_id: int, template: TrialRow | None, key: str, repeated: bool
    ) -> int:
        self._prepare_request_keys()
        keyed = Keyed(CreateTrial(study_id, template), key, repeated)
        return int(self._committer.submit(keyed))  # type: ignore[arg-type]

    def set_trial_state_values_once(
        self, trial_id: int, state: int, values: Sequence[float] | None, key: str, repeated: bool
    ) -> bool:
        self._prepare_request_keys()
        operation = SetStateValues(trial_id, state, None if values is None else list(values))
        return bool(self._committer.submit(Keyed(operation, key, repeated)))  # type: ignore[arg-type]

    def _prepare_request_keys(self) -> None:
        if not self._request_keys_ready:  # once per store; racing threads do it twice
            with_retries(lambda: request_keys.prepare(self._writer), self._retry_deadline,
                         "prepare request keys")
            self._request_keys_ready = True
        now = time.monotonic()
        if now >= self._request_keys_pruned + request_keys.PRUNE_EVERY:
            self._request_keys_pruned = now
            threading.Thread(target=self._prune_request_keys, name="prune-keys",
                             daemon=True).start()

    def _prune_request_keys(self) -> None:
        try:
            request_keys.prune(self._writer)
        except sqlalchemy.exc.DBAPIError as exc:  # the next prune will do
            _logger.warning("could not delete old request keys: %s", exc)

    # -- trial reads -----------------------------------------------------------------

    def get_trial_id_from_study_id_trial_number(
        self, study_id: int, number: int, guess: int | None = None
    ) -> int:
        """See `reads.trial_id_from_number`."""
        return self._read(lambda conn: reads.trial_id_from_number(conn, study_id, number, guess))

    def get_trial(self, trial_id: int) -> TrialRow:
        rows = self.get_trials([trial_id])
        if not rows:
            raise KeyError(NOT_FOUND)
        return rows[0]

    def get_trials(self, trial_ids: Sequence[int]) -> list[TrialRow]:
        """The trials with these ids that exist (of any studies), by id."""
        return self._read(lambda conn: loads.load_trials_by_id(conn, trial_ids))

    def get_study_id_of_trial(self, trial_id: int) -> int:
        return self._read(lambda conn: reads.study_id_of_trial(conn, trial_id))

    def load_trials(
        self, study_id: int, *, id_greater_than: int, ids: Collection[int] = ()
    ) -> list[TrialRow]:
        """Trials with id > `id_greater_than` or in `ids`, child rows included, by id."""
        size = self._study_sizes.get(study_id, 0)
        # None of the study's trials has an id in (id_greater_than, search_from].
        search_from = self._settled.search_from(study_id, id_greater_than)
        try:
            rows, mark = self._read(
                lambda conn: loads.load_trials(conn, study_id, search_from, ids, size)
            )
        except KeyError:
            self._settled.forget(study_id)
            raise
        if mark is not None:
            self._settled.learn(study_id, search_from, [row.trial_id for row in rows], mark)
        if id_greater_than < 0 and self._remember_counts:  # the whole study
            numbered = Numbered()
            for row in rows:
                numbered.see(row)
            self._counts.learn(study_id, numbered)
        if rows:  # numbers count the trials before: the last is about the study's size
            self._study_sizes[study_id] = max(size, rows[-1].number + 1)
        return rows

    def stream_study(self, study_id: int) -> Iterator[TrialRow]:
        """Every trial of the study, by id, read as the caller takes them (a
        cache's first read): the driver and the caller hold a fetch's rows at a
        time, where `load_trials` holds every trial of the study twice over (as
        result rows, then as trial rows) at the peak of the read. KeyError once
        the rows have run out, when the study does not exist.

        One statement and one snapshot, as `load_trials`. A transient error
        before the first trial came reads the study with `load_trials` instead,
        with its retries. One after it reads on with `load_trials` as well, the
        trials after the last one taken, and learns nothing of the study's counts:
        within a study ids grow in commit order, so what the stream had still to
        give, and whatever committed since, comes after that trial.
        """
        size = 0  # the last trial's number + 1
        ids = array("q")  # of the trials taken
        numbered = Numbered()
        try:
            with (
                self._reader.connect() as conn,
                cursor_scope(conn),
                contextlib.closing(loads.StudyStream(conn, study_id)) as stream,
            ):
                for row in stream.rows:
                    ids.append(row.trial_id)
                    numbered.see(row)
                    size = row.number + 1
                    yield row
        except sqlalchemy.exc.DBAPIError as exc:
            if not is_transient(exc):
                raise
            if retry.transient_observer is not None:
                retry.transient_observer(True)
            taken = ids[-1] if ids else -1
            _logger.warning("first read of study %d: transient database error after "
                            "trial %d, reading on: %s", study_id, taken, exc.orig)
            yield from self.load_trials(study_id, id_greater_than=taken)
            return
        if not stream.found:
            self._settled.forget(study_id)
            raise KeyError(NOT_FOUND)
        if stream.mark is not None:
            self._settled.learn(study_id, -1, ids, stream.mark)
        if self._remember_counts:
            self._counts.learn(study_id, numbered)
        if size:
            self._study_sizes[study_id] = max(self._study_sizes.get(study_id, 0), size)

    # -- plumbing --------------------------------------------------------------------

    def _read(self, query: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with self._reader.connect() as conn:
                return query(conn)

        return with_retries(attempt, self._retry_deadline, "read")

    def _transaction(self, body: Callable[[Connection], T], what: str) -> T:
        """`body` in a transaction of its own, retried while errors are transient.

        A COMMIT whose reply was lost may have been applied. Each body finds out on
        its next attempt (it finds its own write, or repeats with the same outcome),
        so the attempts go on past the retry deadline until the database answers:
        failing then would tell the client nothing was written.
        """
        unsettled = False  # an attempt's COMMIT failed with its outcome unknown

        def attempt() -> T:
            nonlocal unsettled
            with self._writer.connect() as conn:
                transaction = conn.begin()
                result = body(conn)  # an error: rolled back as the connection returns
                try:
                    transaction.commit()
                except sqlalchemy.exc.DBAPIError as exc:
                    # SQLite reports a COMMIT that did not happen.
                    if is_transient(exc) and conn.dialect.name != "sqlite":
                        unsettled = True
                    raise
            return result

        return with_retries_until_settled(
            attempt, self._retry_deadline, lambda: unsettled and not self._closed, what, what
        )

    def _apply_batch(
        self, conn: Connection, operations: list[Operation], optimistic: bool
    ) -> Applied:
        if any(is_extended(op) for op in operations):
            return apply_extended(
                conn, operations, lambda c, plain: self._apply_plain(c, plain, optimistic)
            )
        return self._apply_plain(conn, operations, optimistic)

    def _apply_plain(
        self, conn: Connection, operations: list[Operation], optimistic: bool
    ) -> Applied:
        # Taken out for the batch and given back only once it committed: a batch that
        # rolls back, or runs again the locking way, counts its studies in full.
        counted = (
            self._counts.take({op.study_id for op in operations if isinstance(op, CreateTrial)})
            if optimistic and self._remember_counts
            else {}
        )
        batch = Batch(
            conn, operations, self._distribution_of, optimistic=optimistic, counted=counted,
            certify_numbering=self._certify_numbering,
        )
        results = batch.run()
        return Applied(results, batch.witness(), lambda: self._committed(batch))

    def _apply_alone(self, operation: Operation) -> Applied | None:
        """A lone param write as one statement on an autocommit connection (a reader's):
        its guarded INSERT checks the trial, writes and commits at once, which saves
        the COMMIT of a transaction. None, having written nothing, where that cannot
        be done or the guard missed: the committer then runs it as a batch.
        OutcomeUnknown where the INSERT failed after it was sent."""
        if not writes_alone(operation):
            return None
        with self._reader.connect() as conn:
            batch = Batch(conn, [operation], self._distribution_of, optimistic=True,
                          guarded_alone=True)
            try:
                results = batch.run()
            except GuardMissed:
                return None
            except sqlalchemy.exc.DBAPIError as exc:
                if batch.write_sent and is_transient(exc):
                    raise OutcomeUnknown(exc) from exc
                raise
        return Applied(results, batch.witness(), lambda: self._committed(batch))

    def _committed(self, batch: Batch) -> None:
        """What a batch wrote now exists: what it established is remembered."""
        if self._remember_counts:
            self._counts.remember(batch.counted)
        if self._cache_distributions:
            with self._distributions_lock:
                self._distributions.update(batch.new_distributions)

    def _batch_committed(self, witness: Witness) -> bool:
        return self._read(lambda conn: witness_present(conn, witness))

    def _distribution_of(self, conn: Connection, study_id: int, name: str) -> str | None:
        known = self._distributions.get((study_id, name))
        if known is not None:
            return known
        found = first_distribution(conn, study_id, name)
        if found is not None and self._cache_distributions:
            with self._distributions_lock:
                self._distributions[(study_id, name)] = found
        return found


def _lock_study(conn: Connection, study_id: int, shared: bool = False) -> bool:
    """Locks the study's row for this transaction; False if there is none."""
    query = (
        select(studies.c.study_id)
        .where(studies.c.study_id == study_id)
        .with_for_update(read=shared)
    )
    return conn.execute(query).first() is not None

