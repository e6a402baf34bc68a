"""Multi-row inserts, upserts and insert-or-ignore in each backend's own words.

Rows go to the database as one multi-row statement. On the drivers that
`Prepared.execute_many` sends as one (PyMySQL, mysqlclient, psycopg2) the
statement is rendered once and run on the driver's own cursor: SQLAlchemy Core's
own work per execution cost as much CPU as the driver's. With any other driver
Core runs it: it batches PostgreSQL INSERTs into multi-row VALUES when they carry
RETURNING (so the upserts here then ask for the primary key), and SQLite runs
them in-process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from shardproxy.store.prepared import MULTI_ROW_DRIVERS, Prepared


def upsert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT rows; where one with the same `keys` exists, overwrite its other columns.

    Rows must be unique by `keys` (PostgreSQL refuses to touch a row twice).
    """
    statement = _upsert_statement(conn.dialect.name, table, tuple(keys), tuple(rows[0]))
    _execute_many(conn, table, statement, rows)


def insert_or_ignore(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT rows, skipping those whose `keys` already exist (as Optuna ignores them)."""
    _execute_many(conn, table, _insert_or_ignore_statement(conn.dialect.name, table, tuple(keys)),
                  rows)


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    _execute_many(conn, table, _insert_statement(table), rows)


# The statements are built once per shape: building one (and its `inserted` or
# `excluded` alias) costs more CPU than executing it, and `_on_the_driver` keeps a
# rendering per statement object, which a statement built per call would grow
# without bound.


@functools.cache
def _insert_statement(table: Table) -> Any:
    return insert(table)


@functools.cache
def _upsert_statement(
    dialect: str, table: Table, keys: tuple[str, ...], columns: tuple[str, ...]
) -> Any:
    updated = [c for c in columns if c not in keys]
    if dialect == "mysql":
        mysql_stmt = mysql.insert(table)
        return mysql_stmt.on_duplicate_key_update({c: mysql_stmt.inserted[c] for c in updated})
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in updated}
    )


@functools.cache
def _insert_or_ignore_statement(dialect: str, table: Table, keys: tuple[str, ...]) -> Any:
    if dialect == "mysql":
        # Not INSERT IGNORE, which would also swallow errors other than the duplicate.
        primary_key = table.primary_key.columns.values()[0]
        return mysql.insert(table).on_duplicate_key_update({primary_key.name: primary_key})
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=list(keys))


@functools.cache
def _returning_primary_key(statement: Any, table: Table) -> Any:
    return statement.returning(*table.primary_key.columns)


@functools.cache
def _on_the_driver(statement: Any, columns: tuple[str, ...]) -> Prepared:
    return Prepared(statement, columns=columns)


def _execute_many(
    conn: Connection, table: Table, statement: Any, rows: list[dict[str, Any]]
) -> None:
    if conn.dialect.driver in MULTI_ROW_DRIVERS:
        _on_the_driver(statement, tuple(rows[0])).execute_many(conn, rows)
    elif len(rows) > 1 and conn.dialect.name == "postgresql":
        conn.execute(_returning_primary_key(statement, table), rows).all()
    else:
        conn.execute(statement, rows)
