"""A start that fails for the operator's reasons says so in one line, once, with its exit code.

`shardproxy serve` runs as a subprocess, with two workers and a standby (each of
which once printed its own traceback), against the real MariaDB and PostgreSQL
servers: a wrong password, an unknown role, an unknown database, an unreachable
server, a schema of another Optuna revision, a port held by another process, a
host that does not resolve. Each case checks the exit code `serve --help` lists,
the one line (naming the cause, the remedy and the URL with its password hidden),
and that no traceback appears unless the log level is DEBUG.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from optuna.storages import RDBStorage

from shardproxy.config import Config
from shardproxy.startup import (
    EXIT_ADDRESS,
    EXIT_CODES,
    EXIT_DATABASE_REFUSED,
    EXIT_DATABASE_UNREACHABLE,
    EXIT_SCHEMA,
    EXIT_USAGE,
    check_database,
    driver_advice,
)
from tests.databases import MARIADB_SERVER, POSTGRES_SERVER
from tests.proxies import free_port

BOUND = 120.0  # every run here ends; none of them is a speed claim
SECRET = "Sekr1t-pw"


def serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardproxy", "serve", "--host", "127.0.0.1",
         "--port", str(free_port()), "--workers", "2", "--standbys", "1", *flags],
        capture_output=True, text=True, timeout=BOUND,
    )


def refused_start(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Checks the failed start's output; returns its one line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert 1 <= len(lines) <= 2, result.stderr  # one or two lines, said once
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert SECRET not in result.stderr + result.stdout
    return errors[0]


def without_password(url: str) -> str:
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def with_login(url: str, user: str, password: str) -> str:
    parsed = sqlalchemy.engine.make_url(url).set(username=user, password=password)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def mariadb_user(mariadb_url: str) -> Iterator[str]:
    """A MariaDB user with the password SECRET on the fresh database; its name."""
    user = f"sp_{uuid.uuid4().hex[:8]}"
    database = sqlalchemy.engine.make_url(mariadb_url).database
    engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{SECRET}'")
        conn.exec_driver_sql(f"GRANT ALL ON {database}.* TO '{user}'@'127.0.0.1'")
    try:
        yield user
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP USER '{user}'@'127.0.0.1'")
        engine.dispose()


def test_the_exit_codes_are_listed_in_serve_help() -> None:
    result = subprocess.run([sys.executable, "-m", "shardproxy", "serve", "--help"],
                            capture_output=True, text=True, timeout=BOUND, check=True)
    epilog = result.stdout.partition("exit codes:")[2]
    for code in EXIT_CODES:
        assert f"\n  {code}  " in epilog


def test_a_wrong_password(mariadb_url: str, mariadb_user: str) -> None:
    url = with_login(mariadb_url, mariadb_user, "wrong-" + SECRET)
    result = serve("--storage", url)
    refused_start(result, EXIT_DATABASE_REFUSED, "refused the login",
                  "check the user and password", without_password(url))
    # With its own password the same user passes the same check (in a process of its
    # own, as `serve` runs it).
    check_database(Config(storage_url=with_login(mariadb_url, mariadb_user, SECRET)))


def test_a_wrong_password_shows_its_traceback_at_debug(
    mariadb_url: str, mariadb_user: str
) -> None:
    url = with_login(mariadb_url, mariadb_user, "wrong-" + SECRET)
    result = serve("--storage", url, "--log-level", "DEBUG")
    assert result.returncode == EXIT_DATABASE_REFUSED
    assert "Traceback" in result.stderr and "OperationalError" in result.stderr
    assert SECRET not in result.stderr


def test_an_unknown_postgres_role() -> None:
    url = with_login(f"{POSTGRES_SERVER}/postgres", f"nobody_{uuid.uuid4().hex[:6]}", SECRET)
    refused_start(serve("--storage", url), EXIT_DATABASE_REFUSED, "refused the login",
                  "does not exist", ":***@")


@pytest.mark.parametrize("server", [MARIADB_SERVER, POSTGRES_SERVER], ids=["mariadb", "postgres"])
def test_an_unknown_database(server: str) -> None:
    name = f"sp_missing_{uuid.uuid4().hex[:8]}"
    line = refused_start(serve("--storage", f"{server}/{name}"), EXIT_DATABASE_REFUSED,
                         "does not exist", "create it", name)
    assert f"{server}/{name}" in line


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg2"])
def test_an_unreachable_database_server(scheme: str) -> None:
    url = f"{scheme}://someone:{SECRET}@127.0.0.1:1/optuna"
    refused_start(serve("--storage", url), EXIT_DATABASE_UNREACHABLE, "cannot reach",
                  "check that it runs", f"{scheme}://someone:***@127.0.0.1:1/optuna")


@pytest.mark.parametrize(
    ("revision", "remedy"),
    [("v3.0.0.a", "optuna storage upgrade"), ("v9.9.9.z", "newer Optuna")],
    ids=["older", "unknown"],
)
def test_a_schema_of_another_optuna_revision(mariadb_url: str, revision: str, remedy: str) -> None:
    storage = RDBStorage(mariadb_url)  # Optuna's own schema, at its head revision
    storage.engine.dispose()
    engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :r"),
                     {"r": revision})
    engine.dispose()
    refused_start(serve("--storage", mariadb_url), EXIT_SCHEMA, revision, remedy)


def test_a_port_held_by_another_process(sqlite_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        refused_start(serve("--storage", sqlite_url, "--port", port), EXIT_ADDRESS,
                      f"127.0.0.1:{port} is already in use", "choose another port")


def test_an_insecure_port_held_by_another_process(sqlite_url: str, tmp_path: Path) -> None:
    # Read before the start, parsed only by the workers, which never start here.
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_text("not parsed before the ports are checked\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        refused_start(serve("--storage", sqlite_url, "--tls-cert", str(tmp_path / "server.pem"),
                            "--tls-key", str(tmp_path / "server.key"),
                            "--insecure-port", port),
                      EXIT_ADDRESS, f"--insecure-port: 127.0.0.1:{port} is already in use")


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])
def test_a_bad_host(sqlite_url: str, host: str) -> None:
    # 192.0.2.1 resolves (TEST-NET-1) but is no address of this machine.
    result = serve("--storage", sqlite_url, "--host", host)
    refused_start(result, EXIT_USAGE, f"--host {host}", "give")


def test_a_start_up_error_in_json_is_one_object_without_the_password() -> None:
    url = f"mysql+pymysql://someone:{SECRET}@127.0.0.1:1/optuna"
    result = serve("--storage", url, "--log-format", "json")
    assert result.returncode == EXIT_DATABASE_UNREACHABLE
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["worker"] is None
    assert entry["cause"] == "database-unreachable" and entry["exit_code"] == 5
    assert "mysql+pymysql://someone:***@127.0.0.1:1/optuna" in entry["message"]
    assert SECRET not in result.stderr


def test_a_pymysql_url_is_told_of_the_c_driver_and_no_other_is() -> None:
    advice = driver_advice("mysql+pymysql://root@127.0.0.1:3306/test")
    assert advice is not None and "mysql+mysqldb://" in advice and "PyMySQL" in advice
    for url in ("mysql+mysqldb://root@127.0.0.1:3306/test", "mysql://root@127.0.0.1/test",
                "postgresql+psycopg2://postgres@127.0.0.1:5432/test", "sqlite:///optuna.db"):
        assert driver_advice(url) is None, url
