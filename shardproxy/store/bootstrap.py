"""Create Optuna's schema in an empty database, or check the one that is there.

On an empty database this does what `RDBStorage(url)` does on a fresh one: the
tables, the `version_info` row, and the alembic head revision in
`alembic_version`, so that Optuna accepts the database afterwards. An existing
database is only read: a schema at another revision is refused with what to run,
and nothing is changed.

Several processes may open the same fresh database at once (the server's workers
start together), so the check-and-create runs under a lock each backend offers:
a transaction-scoped advisory lock (PostgreSQL), a named lock (MySQL/MariaDB), or
the write lock of `BEGIN IMMEDIATE` (SQLite). One process creates; the others
then find the schema in place.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from collections.abc import Iterator

import sqlalchemy
from optuna.version import __version__ as optuna_version
from sqlalchemy import Connection, Engine, insert, select, text

from shardproxy.store import schema

_logger = logging.getLogger(__name__)

# Raised past this for a lock another process holds while it creates the schema.
LOCK_TIMEOUT_SECONDS = 60
# Attempts when a process without this lock (Optuna itself) creates the tables
# at the same moment and one of our CREATE statements collides with its.
ATTEMPTS = 5


class SchemaError(RuntimeError):
    """The database holds a schema this version cannot serve; nothing was changed."""


class _IncompleteSchema(SchemaError):
    """Optuna's tables without a revision: maybe Optuna is creating them right now."""


def prepare_schema(engine: Engine, url_for_messages: str) -> None:
    """Creates the schema in an empty database, or checks an existing one."""
    created = False
    for attempt in range(ATTEMPTS):
        try:
            with _schema_lock(engine) as conn:
                created = _create_or_check(conn, url_for_messages)
            break
        except (sqlalchemy.exc.DBAPIError, _IncompleteSchema):
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    if created:
        _logger.info("created Optuna's schema in %s", url_for_messages)
        if engine.dialect.name == "sqlite":
            _use_wal(engine)


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other store's schema check runs beside."""
    dialect = engine.dialect.name
    if dialect == "mysql":
        with engine.connect() as conn:
            name = f"shardproxy.schema.{conn.exec_driver_sql('SELECT DATABASE()').scalar()}"
            got = conn.execute(
                text("SELECT GET_LOCK(:name, :timeout)"),
                {"name": name, "timeout": LOCK_TIMEOUT_SECONDS},
            ).scalar()
            conn.commit()
            if got != 1:
                raise TimeoutError(f"another process holds the schema lock {name!r}")
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()
        return
    with engine.begin() as conn:
        if dialect == "postgresql":
            key = zlib.crc32(b"shardproxy.schema")
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        # SQLite: the engine began with BEGIN IMMEDIATE, which is the lock.
        yield conn


def _create_or_check(conn: Connection, url: str) -> bool:
    """True when the schema was created here; raises SchemaError if it cannot serve."""
    names = set(sqlalchemy.inspect(conn).get_table_names())
    optuna_tables = names & schema.OPTUNA_TABLE_NAMES
    if "alembic_version" in names:
        revision = conn.execute(select(schema.alembic_version.c.version_num)).scalar()
    else:
        revision = None
    if revision is None:
        if optuna_tables or "alembic_version" in names:
            raise _IncompleteSchema(
                f"the database at {url} holds Optuna tables without a schema revision; "
                f"run `optuna storage upgrade --storage {url}` to bring it up to date"
            )
        _create(conn)
        return True
    _check_revision(revision, url)
    missing = schema.OPTUNA_TABLE_NAMES - names
    if missing:
        raise SchemaError(f"the database at {url} lacks Optuna's tables {sorted(missing)}")
    return False


def _check_revision(revision: str, url: str) -> None:
    if revision == schema.HEAD_REVISION:
        return
    if revision in schema.KNOWN_REVISIONS:
        raise SchemaError(
            f"the database at {url} has Optuna's schema revision {revision}, older than "
            f"{schema.HEAD_REVISION}; run `optuna storage upgrade --storage {url}` first"
        )
    raise SchemaError(
        f"the database at {url} has the unknown schema revision {revision!r} (this "
        f"version serves {schema.HEAD_REVISION}); it may come from a newer Optuna: "
        "upgrade Optuna and shardproxy, or use a database of this Optuna version"
    )


def _create(conn: Connection) -> None:
    schema.metadata.create_all(conn)
    conn.execute(
        insert(schema.version_info).values(
            version_info_id=1,
            schema_version=schema.SCHEMA_VERSION,
            library_version=optuna_version,
        )
    )
    schema.alembic_metadata.create_all(conn)
    conn.execute(insert(schema.alembic_version).values(version_num=schema.HEAD_REVISION))


def _use_wal(engine: Engine) -> None:
    """WAL lets readers run beside a writer; set once, on a database created here."""
    try:
        with engine.connect() as conn:
            conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                "PRAGMA journal_mode=WAL"
            )
    except Exception as exc:  # another process holds the file: keep the default journal
        _logger.warning("could not switch the new SQLite database to WAL: %s", exc)
