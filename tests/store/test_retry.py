"""Transient failures, injected for real, are retried and nothing is applied twice."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from shardproxy.rows import COMPLETE
from shardproxy.store import Store
from shardproxy.store.retry import with_retries
from tests.store.faults import ReplyDropper, kill_store_connections, reply_dropper
from tests.store.test_concurrency import FLOAT, run_random_sampler_trials

SERVER_URLS = {
    "mariadb": "mariadb_url",
    "mariadb-mysqlclient": "mariadb_mysqlclient_url",
    "postgres": "postgres_url",
}


def _count_trials(url: str, study_id: int) -> int:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(
                "SELECT COUNT(*) FROM trials WHERE study_id = :s"), {"s": study_id}).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", list(SERVER_URLS))
def test_killed_connections_are_retried_without_double_writes(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(SERVER_URLS[backend])
    database = make_url(url).database
    assert database is not None
    store = Store(url, retry_deadline=60)
    kills = 0
    done = threading.Event()

    def killer() -> None:
        nonlocal kills
        deadline = time.monotonic() + 60  # bounded even if the workload hangs
        while not done.is_set() and time.monotonic() < deadline:
            kills += kill_store_connections(url, database)
            time.sleep(0.05)

    try:
        study_id = store.create_new_study([0], "under-fire")
        thread = threading.Thread(target=killer)
        thread.start()
        try:
            rows = run_random_sampler_trials(store, study_id, threads=8, trials_per_thread=15)
        finally:
            done.set()
            thread.join()
        assert kills > 0
        assert len(rows) == 120  # every acknowledged trial once, none twice
        assert [r.number for r in rows] == list(range(120))
        assert all(r.state == COMPLETE and len(r.params) == 1 for r in rows)
        assert _count_trials(url, study_id) == 120
    finally:
        store.close()


@contextlib.contextmanager
def _store_behind_a_dropper(
    url: str, retry_deadline: float
) -> Iterator[tuple[ReplyDropper, Store]]:
    """A store whose connections go through a `ReplyDropper` in front of `url`'s server."""
    with reply_dropper(url) as (dropper, relayed_url):
        store = Store(relayed_url, retry_deadline=retry_deadline)
        try:
            yield dropper, store
        finally:
            store.close()


@pytest.mark.parametrize("backend", list(SERVER_URLS))
def test_lost_commit_reply_is_not_applied_twice(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    url = request.getfixturevalue(SERVER_URLS[backend])
    with _store_behind_a_dropper(url, retry_deadline=30) as (dropper, store):
        study_id = store.create_new_study([0], "lost-reply")
        with caplog.at_level(logging.WARNING, logger="shardproxy.store"):
            dropper.arm()
            trial_id = store.create_new_trial(study_id, None)
            store.set_trial_param(trial_id, "x", 0.5, FLOAT)
            dropper.arm()
            updated = store.set_trial_state_values(trial_id, COMPLETE, [0.25])
        assert dropper.dropped == 2
        assert "checking whether it committed" in caplog.text
        assert updated is True  # not UpdateFinishedTrialError from a re-run
        assert _count_trials(url, study_id) == 1
        (row,) = store.load_trials(study_id, id_greater_than=-1)
        assert (row.trial_id, row.number, row.state, row.values) == (
            trial_id, 0, COMPLETE, [0.25])


@pytest.mark.parametrize("backend", list(SERVER_URLS))
def test_a_lone_write_whose_reply_was_lost_is_not_failed_at_the_deadline(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The server applies a lone param write (one autocommitted statement), its reply
    is lost, and then the server refuses connections past the retry deadline: the
    write may be in the database, so the store waits until it can tell rather than
    fail it (a client told UNAVAILABLE would suggest another value)."""
    url = request.getfixturevalue(SERVER_URLS[backend])
    with _store_behind_a_dropper(url, retry_deadline=1) as (dropper, store):
        study_id = store.create_new_study([0], "lost-statement-reply")
        trial_id = store.create_new_trial(study_id, None)
        with caplog.at_level(logging.WARNING, logger="shardproxy.store"):
            dropper.arm(b"INSERT INTO trial_params", refuse_for=3.0)
            store.set_trial_param(trial_id, "x", -0.25, FLOAT, study_id=study_id)
        assert dropper.dropped == 1 and dropper.refused > 0
        assert "waiting for the database past the retry deadline" in caplog.text
        assert store.get_trial(trial_id).params == [("x", -0.25, FLOAT)]


@pytest.mark.parametrize("backend", list(SERVER_URLS))
def test_a_study_whose_commit_reply_was_lost_is_not_failed_at_the_deadline(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """A study write's COMMIT is applied, its reply lost, and the server then refuses
    connections past the retry deadline: the store waits until it can tell, and
    answers with the study it created."""
    url = request.getfixturevalue(SERVER_URLS[backend])
    with _store_behind_a_dropper(url, retry_deadline=1) as (dropper, store):
        with caplog.at_level(logging.WARNING, logger="shardproxy.store"):
            dropper.arm(refuse_for=3.0)
            study_id = store.create_new_study([0], "lost-study-commit")
        assert dropper.dropped == 1 and dropper.refused > 0
        assert "waiting for the database past the retry deadline" in caplog.text
        named = [s.study_id for s in store.get_all_studies()
                 if s.study_name == "lost-study-commit"]
        assert named == [study_id]


@pytest.mark.parametrize("backend", list(SERVER_URLS))
def test_a_study_whose_commit_reached_the_server_after_the_retry_began_is_the_one_answered(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """The connection dies as the COMMIT of a new study leaves, and the COMMIT
    reaches the server a second later. The retry finds no study of that name yet,
    inserts it again and waits on the name's unique key until the first
    transaction commits: the name is then taken, by the study this very call
    created, which is the answer (not DuplicatedStudyError)."""
    url = request.getfixturevalue(SERVER_URLS[backend])
    with _store_behind_a_dropper(url, retry_deadline=30) as (dropper, store):
        dropper.arm(late=1.0)
        study_id = store.create_new_study([0], "late-study-commit")
        assert dropper.dropped == 1
        named = [s.study_id for s in store.get_all_studies()
                 if s.study_name == "late-study-commit"]
        assert named == [study_id]
        assert store.get_study_directions(study_id) == [0]


def test_lock_wait_timeout_is_retried(
    mariadb_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    impatient = make_url(mariadb_url).update_query_dict(
        {"init_command": "SET SESSION innodb_lock_wait_timeout=1"}
    ).render_as_string(hide_password=False)
    store = Store(impatient)
    holder = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        study_id = store.create_new_study([0], "locked")
        with holder.connect() as conn, caplog.at_level(logging.WARNING):
            conn.execute(sqlalchemy.text(
                "SELECT study_id FROM studies WHERE study_id = :s FOR UPDATE"), {"s": study_id})
            release = threading.Timer(2.5, conn.rollback)
            release.start()
            trial_id = store.create_new_trial(study_id, None)  # waits, times out, retries
            release.join()
        assert "batch of 1: retrying after" in caplog.text and "1205" in caplog.text
        assert store.get_trial(trial_id).number == 0
        assert _count_trials(mariadb_url, study_id) == 1
    finally:
        store.close()
        holder.dispose()


def test_locked_sqlite_file_is_retried(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(sqlite_url + "?timeout=0.2")
    try:
        study_id = store.create_new_study([0], "locked")
        path = make_url(sqlite_url).database
        assert path is not None
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        release = threading.Timer(1.5, other.rollback)
        release.start()
        with caplog.at_level(logging.WARNING):
            trial_id = store.create_new_trial(study_id, None)
        release.join()
        other.close()
        assert "database is locked" in caplog.text
        assert store.get_trial(trial_id).number == 0
        assert len(store.load_trials(study_id, id_greater_than=-1)) == 1
    finally:
        store.close()


class _LockedFile:
    """A SQLite file another connection holds the write lock of, for some attempts."""

    def __init__(self, path: str, locked_attempts: int) -> None:
        self.attempts = 0
        self._locked_attempts = locked_attempts
        self._holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._holder.execute("BEGIN IMMEDIATE")
        self._engine = sqlalchemy.create_engine(
            f"sqlite:///{path}", connect_args={"timeout": 0}, poolclass=sqlalchemy.pool.NullPool
        )

    def attempt(self, sql: str = "BEGIN IMMEDIATE") -> int:
        self.attempts += 1
        if self.attempts > self._locked_attempts and self._holder.in_transaction:
            self._holder.rollback()
        with self._engine.connect() as conn:
            conn.exec_driver_sql(sql)
            conn.exec_driver_sql("ROLLBACK")
        return self.attempts

    def close(self) -> None:
        if self._holder.in_transaction:
            self._holder.rollback()
        self._holder.close()
        self._engine.dispose()


@pytest.mark.parametrize("what", ["read", None])
def test_transient_errors_are_retried_and_each_retry_reported_as_the_caller_asks(
    tmp_path: Path, what: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    locked = _LockedFile(str(tmp_path / "locked.db"), locked_attempts=2)
    reported: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, logger="shardproxy.store.retry"):
            succeeded_on = with_retries(
                locked.attempt, 30, what, on_retry=lambda exc: reported.append(str(exc.orig))
            )
    finally:
        locked.close()
    assert succeeded_on == 3
    assert reported == ["database is locked"] * 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "shardproxy.store.retry"]
    if what is None:
        assert warnings == []  # the hook alone speaks, or nothing does
    else:
        assert warnings == ["read: transient database error, retrying: database is locked"] * 2


def test_an_error_that_is_not_transient_is_raised_at_once(tmp_path: Path) -> None:
    locked = _LockedFile(str(tmp_path / "locked.db"), locked_attempts=0)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="syntax error"):
            with_retries(lambda: locked.attempt("BEGIN NONSENSE"), 30, "write")
    finally:
        locked.close()
    assert locked.attempts == 1


def test_a_transient_error_past_the_deadline_is_raised(tmp_path: Path) -> None:
    locked = _LockedFile(str(tmp_path / "locked.db"), locked_attempts=10)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
            with_retries(locked.attempt, 0, "write")
    finally:
        locked.close()
    assert locked.attempts == 1
