"""Fresh, empty databases on the real servers, one per test.

Each test gets a database of its own (created here, dropped afterwards), so tests
never see each other's studies. A server that does not answer skips the test on a
developer's machine and fails it in CI (the `CI` variable is set), because a test
that silently skipped in CI would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

# "mariadb-mysqlclient": the MariaDB server through mysqlclient, the C driver that
# `mysql+mysqldb://` URLs use (`.ci/run` installs it).
BACKENDS = ("sqlite", "mariadb", "postgres", "mariadb-mysqlclient")

MARIADB_SERVER = os.environ.get("SHARDPROXY_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306")
POSTGRES_SERVER = os.environ.get(
    "SHARDPROXY_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432"
)


def _admin_url(backend: str) -> str:
    if backend.startswith("mariadb"):
        return f"{MARIADB_SERVER}/test"
    if backend == "postgres":
        return f"{POSTGRES_SERVER}/postgres"
    raise ValueError(backend)


def _with_driver(url: str, drivername: str) -> str:
    return sqlalchemy.engine.make_url(url).set(drivername=drivername).render_as_string(
        hide_password=False
    )


def _unavailable(backend: str, error: Exception, what: str = "server is not reachable") -> None:
    message = f"{backend} {what}: {error}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yields the URL of a new empty database on `backend`; drops it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    if backend == "mariadb-mysqlclient":
        try:
            import MySQLdb  # noqa: F401
        except ImportError as error:
            _unavailable(backend, error, "driver is not installed (pip install mysqlclient)")
    name = f"sp_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(
        _admin_url(backend), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    except sqlalchemy.exc.OperationalError as error:
        engine.dispose()
        _unavailable(backend, error)
    server = {
        "mariadb": MARIADB_SERVER,
        "mariadb-mysqlclient": _with_driver(MARIADB_SERVER, "mysql+mysqldb"),
        "postgres": POSTGRES_SERVER,
    }[backend]
    try:
        yield f"{server}/{name}"
    finally:
        with engine.connect() as conn:
            if backend == "postgres":
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()
