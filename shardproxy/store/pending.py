"""The rows a group-commit batch writes, gathered per table and written set by set."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection

from shardproxy.store import shapes, sql
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import (
    trial_intermediate_values,
    trial_params,
    trial_system_attributes,
    trial_user_attributes,
    trial_values,
    trials,
)


def utc_now() -> datetime:
    """Optuna stores naive UTC datetimes."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def value_repr(value: float) -> tuple[float | None, str]:
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def intermediate_repr(value: float) -> tuple[float | None, str]:
    if math.isnan(value):
        return None, "NAN"
    return value_repr(value)


@dataclass
class PendingRows:
    """What the batch will write, gathered while the operations are checked."""

    params: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    values: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    intermediates: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    user_attrs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    system_attrs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)

    def add_value(self, trial_id: int, objective: int, value: float) -> None:
        stored, kind = value_repr(value)
        self.values[(trial_id, objective)] = {
            "trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}

    def add_intermediate(self, trial_id: int, step: int, value: float) -> None:
        stored, kind = intermediate_repr(value)
        self.intermediates[(trial_id, step)] = {
            "trial_id": trial_id, "step": step, "intermediate_value": stored,
            "intermediate_value_type": kind}

    def add_param(self, trial_id: int, name: str, value: float, distribution: str) -> None:
        # A second param of the same name is ignored, as RDBStorage ignores the
        # IntegrityError of its INSERT.
        self.params.setdefault((trial_id, name), {
            "trial_id": trial_id, "param_name": name, "param_value": value,
            "distribution_json": distribution})

    def add_attr(self, system: bool, trial_id: int, key: str, value_json: str) -> None:
        target = self.system_attrs if system else self.user_attrs
        target[(trial_id, key)] = {"trial_id": trial_id, "key": key, "value_json": value_json}

    def write(self, conn: Connection) -> None:
        if self.params:
            sql.insert_or_ignore(conn, trial_params, list(self.params.values()),
                                 ("trial_id", "param_name"))
        if self.values:
            sql.upsert(conn, trial_values, list(self.values.values()), ("trial_id", "objective"))
        if self.intermediates:
            sql.upsert(conn, trial_intermediate_values, list(self.intermediates.values()),
                       ("trial_id", "step"))
        for table, rows in ((trial_user_attributes, self.user_attrs),
                            (trial_system_attributes, self.system_attrs)):
            if rows:
                sql.upsert(conn, table, list(rows.values()), ("trial_id", "key"))


# (state name, datetime_start becomes now, datetime_complete becomes now)
StateChange = tuple[str, bool, bool]


def write_states(conn: Connection, changes: dict[int, StateChange], now: datetime) -> None:
    """One UPDATE per kind of change, for all the trials it applies to."""
    groups: dict[StateChange, list[int]] = {}
    for trial_id, change in changes.items():
        groups.setdefault(change, []).append(trial_id)
    for (state, start, complete), trial_ids in groups.items():
        statement = _update_state_statement(start, complete)
        for part in shapes.chunks(sorted(trial_ids)):
            statement.execute(conn, {"new_state": state, "now": now, "ids": list(part)})


@functools.cache
def _update_state_statement(start: bool, complete: bool) -> Prepared:
    """The UPDATE for one kind of state change, built once per kind."""
    columns: dict[str, Any] = {"state": bindparam("new_state")}
    if start:
        columns["datetime_start"] = bindparam("now")
    if complete:
        columns["datetime_complete"] = bindparam("now")
    return Prepared(
        update(trials)
        .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
        .values(columns),
        expanding=["ids"],
    )
