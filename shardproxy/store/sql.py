"""Multi-row inserts, upserts and insert-or-ignore in each backend's own words.

Rows go to the driver as one executemany of one cached statement. Each backend
then sends them as multi-row statements: PyMySQL rewrites an executemany INSERT
into one multi-row INSERT; SQLAlchemy batches PostgreSQL INSERTs into multi-row
VALUES when they carry RETURNING (so the upserts here ask for the primary key);
SQLite runs them in-process.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

T = TypeVar("T")

# Ids per IN-list: far below every backend's parameter limit (SQLite's 32 766).
CHUNK = 2000


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def statement_size(count: int) -> int:
    """The size of statement that serves `count` rows, ids or studies: the next power
    of two, so that a few shapes are rendered and kept (each costs tens of
    milliseconds once) rather than one per batch size. The caller fills the places
    past `count` with values that match nothing, or repeats (`padded`)."""
    return 1 << (count - 1).bit_length()


def padded(items: Sequence[T]) -> list[T]:
    """`items` padded to `statement_size` by repeating the last (empty stays empty):
    for lists where a repeat means nothing, an IN-list or the arms of a CASE."""
    if not items:
        return []
    return [*items, *itertools.repeat(items[-1], statement_size(len(items)) - len(items))]


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
    _execute_many(conn, table, insert(table), rows)


# The statements are built once per shape: building one (and its `inserted` or
# `excluded` alias) costs more CPU than executing it from SQLAlchemy's compiled cache.


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


def _execute_many(
    conn: Connection, table: Table, statement: Any, rows: list[dict[str, Any]]
) -> None:
    if len(rows) > 1 and conn.dialect.name == "postgresql":
        conn.execute(_returning_primary_key(statement, table), rows).all()
    else:
        conn.execute(statement, rows)
