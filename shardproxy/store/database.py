"""Engines for the three backends: one autocommit pool for reads, one for writes.

Reads are single statements, so they run in autocommit mode and never send a
ROLLBACK: neither when SQLAlchemy closes the connection's implicit transaction
(`skip_autocommit_rollback`) nor when the pool takes the connection back. Either
would be a statement the database counts for nothing, one per read.

Writes run in explicit transactions with what each backend needs for the store's
locking to hold:

- MySQL/MariaDB: READ COMMITTED, so that a count taken after a `FOR UPDATE` lock
  sees every trial committed before the lock was granted.
- PostgreSQL: its default, READ COMMITTED.
- SQLite: `BEGIN IMMEDIATE`, so that a write transaction holds the file's write
  lock from its first statement: SQLite has no `FOR UPDATE`, and a deferred
  transaction would read before it locks. Processes wait for each other through
  the busy timeout, and the store retries "database is locked" past it.

On PostgreSQL every connection of both pools also turns JIT compilation off
(`_without_jit`).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL, Connection, Engine, make_url

# How long a SQLite connection waits for another process's write lock before
# reporting "database is locked" (which the store then retries).
SQLITE_BUSY_TIMEOUT = 10.0
# Reconnect before MySQL's wait_timeout (8 h by default) closes an idle connection.
POOL_RECYCLE = 3600
# Seconds a read or write waits for one of its pool's connections before it is
# answered UNAVAILABLE. Statements are short: a wait this long means the database
# has stopped answering the ones holding the connections.
POOL_TIMEOUT = 30.0


def driver_url(url: str) -> URL:
    """The URL with a driver this machine has: `mysql://` means PyMySQL without MySQLdb."""
    parsed = make_url(url)
    if parsed.drivername == "mysql" and importlib.util.find_spec("MySQLdb") is None:
        parsed = parsed.set(drivername="mysql+pymysql")
    return parsed


def make_read_engine(url: str, pool_size: int) -> Engine:
    parsed = driver_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, immediate=False)
    return _without_jit(sqlalchemy.create_engine(
        parsed,
        isolation_level="AUTOCOMMIT",
        skip_autocommit_rollback=True,
        pool_reset_on_return=None,
        **_pool_options(pool_size),
    ))


@contextlib.contextmanager
def cursor_scope(conn: Connection) -> Iterator[None]:
    """Where a server-side cursor may live on a reader's connection (autocommit).

    PostgreSQL's named cursors live only in a transaction: there this opens one
    (READ COMMITTED: the cursor's statement sees one snapshot) and ends it
    afterwards, and the connection goes back to its pool in autocommit.
    Elsewhere the statement runs as it would without a cursor of its own.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execution_options(isolation_level="READ COMMITTED")
    with conn.begin():
        yield


def make_write_engine(url: str, pool_size: int) -> Engine:
    parsed = driver_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, immediate=True)
    # One more than asked: the group committer keeps one connection for itself.
    options: dict[str, Any] = _pool_options(pool_size + 1)
    if backend == "mysql":
        options["isolation_level"] = "READ COMMITTED"
    return _without_jit(sqlalchemy.create_engine(parsed, **options))


# Where the server has no `jit` setting (before PostgreSQL 11) this sets nothing.
_JIT_OFF = ("SELECT set_config('jit', 'off', false) "
            "WHERE current_setting('jit', true) IS NOT NULL")


def _without_jit(engine: Engine) -> Engine:
    """The engine, whose PostgreSQL connections never compile a statement to machine code.

    PostgreSQL JIT-compiles a statement whose estimated cost passes `jit_above_cost`
    (on by default since PostgreSQL 12), and the compiling is paid on every run:
    statements are planned each time. The store's statements are lookups by index
    that return few rows, but their estimates grow with the tables where the
    statistics are missing or stale (autovacuum gathers them again only after a
    tenth of a table changed): a delta sync of 8 trials on a never-analyzed table
    of 100 000 trials took 16 ms with JIT against 0.8 ms without, 193 ms against
    0.9 ms at 200 000 (`bench/results/jit.md`). A study's first read, the one
    large statement, took as long either way there."""
    if engine.dialect.name != "postgresql":
        return engine

    @sqlalchemy.event.listens_for(engine, "connect")
    def _jit_off(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(_JIT_OFF)
        cursor.close()
        # A session setting outlives the transaction that set it: end that
        # transaction, so the connection is handed out as the pool expects it.
        dbapi_connection.commit()

    return engine


def _pool_options(pool_size: int) -> dict[str, Any]:
    # No pre-ping: a connection the server dropped fails its first statement, which
    # invalidates the pool and is retried like any transient error, without a ping
    # before every checkout.
    # No overflow: a pool closes an overflow connection as soon as it is handed back,
    # so a burst past `pool_size` would connect and disconnect once per statement
    # (with PyMySQL that builds an SSL context each time: with 50 busy studies a
    # third of a worker's time). Past `pool_size`, statements wait for a connection.
    return {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": POOL_TIMEOUT,
            "pool_recycle": POOL_RECYCLE}


def _sqlite_engine(url: URL, immediate: bool) -> Engine:
    if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
        raise ValueError(
            "an in-memory SQLite database cannot be shared by the store's connections "
            "and processes; give a database file"
        )
    connect_args: dict[str, Any] = {"check_same_thread": False}
    if "timeout" not in url.query:  # a URL's own ?timeout= wins
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
    engine = sqlalchemy.create_engine(
        url,
        connect_args=connect_args,
        pool_reset_on_return=None if not immediate else "rollback",
    )

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly below (or not at all, for reads).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if immediate:

        @sqlalchemy.event.listens_for(engine, "begin")
        def _on_begin(conn: sqlalchemy.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
