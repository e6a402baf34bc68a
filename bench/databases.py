"""Fresh databases for each system's run, trial counts, and fast pre-filling.

Each system runs on a database of its own, created empty and dropped afterwards,
on the same server: MariaDB and PostgreSQL by server URL (no database part), SQLite
as a file in a temporary directory.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy

SERVERS = {
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306",
    "postgres": "postgresql+psycopg2://postgres@127.0.0.1:5432",
    "sqlite": "",
}
_ADMIN_DATABASE = {"mariadb": "test", "postgres": "postgres"}
_CHUNK = 5_000


@dataclass(frozen=True)
class Database:
    backend: str
    url: str  # the run's own database
    admin_url: str  # a database on the same server that always exists ("" for SQLite)
    name: str


def backend_name(name: str) -> str:
    aliases = {"mysql": "mariadb", "postgresql": "postgres", "pg": "postgres"}
    name = aliases.get(name, name)
    if name not in SERVERS:
        raise ValueError(f"unknown database {name!r}: choose mariadb, postgres or sqlite")
    return name


@contextlib.contextmanager
def fresh_database(backend: str, server_url: str | None = None) -> Iterator[Database]:
    """An empty database, dropped on exit."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
            yield Database(backend, f"sqlite:///{folder}/optuna.db", "", "optuna")
        return
    server = (server_url or SERVERS[backend]).rstrip("/")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{server}/{_ADMIN_DATABASE[backend]}",
                                     isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        yield Database(backend, f"{server}/{name}", f"{server}/{_ADMIN_DATABASE[backend]}", name)
    finally:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError), admin.connect() as conn:
            force = " WITH (FORCE)" if backend == "postgres" else ""
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def count_complete_trials(url: str, study_ids: Sequence[int]) -> int:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(
                sqlalchemy.text("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE' "
                                "AND study_id IN :ids").bindparams(
                    sqlalchemy.bindparam("ids", expanding=True)),
                {"ids": list(study_ids)},
            ).scalar_one())
    finally:
        engine.dispose()


def create_studies(url: str, names: Sequence[str]) -> list[int]:
    """Studies (minimize) made with Optuna's own RDBStorage, which also lays out the schema."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        return [
            storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            for name in names
        ]
    finally:
        storage.engine.dispose()


def prefill(url: str, study_id: int, trials: int, param_names: Sequence[str]) -> int:
    """Adds `trials` COMPLETE trials to a study with bulk inserts; returns the last trial id.

    The rows are what RDBStorage writes for a finished trial of the seed workload:
    the trial, one `trial_params` row per parameter and one `trial_values` row.
    """
    from optuna.distributions import FloatDistribution, distribution_to_json
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    distribution = distribution_to_json(FloatDistribution(-10.0, 10.0))
    rng = random.Random(study_id)
    start = datetime(2025, 1, 1)
    finite = models.TrialValueModel.TrialValueType.FINITE
    try:
        with engine.begin() as conn:
            first_id = 1 + _max_id(conn, "trials", "trial_id")
            first_number = int(conn.execute(sqlalchemy.text(
                "SELECT COUNT(*) FROM trials WHERE study_id = :s"), {"s": study_id}).scalar_one())
            param_id = 1 + _max_id(conn, "trial_params", "param_id")
            value_id = 1 + _max_id(conn, "trial_values", "trial_value_id")
            for offset in range(0, trials, _CHUNK):
                ids = range(first_id + offset, first_id + min(trials, offset + _CHUNK))
                trial_rows, param_rows, value_rows = [], [], []
                for trial_id in ids:
                    when = start + timedelta(milliseconds=trial_id)
                    trial_rows.append({
                        "trial_id": trial_id, "number": first_number + trial_id - first_id,
                        "study_id": study_id, "state": TrialState.COMPLETE,
                        "datetime_start": when, "datetime_complete": when,
                    })
                    total = 0.0
                    for name in param_names:
                        x = rng.uniform(-10.0, 10.0)
                        total += x * x
                        param_rows.append({"param_id": param_id, "trial_id": trial_id,
                                           "param_name": name, "param_value": x,
                                           "distribution_json": distribution})
                        param_id += 1
                    value_rows.append({"trial_value_id": value_id, "trial_id": trial_id,
                                       "objective": 0, "value": total, "value_type": finite})
                    value_id += 1
                conn.execute(models.TrialModel.__table__.insert(), trial_rows)
                conn.execute(models.TrialParamModel.__table__.insert(), param_rows)
                conn.execute(models.TrialValueModel.__table__.insert(), value_rows)
            if engine.dialect.name == "postgresql":
                _advance_sequences(conn)
        return first_id + trials - 1
    finally:
        engine.dispose()


def _max_id(conn: sqlalchemy.Connection, table: str, column: str) -> int:
    return int(conn.execute(sqlalchemy.text(f"SELECT COALESCE(MAX({column}), 0) FROM {table}"))
               .scalar_one())


def _advance_sequences(conn: sqlalchemy.Connection) -> None:
    """Explicit ids do not move PostgreSQL's sequences; later inserts would collide."""
    for table, column in (("trials", "trial_id"), ("trial_params", "param_id"),
                          ("trial_values", "trial_value_id")):
        conn.execute(sqlalchemy.text(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"(SELECT MAX({column}) FROM {table}))"
        ))

