"""Trial heartbeats in Optuna's `trial_heartbeats` table, by the database's clock.

What RDBStorage's `record_heartbeat` and `_get_stale_trial_ids` do, so that a
heartbeat written through the proxy and one written by RDBStorage mean the same,
and `fail_stale_trials` run from either agrees on which trials are stale. Both
read the time from the database (`now()`), never from a machine's clock.

A heartbeat is a write of the group commit: all the beats that arrive while a
transaction runs are written by one statement, an upsert from a SELECT of the
trials (so a trial that is gone gets no row and fails nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from shardproxy.store import shapes
from shardproxy.store.schema import trial_heartbeats, trials


@dataclass
class RecordHeartbeat:
    """A trial's worker is alive: its heartbeat becomes the database's now."""

    trial_id: int


def write_heartbeats(conn: Connection, trial_ids: list[int]) -> None:
    """One statement (per CHUNK trials): each existing trial's heartbeat set to now."""
    statement = _upsert(conn.dialect.name)
    for part in shapes.chunks(sorted(set(trial_ids))):
        conn.execute(statement, {"ids": list(part)})


def stale_trial_ids(
    conn: Connection, study_id: int, grace_period: float, among: Sequence[int] | None = None
) -> list[int]:
    """RUNNING trials of the study whose last heartbeat is older than `grace_period` s.

    A trial without a heartbeat is never stale (its worker may not beat at all), as
    in RDBStorage, which compares the same way: now - heartbeat > grace period.

    `among`: the study's unfinished trials as a sync that started after the call
    saw them, which every trial RUNNING then is among: those are looked up by id,
    O(unfinished). Without it the study is read through its index, O(study) (5–8 ms
    at 100 000 trials, `bench/results/stale-trials.md`), as RDBStorage reads it.
    """
    found: list[tuple[Any, Any, Any]]
    if among is None:
        found = [tuple(row) for row in conn.execute(_STALE, {"sid": study_id})]
    else:
        found = [(trial_id, beat, now) for part in shapes.chunks(sorted(set(among)))
                 for trial_id, of_study, beat, now in conn.execute(_STALE_AMONG,
                                                                   {"ids": list(part)})
                 if of_study == study_id]
    grace = timedelta(seconds=grace_period)
    return sorted(int(trial_id) for trial_id, beat, now in found
                  if _naive(now) - _naive(beat) > grace)


def _naive(moment: Any) -> datetime:
    # PostgreSQL's now() is aware; RDBStorage drops the zone the same way. SQLite
    # answers CURRENT_TIMESTAMP as text.
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=None)


_STALE = (
    select(trials.c.trial_id, trial_heartbeats.c.heartbeat, func.now())
    .join(trial_heartbeats, trial_heartbeats.c.trial_id == trials.c.trial_id)
    .where(trials.c.study_id == bindparam("sid"), trials.c.state == literal_column("'RUNNING'"))
)
# The study is checked on the rows: in the WHERE, PostgreSQL without statistics
# intersects the ids with the whole study's entries of its index.
_STALE_AMONG = (
    select(trials.c.trial_id, trials.c.study_id, trial_heartbeats.c.heartbeat, func.now())
    .join(trial_heartbeats, trial_heartbeats.c.trial_id == trials.c.trial_id)
    .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)),
           trials.c.state == literal_column("'RUNNING'"))
)


def _upsert(dialect: str) -> Any:
    statement = _UPSERTS.get(dialect)
    if statement is None:
        statement = _UPSERTS[dialect] = _build_upsert(dialect)
    return statement


_UPSERTS: dict[str, Any] = {}


def _build_upsert(dialect: str) -> Any:
    existing = select(trials.c.trial_id, func.now()).where(
        trials.c.trial_id.in_(bindparam("ids", expanding=True))
    )
    columns = ["trial_id", "heartbeat"]
    if dialect == "mysql":
        stmt = mysql.insert(trial_heartbeats).from_select(columns, existing)
        return stmt.on_duplicate_key_update(heartbeat=func.now())
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(trial_heartbeats).from_select(columns, existing)
    return stmt.on_conflict_do_update(
        index_elements=["trial_id"], set_={"heartbeat": stmt.excluded.heartbeat}
    )
