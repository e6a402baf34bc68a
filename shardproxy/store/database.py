"""Engines for the three backends, and the one-time schema check or creation."""

from __future__ import annotations

import importlib.util
import logging
import time

import sqlalchemy
from sqlalchemy.engine import URL, Engine, make_url

from shardproxy.store import schema

_logger = logging.getLogger(__name__)

UPGRADE_HINT = "run `optuna storage upgrade --storage URL` with the Optuna version in use"


class SchemaError(RuntimeError):
    """The database holds a schema this version cannot serve; nothing was changed."""


def driver_url(url: str) -> URL:
    """The URL with a driver this machine has: `mysql://` means PyMySQL without MySQLdb."""
    parsed = make_url(url)
    if parsed.drivername == "mysql" and importlib.util.find_spec("MySQLdb") is None:
        parsed = parsed.set(drivername="mysql+pymysql")
    return parsed


def make_engine(url: str, pool_size: int) -> Engine:
    parsed = driver_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # Writers in several processes take turns on the file lock: wait for it (the
        # store retries past this), and let readers run beside the writer (WAL).
        engine = sqlalchemy.create_engine(parsed, connect_args={"timeout": 30})

        @sqlalchemy.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sqlalchemy.create_engine(
        parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        pool_recycle=3600,
    )


def prepare_schema(url: str) -> None:
    """Creates Optuna's schema in an empty database, or checks an existing one.

    Creation goes through Optuna's own RDBStorage, so the result (tables, alembic
    revision, version_info row) is exactly what Optuna makes. An existing database
    is only read: an outdated or unknown schema raises SchemaError and stays as it is.
    """
    for attempt in range(3):
        engine = sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        if not tables:
            try:
                _create_with_optuna(url)
                return
            except Exception:
                # Another process may be creating the same schema right now.
                if attempt == 2:
                    raise
                time.sleep(0.5 + attempt)
                continue
        _check_existing(url, tables)
        return


def _create_with_optuna(url: str) -> None:
    from optuna.storages import RDBStorage

    storage = RDBStorage(str(driver_url(url).render_as_string(hide_password=False)))
    storage.engine.dispose()
    _logger.info("created Optuna's schema in %s", driver_url(url).render_as_string())


def _check_existing(url: str, tables: set[str]) -> None:
    missing = set(schema.metadata.tables) - tables
    if "alembic_version" not in tables or "version_info" not in tables:
        raise SchemaError(
            f"the database holds tables but no Optuna schema version ({sorted(tables)[:5]}...); "
            f"if it is an old Optuna database, {UPGRADE_HINT}"
        )
    from optuna.storages import RDBStorage

    try:
        storage = RDBStorage(
            str(driver_url(url).render_as_string(hide_password=False)), skip_table_creation=True
        )
    except RuntimeError as exc:
        raise SchemaError(f"{exc} ({UPGRADE_HINT})") from exc
    storage.engine.dispose()
    if missing:
        raise SchemaError(f"tables {sorted(missing)} are missing; {UPGRADE_HINT}")
