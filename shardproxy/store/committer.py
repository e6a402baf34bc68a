"""Group commit: writes from many threads, committed together in shared transactions.

While one transaction runs, the writes that arrive queue up; the next transaction
takes all of them (up to `max_batch`). Each caller waits for the commit that
carries its write and gets its own result or exception. When writes arrived while
the last transaction ran (the store is busy), the next one waits a short window
for more to join; a lone writer never waits.

Failures:
- A transient error (deadlock, lock wait timeout, lost connection, a locked
  SQLite file) rolls the whole transaction back; it is run again from scratch on
  a fresh connection, with backoff, until the retry deadline. Nothing of a
  rolled-back attempt remains, so nothing is applied twice.
- A lost reply to COMMIT leaves the outcome unknown. Before running the batch
  again, the committer asks the database whether the batch's own rows are there
  (the trial ids it created, the states it set); if they are, it committed and
  its results are answered as they are.
- An outcome still unknown when the retry deadline passes (the database went away
  with the COMMIT's reply and has not answered since) is not answered with an
  error: the batch may have committed, and a client told UNAVAILABLE would take
  its write for not applied. The committer keeps asking (and, for a batch without
  a witness, whose writes repeat with the same outcome, keeps repeating it) until
  the database answers, or the store closes.
- A batch that fails for a reason that is not transient (a value the database
  refuses, say) is re-run one operation per transaction, so that the failure
  lands only on the operation that caused it.

A lone write that one statement can apply with its checks (a param, see
`Batch`) is first offered to `apply_alone`, which runs it in autocommit: the
statement is its own transaction, and no COMMIT follows. Such a statement
repeats with the same outcome, so a transient error retries it as any batch.
But an error after the statement was sent (`OutcomeUnknown`) is a COMMIT whose
reply was lost: the write may be in the database, so, as a batch without a
witness, it is repeated past the retry deadline until the database answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from sqlalchemy.engine import Connection, Engine

from shardproxy.store.batch import GuardMissed
from shardproxy.store.operations import Operation
from shardproxy.store.retry import is_transient, with_retries, with_retries_until_settled
from shardproxy.store.witness import Witness

_logger = logging.getLogger(__name__)


@dataclass
class Applied:
    """One attempt's outcome before COMMIT: per-operation results, and its witness."""

    results: list[Any]
    witness: Witness
    on_commit: Callable[[], None]


# apply_batch(conn, operations, optimistic): an optimistic apply may raise GuardMissed,
# and is then rolled back and applied again with optimistic=False.
ApplyBatch = Callable[[Connection, list[Operation], bool], Applied]
# Whether the rows a witness names are in the database (asked on a fresh connection).
CommitCheck = Callable[[Witness], bool]
# apply_alone(operation): the operation applied and committed by one autocommitted
# statement, or None where it cannot be, having written nothing. It raises
# OutcomeUnknown where the statement failed after it was sent.
ApplyAlone = Callable[[Operation], "Applied | None"]


class OutcomeUnknown(Exception):
    """An autocommitted statement failed after it was sent (`error`, transient): the
    server may have applied it and lost only the reply."""

    def __init__(self, error: sqlalchemy.exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


# The unsettled attempt of a lone statement whose outcome is unknown: nothing shows
# whether it was applied (no witness), and a repeat has the same outcome.
_REPEAT_UNTIL_ANSWERED = Applied([], Witness([], {}), lambda: None)

# Told (operations, seconds) after each group commit, committed or failed, retries
# included: the worker's metrics set it; None costs one comparison per commit.
commit_observer: Callable[[int, float], None] | None = None


class _Pending:
    """One caller's operation and the lock it waits on until it is answered."""

    __slots__ = ("operation", "result", "error", "_answered")

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.result: Any = None
        self.error: BaseException | None = None
        self._answered = threading.Lock()
        self._answered.acquire()

    def answer(self, result: Any) -> None:
        if isinstance(result, BaseException):
            self.error = result
        else:
            self.result = result
        self._answered.release()

    def wait(self) -> Any:
        self._answered.acquire()
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommitter:
    def __init__(
        self,
        engine: Engine,
        apply_batch: ApplyBatch,
        commit_check: CommitCheck,
        *,
        max_batch: int,
        retry_deadline: float,
        window: float = 0.0,
        apply_alone: ApplyAlone | None = None,
    ) -> None:
        self._engine = engine
        self._window = window
        self._apply_batch = apply_batch
        self._apply_alone = apply_alone
        self._commit_check = commit_check
        self._max_batch = max_batch
        self._retry_deadline = retry_deadline
        self._queue: deque[_Pending] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        # The attempt of the running batch whose COMMIT failed with its outcome unknown.
        self._unsettled: Applied | None = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation) -> Any:
        """Blocks until the operation's transaction committed; returns its result."""
        pending = _Pending(operation)
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._queue.append(pending)
            self._wakeup.notify()
        return pending.wait()

    def close(self) -> None:
        """Commits what is queued, then stops the committing thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._thread.join()
        self._drop_connection(invalidate=False)

    # -- the committing thread ------------------------------------------------------

    def _loop(self) -> None:
        busy = False  # writes arrived while the last transaction ran
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return
                if busy and self._window > 0:
                    self._gather(time.monotonic() + self._window)
                take = min(len(self._queue), self._max_batch)
                batch = [self._queue.popleft() for _ in range(take)]
            self._commit(batch)
            with self._wakeup:
                busy = bool(self._queue)

    def _gather(self, deadline: float) -> None:
        """Waits, holding `_wakeup`, until the deadline or a full batch or closing."""
        while len(self._queue) < self._max_batch and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.wait(remaining)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = self._run(batch)
        except Exception as exc:
            if len(batch) > 1 and not is_transient(exc):
                _logger.info("batch of %d failed (%s); isolating its writes", len(batch), exc)
                for pending in batch:
                    self._commit([pending])
                return
            # Transient past the deadline, or the write failing alone.
            results = [exc] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            pending.answer(result)

    def _run(self, batch: list[_Pending]) -> list[Any]:
        operations = [pending.operation for pending in batch]

        def say_retrying(exc: sqlalchemy.exc.DBAPIError) -> None:
            _logger.warning("batch of %d: retrying after %s", len(batch), exc.orig)

        observer = commit_observer
        started = time.monotonic() if observer is not None else 0.0
        self._unsettled = None
        try:
            return with_retries_until_settled(
                lambda: self._settle_or_attempt(operations), self._retry_deadline,
                lambda: self._unsettled is not None and not self._closed,
                f"batch of {len(batch)}", on_retry=say_retrying,
            )
        finally:
            self._unsettled = None
            if observer is not None:
                observer(len(operations), time.monotonic() - started)

    def _settle_or_attempt(self, operations: list[Operation]) -> list[Any]:
        """The outcome of an earlier attempt whose COMMIT failed, if it committed; else
        a new attempt."""
        unsettled = self._unsettled
        if unsettled is not None and not unsettled.witness.is_empty():
            if self._commit_check(unsettled.witness):  # transient errors: retried
                self._unsettled = None
                unsettled.on_commit()
                return unsettled.results
            self._unsettled = None  # it did not commit
        # A batch without a witness stays unsettled until a repeat commits.
        results = self._attempt(operations)
        self._unsettled = None
        return results

    def _attempt(self, operations: list[Operation]) -> list[Any]:
        if len(operations) == 1 and self._apply_alone is not None:
            try:
                alone = self._apply_alone(operations[0])
            except OutcomeUnknown as unknown:
                # Answering UNAVAILABLE once the deadline passes would tell the
                # client its write was not applied, when it may have been.
                self._unsettled = _REPEAT_UNTIL_ANSWERED
                raise unknown.error from None
            if alone is not None:
                alone.on_commit()
                return alone.results
        conn = self._connection()
        try:
            transaction = conn.begin()
            try:
                applied = self._apply_batch(conn, operations, True)
            except GuardMissed as missed:
                _logger.debug("batch of %d: %s; running it again with locks",
                              len(operations), missed)
                transaction.rollback()
                transaction = conn.begin()
                applied = self._apply_batch(conn, operations, False)
        except sqlalchemy.exc.DBAPIError as exc:
            self._abandon(conn, exc)
            raise
        except BaseException:
            self._abandon(conn, None)
            raise
        try:
            transaction.commit()
        except sqlalchemy.exc.DBAPIError as exc:
            self._abandon(conn, exc)
            if is_transient(exc) and self._engine.dialect.name != "sqlite":
                # Unknown until settled: a check that fails leaves it so, and the
                # next attempt asks again before it runs anything.
                self._unsettled = applied
                if self._may_have_committed(exc, applied.witness):
                    self._unsettled = None
                    applied.on_commit()
                    return applied.results
                if not applied.witness.is_empty():
                    self._unsettled = None  # checked: it did not commit
            raise
        applied.on_commit()
        return applied.results

    def _may_have_committed(self, exc: sqlalchemy.exc.DBAPIError, witness: Witness) -> bool:
        """After a failed COMMIT: True if the batch's rows are there after all."""
        if self._engine.dialect.name == "sqlite" or witness.is_empty():
            # SQLite reports a COMMIT that did not happen; a batch without a witness
            # holds only writes that can be repeated with the same outcome.
            return False
        if _certification_conflict(exc):
            # Routine on a Galera cluster: another node committed a write of the same
            # rows first (two nodes numbering one study, say). Nothing committed; the
            # check below costs one read and holds whatever the server says.
            _logger.info("COMMIT of a batch lost a conflict with another node of the "
                         "cluster (%s); checking, then running it again", exc.orig)
        else:
            _logger.warning("COMMIT of a batch failed (%s); checking whether it committed",
                            exc)
        # Silent: the warning above already says what is going on.
        return with_retries(lambda: self._commit_check(witness), self._retry_deadline)

    # -- the committer's own connection ------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _abandon(self, conn: Connection, exc: sqlalchemy.exc.DBAPIError | None) -> None:
        """Rolls back; a connection that failed with a connection error is replaced."""
        broken = exc is not None and (exc.connection_invalidated or is_transient(exc))
        try:
            conn.rollback()
        except sqlalchemy.exc.DBAPIError:
            broken = True
        if broken:
            sqlite_busy = exc is not None and self._engine.dialect.name == "sqlite"
            self._drop_connection(invalidate=not sqlite_busy)

    def _drop_connection(self, invalidate: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if invalidate:
                conn.invalidate()
            conn.close()
        except sqlalchemy.exc.DBAPIError:
            pass


def _certification_conflict(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """A deadlock reported by COMMIT itself: a single server reports deadlocks at the
    statement that waits, so at COMMIT it is a multi-primary cluster's certification
    (or a node's abort of this transaction for another node's earlier write)."""
    args: tuple[object, ...] = getattr(exc.orig, "args", ())
    return len(args) > 0 and args[0] == 1213
