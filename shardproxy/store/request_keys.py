"""Writes applied at most once: the request keys of CreateNewTrial and SetTrialStateValues.

`shardproxy.client` names each trial creation and state change with a key of its
own (a UUID) and sends the same key again when it repeats a call whose outcome it
did not learn (the owner restarted between its COMMIT and its reply). The key and
the call's answer are written in the transaction that applies the call, so after
any restart the owner finds them: a repeat is answered from the row, never
applied again.

The keys live in a table of shardproxy's own, not among the trial's attributes:
those are the user's (Optuna shows them, and RetryHeartbeatStaleTrialCallback
copies a failed trial's system attributes to its retry, key and all). The table
is created the first time a keyed call arrives, so a database that only
unmodified clients use never gets it. It has no foreign key (RDBStorage deletes
trials without knowing of it). A repeat comes within the client's retry deadline
(a minute by default), so keys older than KEEP are deleted: by each store when it
first uses the table and every PRUNE_EVERY after, off the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta

import sqlalchemy.exc
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    select,
)
from sqlalchemy.engine import Connection, Engine

from shardproxy.store import shapes, sql
from shardproxy.store.pending import utc_now

_logger = logging.getLogger(__name__)

KEEP = timedelta(hours=6)
PRUNE_EVERY = 600.0  # seconds

_metadata = MetaData()
request_keys = Table(
    "shardproxy_request_keys",
    _metadata,
    Column("request_key", String(64), primary_key=True, autoincrement=False),
    # The trial the call created or changed, and its answer: CreateNewTrial's is the
    # trial id, SetTrialStateValues' 1 or 0.
    Column("trial_id", Integer, nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_shardproxy_request_keys_created_at", "created_at"),
)


def prepare(engine: Engine) -> None:
    """Creates the table if it is missing."""
    try:
        with engine.begin() as conn:
            _metadata.create_all(conn, checkfirst=True)
    except sqlalchemy.exc.DBAPIError:
        # Another worker created it at the same moment; it must be there now.
        with engine.connect() as conn:
            if not sqlalchemy.inspect(conn).has_table(request_keys.name):
                raise


def prune(engine: Engine) -> None:
    """Deletes the keys older than KEEP."""
    with engine.begin() as conn:
        pruned = conn.execute(
            delete(request_keys).where(request_keys.c.created_at < utc_now() - KEEP)
        ).rowcount
    if pruned:
        _logger.info("deleted %d request keys older than %s", pruned, KEEP)


def answers(conn: Connection, keys: Collection[str]) -> dict[str, int]:
    """The recorded answer of each key among `keys` that a committed call wrote."""
    found: dict[str, int] = {}
    for part in shapes.chunks(sorted(keys)):
        for key, outcome in conn.execute(_ANSWERS, {"keys": list(part)}):
            found[key] = int(outcome)
    return found


def record(conn: Connection, rows: list[tuple[str, int, int]]) -> None:
    """(key, trial id, answer) of each keyed call of a batch, in one multi-row INSERT."""
    now = utc_now()
    sql.insert_rows(conn, request_keys, [
        {"request_key": key, "trial_id": trial_id, "outcome": outcome, "created_at": now}
        for key, trial_id, outcome in rows
    ])


_ANSWERS = select(request_keys.c.request_key, request_keys.c.outcome).where(
    request_keys.c.request_key.in_(bindparam("keys", expanding=True))
)
