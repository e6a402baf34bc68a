"""Statements rendered once into the driver's own SQL, for the store's hot paths.

For the store's small statements SQLAlchemy Core spends more CPU per execution
than the driver does: before it finds a statement's compiled form in its cache,
it derives the cache key from the whole expression tree, and it then builds an
execution context and a result object, on every call. A `Prepared` statement is
compiled once per dialect and IN-list length and then run on a cursor of the
connection's own driver connection, inside the connection's transaction (a
multi-row INSERT as one statement: `execute_many`). Errors
still go through SQLAlchemy's handling (the store's retries see the same
exceptions, and a lost connection is invalidated as usual). Where the engine has
event listeners (a statement counter, say), statements run through
`exec_driver_sql` instead, so that the listeners see every one.

Only for statements whose parameters and result columns need no conversion by
SQLAlchemy's types (integers, floats, text, and datetimes on drivers that take
and return them natively). SQLite's driver stores datetimes as text through
SQLAlchemy's types, so on SQLite the statement runs the Core way.

A statement's expanding lists are IN-lists, padded to the next power of two by
repeating their last element, which means the same: the statement is then
rendered once per power of two of each list's length rather than once per
length. Unpadded, a worker whose reads listed 1 to 1 000 unfinished trials would
render the trial read a thousand times, at 14–106 ms of CPU each, and keep every
rendering (326 KiB for the one of 1 000 ids on MySQL).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql import Executable

from shardproxy.store.shapes import padded

# (SQL text, how to turn the caller's parameters into the driver's), or None where
# a parameter needs SQLAlchemy's conversion and the statement runs the Core way.
_Rendered = tuple[str, Callable[[Mapping[str, Any]], Any]] | None


class Rows:
    """A statement's rows (none for a write) and its row count."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: Sequence[Sequence[Any]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Sequence[Any]]:
        return iter(self.rows)

    def all(self) -> Sequence[Sequence[Any]]:
        return self.rows

    def first(self) -> Sequence[Any] | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class Prepared:
    def __init__(
        self, statement: Executable, expanding: Sequence[str] = (),
        columns: Sequence[str] | None = None,
    ) -> None:
        """`expanding`: the names of the statement's `bindparam(..., expanding=True)`,
        each the list of an IN (see the module's docstring). `columns`: for an
        INSERT given no values, the columns its rows set (each row's keys), as
        Core takes them from the first row's keys."""
        self.statement = statement
        self._expanding = tuple(expanding)
        self._columns = None if columns is None else list(columns)
        self._rendered: dict[tuple[str, tuple[int, ...]], _Rendered] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Rows:
        params = self._padded(params)
        rendered = self._rendering(conn.dialect, params)
        if rendered is None:
            return _through_core(conn.execute(self.statement, dict(params)))
        sql, arguments = rendered
        if _has_listeners(conn):
            return _through_core(conn.exec_driver_sql(sql, arguments(params)))
        return _on_cursor(conn, sql, arguments(params))

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per row, as one multi-row statement on the drivers
        of `MULTI_ROW_DRIVERS` (see `_run_many`). For an INSERT built with the rows'
        `columns`; every row has those keys."""
        assert not self._expanding, "a multi-row INSERT has no expanding lists"
        rendered = self._rendering(conn.dialect, rows[0])
        if rendered is None:
            conn.execute(self.statement, [dict(row) for row in rows])
            return
        sql, arguments = rendered
        many = [arguments(row) for row in rows]
        if _has_listeners(conn):
            conn.exec_driver_sql(sql, many)
            return
        _on_cursor(conn, sql, many, many=True)

    def stream(
        self, conn: Connection, params: Mapping[str, Any], fetch: int
    ) -> Generator[Sequence[Any], None, None]:
        """The statement's rows, fetched `fetch` at a time from a server-side cursor,
        so that the driver never holds the whole result: an unbuffered cursor on
        MySQL/MariaDB, a named one on PostgreSQL (which lives only in a
        transaction), SQLite's own cursor, which steps as it is read. The
        connection is busy until the rows have run out or the generator is closed.
        """
        params = self._padded(params)
        rendered = self._rendering(conn.dialect, params)
        cursor = None if rendered is None or _has_listeners(conn) else _server_side_cursor(conn)
        if cursor is None:  # through Core, which picks the driver's cursor itself
            options = {"stream_results": True, "max_row_buffer": fetch}
            if rendered is None:
                result = conn.execute(self.statement, dict(params), execution_options=options)
            else:
                result = conn.exec_driver_sql(rendered[0], rendered[1](params),
                                              execution_options=options)
            with result:
                for part in result.partitions(fetch):
                    yield from part
            return
        assert rendered is not None  # a cursor of its own only for a rendered statement
        sql, arguments = rendered
        failed = False
        try:
            cursor.execute(sql, arguments(params))
            while rows := cursor.fetchmany(fetch):
                yield from rows
        except conn.dialect.loaded_dbapi.Error as exc:
            failed = True
            _close_after_failure(cursor)
            _raise_as_core_would(conn, exc, sql, arguments(params), cursor)
        finally:
            if not failed:
                cursor.close()  # also when the generator is closed early

    def _padded(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """`params` with each expanding list `padded` to the next power of two."""
        if not self._expanding:
            return params
        return {**params, **{name: padded(params[name]) for name in self._expanding}}

    def _rendering(self, dialect: Dialect, params: Mapping[str, Any]) -> _Rendered:
        """The driver's SQL for these lengths of the expanding lists (rendered on
        first use), or None where the statement runs the Core way."""
        if dialect.name == "sqlite":
            return None
        key = (dialect.name, tuple(len(params[name]) for name in self._expanding))
        if key not in self._rendered:
            self._rendered[key] = self._render(dialect, params)
        return self._rendered[key]

    def _render(self, dialect: Dialect, params: Mapping[str, Any]) -> _Rendered:
        # An INSERT of many rows is compiled as Core compiles it for executemany:
        # without the RETURNING of the new primary key that a single row gets.
        compiled = self.statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=self._columns,
            for_executemany=self._columns is not None)
        state = compiled.construct_expanded_state(dict(params))
        if state.processors:
            return None
        # Where each of the driver's parameters comes from: a caller's parameter,
        # the i-th element of an expanded list, or a constant of the statement.
        sources: list[tuple[str, str | None, int]] = []
        for name, value in state.parameters.items():
            if name in params and name not in self._expanding:
                sources.append((name, name, -1))
                continue
            list_name, _, index = name.rpartition("_")
            if list_name in self._expanding and index.isdigit():
                position = int(index) - 1
                assert params[list_name][position] == value, f"unexpected expansion {name}"
                sources.append((name, list_name, position))
            else:
                sources.append((name, None, -1))
        constants = dict(state.parameters)

        def value_of(params: Mapping[str, Any], source: tuple[str, str | None, int]) -> Any:
            name, origin, position = source
            if origin is None:
                return constants[name]
            return params[origin] if position < 0 else params[origin][position]

        if compiled.positional:
            order = [next(s for s in sources if s[0] == name) for name in state.positiontup]
            return state.statement, lambda p: tuple(value_of(p, s) for s in order)
        return state.statement, lambda p: {s[0]: value_of(p, s) for s in sources}


def _server_side_cursor(conn: Connection) -> Any:
    """A server-side cursor of the connection's own driver (its rows are plain
    tuples, where Core makes a Row of each), or None for a driver not known here."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    driver = conn.dialect.driver
    if driver == "psycopg2":
        return dbapi_connection.cursor(name=f"stream_{next(_cursor_names)}")
    if driver == "pymysql":
        import pymysql.cursors

        return dbapi_connection.cursor(pymysql.cursors.SSCursor)
    if driver == "mysqldb":
        import MySQLdb.cursors

        return dbapi_connection.cursor(MySQLdb.cursors.SSCursor)
    return None


def _close_after_failure(cursor: Any) -> None:
    """Closes a server-side cursor whose statement failed, perhaps with its
    connection lost, where the driver's own close may fail its own way: the
    statement's error is the one to raise.

    PyMySQL (2.2) leaves an unbuffered result "active" when its connection is
    lost, and the cursor's close, and later the finalizers of both, read the rest
    of it from the closed socket and raise AttributeError (in a finalizer: printed
    as an ignored exception). Its result is marked done first (a private name,
    as in `_raise_as_core_would`; absent on other drivers).
    """
    result = getattr(cursor, "_result", None)
    if getattr(result, "unbuffered_active", False):
        result.unbuffered_active = False  # type: ignore[union-attr]
    with contextlib.suppress(Exception):
        cursor.close()


# Names for PostgreSQL's named cursors: unique within a connection (and the process).
_cursor_names = itertools.count()


def _through_core(result: CursorResult[Any]) -> Rows:
    rows = [tuple(row) for row in result] if result.returns_rows else []
    return Rows(rows, result.rowcount)


def _on_cursor(conn: Connection, sql: str, arguments: Any, many: bool = False) -> Rows:
    """The statement run on a cursor of the driver: once, or once per element of
    `arguments` where `many` (as one multi-row statement, `_run_many`; no rows)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            _run_many(cursor, conn.dialect.driver, sql, arguments)
        else:
            cursor.execute(sql, arguments)
        rows = cursor.fetchall() if not many and cursor.description is not None else ()
        rowcount = cursor.rowcount
    except Exception as exc:
        if not isinstance(exc, conn.dialect.loaded_dbapi.Error):
            # A value the driver refuses before sending (psycopg2: a NUL character in
            # a string) is raised as it is, as Core raises it; the handler below would
            # wrap it in a StatementError, for want of Core's execution context.
            cursor.close()
            raise
        _raise_as_core_would(conn, exc, sql, arguments, cursor)
    cursor.close()
    return Rows(rows, rowcount)


# The drivers that `_run_many` sends many rows to as one statement.
MULTI_ROW_DRIVERS = frozenset({"pymysql", "mysqldb", "psycopg2"})


def _run_many(cursor: Any, driver: str, sql: str, arguments: list[Any]) -> None:
    """One INSERT per element of `arguments`, sent as one multi-row INSERT: PyMySQL
    and mysqlclient rewrite an executemany INSERT into one themselves; psycopg2's
    executemany sends one statement per row, so its `execute_values` repeats the
    statement's VALUES tuple for each row instead."""
    split = _values_tuple(sql) if driver == "psycopg2" else None
    if split is None:
        cursor.executemany(sql, arguments)
        return
    import psycopg2.extras

    before, values, after = split
    psycopg2.extras.execute_values(cursor, f"{before}%s{after}", arguments,
                                   template=values, page_size=len(arguments))


@functools.lru_cache(maxsize=256)
def _values_tuple(sql: str) -> tuple[str, str, str] | None:
    """`sql` split around the VALUES tuple of its INSERT, or None if it has none."""
    found = _VALUES_TUPLE.search(sql)
    if found is None:
        return None
    return sql[: found.start(1)], found.group(1), sql[found.end(1) :]


# The VALUES tuple of a rendered INSERT: placeholders (`%(name)s`) and commas.
_VALUES_TUPLE = re.compile(r"\bVALUES (\((?:[^()]|%\([^()]*\)s)*\))")


# SQLAlchemy has no public API for either of the two helpers below, so they use
# its private names: `Connection._has_events`, `Engine._has_events` and
# `Connection._handle_dbapi_exception`. pyproject.toml bounds SQLAlchemy to the
# releases they were checked against, and tests/store/test_prepared.py names
# whichever of them a new release changes. Rewriting the second one with public
# calls (`Dialect.is_disconnect`, `DBAPIError.instance`, `Connection.invalidate`)
# would miss what it also does: invalidate the whole pool after a disconnect,
# run the dialect's `handle_error` hooks, and roll back outside a transaction.


def _has_listeners(conn: Connection) -> bool:
    """SQLAlchemy's own test before it runs events; True if the names are gone."""
    return getattr(conn, "_has_events", True) or getattr(conn.engine, "_has_events", True)


def _raise_as_core_would(
    conn: Connection, exc: Exception, sql: str, arguments: Any, cursor: Any
) -> NoReturn:
    """Raises what exec_driver_sql would raise for `exc`, after the same invalidation."""
    conn._handle_dbapi_exception(exc, sql, arguments, cursor, None)
