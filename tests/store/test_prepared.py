"""`Prepared` statements answer exactly as the same statements run through Core."""

from __future__ import annotations

import inspect
import traceback
from datetime import datetime

import pytest
import sqlalchemy
from sqlalchemy import bindparam, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, make_url

from shardproxy.store import Store, sql
from shardproxy.store import prepared as prepared_module
from shardproxy.store.database import make_write_engine
from shardproxy.store.prepared import Prepared
from shardproxy.store.retry import is_transient
from shardproxy.store.schema import studies, trial_params, trial_values, trials
from tests.store.faults import kill_store_connections

SERVER_URLS = ("mariadb_url", "mariadb_mysqlclient_url", "postgres_url")

LISTED = (
    select(trials.c.trial_id, trials.c.number, trials.c.state, literal(7).label("seven"))
    .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
    .where(trials.c.study_id == bindparam("sid"))
    .order_by(trials.c.trial_id)
)
COUNT_IN = select(func.count()).where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))


def _new_trials(url: str, count: int) -> list[int]:
    """The ids of `count` new trials of a new study in the database at `url`."""
    store = Store(url)
    try:
        study_id = store.create_new_study([0], "prepared")
        return [store.create_new_trial(study_id, None) for _ in range(count)]
    finally:
        store.close()


@pytest.fixture
def trial_ids(db_url: str) -> list[int]:
    return _new_trials(db_url, 6)


@pytest.mark.parametrize("count", [1, 2, 5, 1, 5])  # repeats: the rendered SQL is reused
def test_rows_equal_core_for_every_list_length(
    db_url: str, trial_ids: list[int], count: int
) -> None:
    engine = make_write_engine(db_url, 1)
    statement = Prepared(LISTED, expanding=["ids"])
    params = {"ids": trial_ids[:count] + [10**9], "sid": 1}
    try:
        with engine.begin() as conn:
            prepared = [tuple(row) for row in statement.execute(conn, params)]
            core = [tuple(row) for row in conn.execute(LISTED, params)]
    finally:
        engine.dispose()
    assert prepared == core
    assert [row[0] for row in prepared] == trial_ids[:count]
    assert all(row[2] == "RUNNING" and row[3] == 7 for row in prepared)


def test_one_instance_serves_lists_of_different_lengths_in_turn(
    db_url: str, trial_ids: list[int]
) -> None:
    engine = make_write_engine(db_url, 1)
    statement = Prepared(COUNT_IN, expanding=["ids"])
    try:
        with engine.begin() as conn:
            counts = [statement.execute(conn, {"ids": trial_ids[:n]}).scalar() for n in (3, 1, 6)]
    finally:
        engine.dispose()
    assert counts == [3, 1, 6]


def test_writes_take_effect_with_their_parameters(db_url: str, trial_ids: list[int]) -> None:
    engine = make_write_engine(db_url, 1)
    now = datetime(2026, 1, 2, 3, 4, 5)
    statement = Prepared(
        update(trials)
        .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
        .values(state=bindparam("new_state"), datetime_complete=bindparam("now")),
        expanding=["ids"],
    )
    try:
        with engine.begin() as conn:
            statement.execute(conn, {"ids": trial_ids[1:3], "new_state": "FAIL", "now": now})
        with engine.begin() as conn:
            rows = conn.execute(
                select(trials.c.trial_id, trials.c.state, trials.c.datetime_complete)
                .order_by(trials.c.trial_id)
            ).all()
    finally:
        engine.dispose()
    changed = {trial_id: (state, complete) for trial_id, state, complete in rows}
    assert [changed[i][0] for i in trial_ids] == ["RUNNING", "FAIL", "FAIL"] + ["RUNNING"] * 3
    assert changed[trial_ids[1]][1] == now


@pytest.mark.parametrize("server", SERVER_URLS)
def test_lists_of_every_length_are_rendered_once_per_power_of_two(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Each rendering is kept: one per list length would keep a thousand renderings
    of a statement that lists up to a thousand ids."""
    url = request.getfixturevalue(server)
    ids = _new_trials(url, 3)
    engine = make_write_engine(url, 1)
    statement = Prepared(COUNT_IN, expanding=["ids"])
    try:
        with engine.begin() as conn:
            counts = [statement.execute(conn, {"ids": ids + [10**9 + n for n in range(n)]})
                      .scalar() for n in range(40)]
    finally:
        engine.dispose()
    assert counts == [3] * 40
    # 3 to 42 ids: lists of 4, 8, 16, 32 and 64.
    assert sorted(lengths for _, (lengths,) in statement._rendered) == [4, 8, 16, 32, 64]  # noqa: SLF001


def test_a_padded_update_counts_each_row_it_matched_once(
    db_url: str, trial_ids: list[int]
) -> None:
    """The batch's guard compares an UPDATE's row count with its list's length."""
    engine = make_write_engine(db_url, 1)
    statement = Prepared(
        update(trials)
        .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)),
               trials.c.state == "RUNNING")
        .values(state="RUNNING"),
        expanding=["ids"],
    )
    try:
        with engine.begin() as conn:
            counts = [statement.execute(conn, {"ids": trial_ids[:n]}).rowcount
                      for n in (3, 5, 6)]  # padded to 4, 8 and 8
    finally:
        engine.dispose()
    assert counts == [3, 5, 6]


def test_sqlalchemy_still_has_the_private_names_prepared_statements_use() -> None:
    # Each is reached for only when a statement runs on the driver's cursor; a
    # release that renames one would otherwise show up as unretried errors or
    # leaked dead connections, not as a failing import.
    problems = []
    handler = getattr(Connection, "_handle_dbapi_exception", None)
    if handler is None:
        problems.append("Connection._handle_dbapi_exception is gone")
    else:
        taken = list(inspect.signature(handler).parameters)[:6]
        if taken != ["self", "e", "statement", "parameters", "cursor", "context"]:
            problems.append(f"Connection._handle_dbapi_exception now takes {taken}")
    for owner in (Connection, Engine):
        if not isinstance(getattr(owner, "_has_events", None), bool):
            problems.append(f"{owner.__name__}._has_events is no longer a bool attribute")
    assert not problems, (
        f"SQLAlchemy {sqlalchemy.__version__} changed private names that "
        f"shardproxy.store.prepared relies on: {'; '.join(problems)}. Adapt "
        "_has_listeners and _raise_as_core_would there before widening the "
        "SQLAlchemy bound in pyproject.toml."
    )


def _through_the_cursor(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    return any(frame.name == "_on_cursor" for frame in traceback.extract_tb(excinfo.tb))


@pytest.mark.parametrize("server", SERVER_URLS)
def test_a_killed_connection_is_invalidated_and_its_error_is_transient(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    database = make_url(url).database
    assert database is not None
    Store(url).close()  # creates the schema
    engine = make_write_engine(url, 1)
    statement = Prepared(COUNT_IN, expanding=["ids"])
    try:
        with engine.connect() as conn:
            conn.begin()
            assert statement.execute(conn, {"ids": [1]}).scalar() == 0
            assert kill_store_connections(url, database) >= 1
            with pytest.raises(sqlalchemy.exc.DBAPIError) as excinfo:
                statement.execute(conn, {"ids": [1]})
            assert _through_the_cursor(excinfo)
            assert excinfo.value.connection_invalidated
            assert is_transient(excinfo.value)  # so the store retries it
            assert conn.invalidated
        with engine.connect() as conn:  # the pool hands out a live connection again
            assert statement.execute(conn, {"ids": [1]}).scalar() == 0
    finally:
        engine.dispose()


def _with_a_study_named_taken(url: str) -> str:
    store = Store(url)
    try:
        store.create_new_study([0], "taken")
    finally:
        store.close()
    return url


@pytest.mark.parametrize("server", SERVER_URLS)
def test_a_refused_write_raises_sqlalchemys_error_and_keeps_the_connection(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = _with_a_study_named_taken(request.getfixturevalue(server))
    engine = make_write_engine(url, 1)
    statement = Prepared(insert(studies).values(study_name=bindparam("name")))
    try:
        with engine.connect() as conn:
            conn.begin()
            with pytest.raises(sqlalchemy.exc.IntegrityError) as excinfo:
                statement.execute(conn, {"name": "taken"})
            assert _through_the_cursor(excinfo)
            assert not excinfo.value.connection_invalidated
            assert not is_transient(excinfo.value)
            conn.rollback()
            conn.begin()
            statement.execute(conn, {"name": "free"})
            conn.commit()
            names = conn.execute(select(studies.c.study_name).order_by(studies.c.study_name))
            assert names.scalars().all() == ["free", "taken"]
    finally:
        engine.dispose()


def _value_rows(trial_ids: list[int], value: float) -> list[dict[str, object]]:
    return [{"trial_id": trial_id, "objective": 0, "value": value, "value_type": "FINITE"}
            for trial_id in trial_ids]


def _stored_values(conn: Connection) -> dict[int, float]:
    rows = conn.execute(select(trial_values.c.trial_id, trial_values.c.value))
    return {trial_id: value for trial_id, value in rows}


def test_many_rows_insert_upsert_and_ignore_as_optuna_does(
    db_url: str, trial_ids: list[int]
) -> None:
    """The multi-row writes of `sql`, which run on the driver's cursor with
    PyMySQL, mysqlclient and psycopg2, through Core on SQLite."""
    engine = make_write_engine(db_url, 1)
    try:
        with engine.begin() as conn:
            sql.insert_rows(conn, trial_values, _value_rows(trial_ids[:3], 1.0))
            sql.upsert(conn, trial_values, _value_rows(trial_ids[1:5], 2.0),
                       ("trial_id", "objective"))
            sql.insert_or_ignore(conn, trial_values, _value_rows(trial_ids[3:], 3.0),
                                 ("trial_id", "objective"))
            sql.upsert(conn, trial_values, _value_rows(trial_ids[:1], 4.0),
                       ("trial_id", "objective"))  # a single row
        with engine.begin() as conn:
            stored = _stored_values(conn)
    finally:
        engine.dispose()
    assert [stored[trial_id] for trial_id in trial_ids] == [4.0, 2.0, 2.0, 2.0, 2.0, 3.0]


@pytest.mark.parametrize("server", SERVER_URLS)
def test_many_rows_are_written_on_the_cursor_or_seen_by_listeners(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Without listeners the rows go on the driver's cursor; with them, as one
    executemany of the same rendered statement, which the listeners see."""
    url = request.getfixturevalue(server)
    ids = _new_trials(url, 5)
    engine = make_write_engine(url, 1)
    statement = Prepared(insert(trial_values), columns=list(_value_rows(ids, 0.0)[0]))
    seen: list[tuple[str, bool, int]] = []

    def record(conn: Connection, cursor: object, text: str, parameters: list[object],
               context: object, executemany: bool) -> None:
        seen.append((text, executemany, len(parameters)))

    try:
        with engine.begin() as conn:
            statement.execute_many(conn, _value_rows(ids[:2], 5.0))  # on the cursor
        sqlalchemy.event.listen(engine, "before_cursor_execute", record)
        with engine.begin() as conn:
            statement.execute_many(conn, _value_rows(ids[2:], 6.0))  # seen by listeners
            stored = _stored_values(conn)
    finally:
        engine.dispose()
    assert [stored[trial_id] for trial_id in ids] == [5.0, 5.0, 6.0, 6.0, 6.0]
    ((rendered, _),) = statement._rendered.values()  # noqa: SLF001
    assert (rendered, True, 3) in seen


def test_psycopg2_repeats_the_values_of_every_multi_row_insert() -> None:
    """Where the rendered INSERT has no VALUES tuple to repeat, psycopg2 would send
    a statement per row."""
    dialect = postgresql.psycopg2.dialect()  # type: ignore[attr-defined]
    columns = {
        trial_values: ("trial_id", "objective", "value", "value_type"),
        trial_params: ("trial_id", "param_name", "param_value", "distribution_json"),
    }
    statements = [
        (sql._upsert_statement("postgresql", table, keys[:2], keys), keys)  # noqa: SLF001
        for table, keys in columns.items()
    ] + [
        (sql._insert_or_ignore_statement("postgresql", table, keys[:2]), keys)  # noqa: SLF001
        for table, keys in columns.items()
    ] + [(insert(studies), ("study_name",))]
    for statement, keys in statements:
        rendered = Prepared(statement, columns=keys)._render(  # noqa: SLF001
            dialect, dict.fromkeys(keys, 1))
        assert rendered is not None
        split = prepared_module._values_tuple(rendered[0])  # noqa: SLF001
        assert split is not None, rendered[0]
        assert "RETURNING" not in rendered[0]
        assert split[1] == "(" + ", ".join(f"%({key})s" for key in keys) + ")"


@pytest.mark.parametrize("server", SERVER_URLS)
def test_a_refused_row_of_many_raises_sqlalchemys_error_and_writes_none(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = _with_a_study_named_taken(request.getfixturevalue(server))
    engine = make_write_engine(url, 1)
    try:
        with engine.connect() as conn:
            conn.begin()
            with pytest.raises(sqlalchemy.exc.IntegrityError) as excinfo:
                sql.insert_rows(conn, studies, [{"study_name": "new"}, {"study_name": "taken"}])
            assert _through_the_cursor(excinfo)
            assert not excinfo.value.connection_invalidated
            conn.rollback()
            names = conn.execute(select(studies.c.study_name)).scalars().all()
    finally:
        engine.dispose()
    assert names == ["taken"]
