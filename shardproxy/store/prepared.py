"""Statements rendered once into the driver's own SQL, for the group commit's hot path.

For the store's small statements SQLAlchemy Core spends more CPU per execution
than the driver does: before it finds a statement's compiled form in its cache,
it derives the cache key from the whole expression tree, on every call. A
`Prepared` statement is compiled once per dialect and IN-list length and then
run with `exec_driver_sql`, which keeps SQLAlchemy's connection, transaction and
exception handling (the store's retries see the same errors) and skips only that
lookup.

Only for statements whose parameters and result columns need no conversion by
SQLAlchemy's types (integers, floats, text, and datetimes on drivers that take
and return them natively). SQLite's driver stores datetimes as text through
SQLAlchemy's types, so on SQLite the statement runs the Core way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import Executable

# (SQL text, how to turn the caller's parameters into the driver's), or None where
# a parameter needs SQLAlchemy's conversion and the statement runs the Core way.
_Rendered = tuple[str, Callable[[Mapping[str, Any]], Any]] | None


class Prepared:
    def __init__(self, statement: Executable, expanding: Sequence[str] = ()) -> None:
        """`expanding`: the names of the statement's `bindparam(..., expanding=True)`."""
        self.statement = statement
        self._expanding = tuple(expanding)
        self._rendered: dict[tuple[str, tuple[int, ...]], _Rendered] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The statement's `CursorResult`."""
        dialect = conn.dialect
        if dialect.name == "sqlite":
            return conn.execute(self.statement, dict(params))
        key = (dialect.name, tuple(len(params[name]) for name in self._expanding))
        if key not in self._rendered:
            self._rendered[key] = self._render(dialect, params)
        rendered = self._rendered[key]
        if rendered is None:
            return conn.execute(self.statement, dict(params))
        sql, arguments = rendered
        return conn.exec_driver_sql(sql, arguments(params))

    def _render(self, dialect: Dialect, params: Mapping[str, Any]) -> _Rendered:
        compiled = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
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
