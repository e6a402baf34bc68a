"""Multi-row upserts and insert-or-ignore in each backend's own words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

# Rows per statement: far below every backend's parameter limit (SQLite's 32 766).
CHUNK = 500


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def upsert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT rows; where one with the same `keys` exists, overwrite its other columns.

    Rows must be unique by `keys` (PostgreSQL refuses to touch a row twice).
    """
    for part in chunks(rows):
        updated = [c for c in part[0] if c not in keys]
        dialect = conn.dialect.name
        if dialect == "mysql":
            mysql_stmt = mysql.insert(table).values(list(part))
            conn.execute(mysql_stmt.on_duplicate_key_update(
                {c: mysql_stmt.inserted[c] for c in updated}
            ))
        else:
            module: Any = postgresql if dialect == "postgresql" else sqlite
            stmt = module.insert(table).values(list(part))
            conn.execute(stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: stmt.excluded[c] for c in updated}
            ))


def insert_or_ignore(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
) -> None:
    """INSERT rows, skipping those whose `keys` already exist (as Optuna ignores them)."""
    for part in chunks(rows):
        dialect = conn.dialect.name
        if dialect == "mysql":
            conn.execute(insert(table).prefix_with("IGNORE").values(list(part)))
        else:
            module: Any = postgresql if dialect == "postgresql" else sqlite
            stmt = module.insert(table).values(list(part))
            conn.execute(stmt.on_conflict_do_nothing(index_elements=list(keys)))


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    for part in chunks(rows):
        conn.execute(insert(table).values(list(part)))
