"""Start-up checks, once, before any worker starts: the address, then the database.

A start that fails for a reason the operator must fix (a host that does not
resolve, a port another process holds, a wrong database password, an unknown
database, an unreachable database server, a schema of another Optuna revision)
ends with one line naming the cause and the remedy, the database URL with its
password hidden, and an exit code of its own (`EXIT_CODES`, also listed by
`shardproxy serve --help`). Checked once here, it is said once, not by every
worker and standby; the driver's traceback is logged only at DEBUG.

The database check runs in a spawned process: it imports SQLAlchemy, the driver
and Optuna, which the supervisor keeps out of its own memory (and gRPC must never
be initialised in it). It opens the database as a worker would and prepares the
schema, creating it in an empty database, so the workers started after it find it
in place.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from shardproxy.child import EXIT_BOOT_FAILURE
from shardproxy.config import Config
from shardproxy.ports import BadHostError, PortInUseError, ensure_port_free, grpc_address
from shardproxy.urls import masked_url

if TYPE_CHECKING:  # the supervisor does not import SQLAlchemy (see above)
    from shardproxy.store.cluster import Topology

_logger = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ADDRESS = 4
EXIT_DATABASE_UNREACHABLE = 5
EXIT_DATABASE_REFUSED = 6
EXIT_SCHEMA = 7
EXIT_MULTI_PRIMARY = 8

EXIT_CODES = {
    0: "stopped on SIGTERM or SIGINT, after draining",
    EXIT_FAILURE: "an unexpected error (logged with its traceback)",
    EXIT_USAGE: "a bad flag or setting: a value out of range, a --host that does not "
    "resolve or is none of this machine's addresses, a --storage URL no installed "
    "driver reads",
    EXIT_BOOT_FAILURE: "a worker failed to start (its error is logged)",
    EXIT_ADDRESS: "the port is held by another process, or cannot be bound",
    EXIT_DATABASE_UNREACHABLE: "the database server does not answer (may be temporary)",
    EXIT_DATABASE_REFUSED: "the database refused the login, or does not exist",
    EXIT_SCHEMA: "the database holds Optuna's schema of another revision",
    EXIT_MULTI_PRIMARY: "the database is a multi-primary cluster on which trial numbering "
    "cannot be made safe (MySQL Group Replication): send every proxy's writes to one node "
    "and say so with --single-writer",
}

# MySQL/MariaDB error numbers (server and client) by what the operator must fix.
_MYSQL_LOGIN = {1044, 1045, 1130, 1251, 1698}
_MYSQL_UNKNOWN_DATABASE = {1049}
_MYSQL_UNREACHABLE = {2002, 2003, 2005, 2006, 2013, 2055}
# psycopg2 reports connection failures without an SQLSTATE: by their text.
_POSTGRES_LOGIN = ("password authentication failed", "no password supplied", 'role "',
                   "pg_hba.conf", "peer authentication failed", "ident authentication")
_POSTGRES_UNREACHABLE = ("could not connect", "connection refused", "could not translate",
                         "timeout expired", "no route to host", "network is unreachable",
                         "name or service not known", "server closed the connection")

_POSTGRES_PREFIX = re.compile(r'^connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: '
                              r"(?:FATAL: )?")


class StartupError(Exception):
    """A start that cannot go on: what to log, and the process's exit code."""

    def __init__(self, exit_code: int, message: str, cause: str, details: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.cause = cause  # a short name for log fields: "database-login", "port-in-use"
        self.details = details  # the traceback, for DEBUG

    def log(self, logger: logging.Logger) -> None:
        """One line; the traceback too at DEBUG, or always for an unexpected error."""
        logger.error(self.message, extra={"cause": self.cause, "exit_code": self.exit_code})
        if self.details and (self.exit_code == EXIT_FAILURE or logger.isEnabledFor(logging.DEBUG)):
            logger.error("%s", self.details.rstrip())


def check_address(host: str, port: int, option: str = "--port") -> None:
    """Raises StartupError unless `host` resolves to addresses here and `port` is free;
    `option` names the port's setting in the message."""
    try:
        ensure_port_free(host, port)
    except BadHostError as exc:
        raise StartupError(EXIT_USAGE, str(exc.strerror), "bad-host") from exc
    except PortInUseError as exc:
        raise StartupError(EXIT_ADDRESS, f"{option}: {exc.strerror}", "port-in-use") from exc
    except OSError as exc:
        raise StartupError(
            EXIT_ADDRESS,
            f"cannot listen on {grpc_address(host, port)}: {exc.strerror or exc}; choose "
            "another port (below 1024 only root may listen) or another --host",
            "address",
        ) from exc


def check_database(config: Config) -> None:
    """Opens the database once, in a spawned process; raises StartupError if it cannot serve."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            problem = pool.submit(database_problem, config).result()
    except BrokenProcessPool as exc:
        raise StartupError(
            EXIT_FAILURE, f"the database check's process died: {exc}", "check-died"
        ) from exc
    if problem is not None:
        raise StartupError(*problem)


def database_problem(config: Config) -> tuple[int, str, str, str] | None:
    """In the check's process: None, or (exit code, message, cause, traceback)."""
    from shardproxy.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    try:
        topology = _open_database(config.storage_url)
    except Exception as exc:
        details = traceback.format_exc()
        described = describe_database_error(exc, config.storage_url)
        if described is None:
            message = f"the database check failed: {type(exc).__name__}: {_one_line(str(exc))}"
            return EXIT_FAILURE, message, "unexpected", details
        return (*described, details)
    refused = multi_primary_problem(topology, config.single_writer, config.storage_url)
    if refused is not None:
        return (*refused, "")
    from shardproxy.store.cluster import log_topology

    uncertified = topology.multi_primary and not topology.certifies_numbering
    log_topology(topology, masked_url(config.storage_url),
                 logging.WARNING if uncertified else logging.INFO)
    if uncertified:
        _logger.warning("--single-writer: every proxy's writes are taken to reach one node")
    advice = driver_advice(config.storage_url)
    if advice is not None:
        _logger.info("%s", advice)
    return None


def driver_advice(url: str) -> str | None:
    """What to know about the URL's database driver, where a cheaper one exists."""
    import importlib.util

    from sqlalchemy.engine import make_url

    if make_url(url).get_driver_name() != "pymysql":
        return None
    # Measured on a 100 000-trial study's first read (bench/results/first-read-driver.md)
    # and on the store's CPU per trial (bench/results/store_cpu.md).
    where = ("it is installed" if importlib.util.find_spec("MySQLdb") is not None
             else "pip install 'shardproxy[mysqlclient]'")
    return ("database driver: PyMySQL, in pure Python, takes much of the proxy's CPU; "
            "mysql+mysqldb:// URLs take the C driver mysqlclient "
            f"({where}), which costs about three quarters of the store's CPU per trial "
            "and reads a large study in about half the time")


def multi_primary_problem(
    topology: Topology, single_writer: bool, url: str
) -> tuple[int, str, str] | None:
    """(exit code, message, cause) if the database is a multi-primary cluster whose
    trial numbering the store cannot make safe, and the operator has not said that
    one node takes every proxy's writes; else None.

    Galera is served (numbering is certified across nodes, see `store.cluster`);
    Group Replication in multi-primary mode certifies write sets too, but the store
    is not tested there.
    """
    if not topology.multi_primary or topology.certifies_numbering or single_writer:
        return None
    return (
        EXIT_MULTI_PRIMARY,
        f"{masked_url(url)} is a {topology.describe()}: every node accepts writes, and "
        "Optuna numbers a study's trials under a lock that only one node honours, so "
        "proxies writing through different nodes would store duplicate trial numbers; "
        "send every proxy's writes to one node (a single writer endpoint of MySQL "
        "Router, ProxySQL, MaxScale or HAProxy, or the cluster in single-primary mode) "
        "and start with --single-writer (SHARDPROXY_SINGLE_WRITER=1) to say so",
        "multi-primary",
    )


def _open_database(url: str) -> Topology:
    from shardproxy.store.bootstrap import prepare_schema
    from shardproxy.store.cluster import detect_engine
    from shardproxy.store.database import make_write_engine

    engine = make_write_engine(url, 1)
    try:
        # A refused login or an unknown database fails here, at once, rather than
        # after the schema preparation's retries.
        with engine.connect():
            pass
        prepare_schema(engine, masked_url(url))
        return detect_engine(engine)
    finally:
        engine.dispose()


def describe_database_error(exc: Exception, url: str) -> tuple[int, str, str] | None:
    """(exit code, one line naming cause and remedy, cause) for `exc`; None if unforeseen."""
    import sqlalchemy.exc

    from shardproxy.store import SchemaError

    shown = masked_url(url)
    if isinstance(exc, SchemaError):
        return EXIT_SCHEMA, _one_line(str(exc)), "schema"
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        orig = exc.orig if exc.orig is not None else exc  # the driver's own error
        kind = _kind(orig)
        said = _driver_message(orig)
        if kind == "login":
            return (EXIT_DATABASE_REFUSED, f"the database server refused the login for "
                    f"{shown} ({said}); check the user and password in --storage",
                    "database-login")
        if kind == "unknown-database":
            return (EXIT_DATABASE_REFUSED, f"the database named in {shown} does not exist "
                    f"({said}); create it, or correct its name in --storage",
                    "database-unknown")
        if kind == "unreachable":
            return (EXIT_DATABASE_UNREACHABLE, f"cannot reach the database server of "
                    f"{shown} ({said}); check that it runs and that --storage names its "
                    "host and port", "database-unreachable")
        if kind == "cannot-open":
            return (EXIT_DATABASE_REFUSED, f"cannot open the SQLite database {shown} "
                    f"({said}); check that its directory exists and is writable",
                    "database-unopenable")
        return (EXIT_DATABASE_REFUSED, f"the database {shown} failed the start-up check "
                f"({said})", "database")
    if isinstance(exc, (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError)):
        return (EXIT_USAGE, f"--storage {shown} is not a database URL this installation "
                f"understands ({_one_line(str(exc))}); give one such as "
                "mysql+pymysql://user@host:3306/optuna or postgresql+psycopg2://user@host/optuna",
                "storage-url")
    if isinstance(exc, ImportError):
        return (EXIT_USAGE, f"the database driver for {shown} is not installed "
                f"({_one_line(str(exc))}); install it (postgresql+psycopg2://: pip install "
                "'shardproxy[postgres]')", "driver-missing")
    if isinstance(exc, ValueError):
        return EXIT_USAGE, f"--storage {shown}: {_one_line(str(exc))}", "storage-url"
    return None


def _kind(orig: BaseException) -> str | None:
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL / MySQLdb: (number, message)
        number = args[0]
        if number in _MYSQL_LOGIN:
            return "login"
        if number in _MYSQL_UNKNOWN_DATABASE:
            return "unknown-database"
        if number in _MYSQL_UNREACHABLE:
            return "unreachable"
        return None
    text = str(orig).lower()
    if "unable to open database file" in text:  # SQLite
        return "cannot-open"
    # A login failure's text also says "connection to server ... failed": test it first.
    if any(marker in text for marker in _POSTGRES_LOGIN):
        return "login"
    if "database" in text and "does not exist" in text:
        return "unknown-database"
    if any(marker in text for marker in _POSTGRES_UNREACHABLE):
        return "unreachable"
    return None


def _driver_message(orig: BaseException) -> str:
    args: tuple[object, ...] = getattr(orig, "args", ())
    if len(args) > 1 and isinstance(args[0], int):  # (1045, "Access denied ...")
        return _one_line(str(args[1]))
    # psycopg2: 'connection to server at "h" (addr), port 5432 failed: FATAL:  why'.
    return _POSTGRES_PREFIX.sub("", _one_line(str(orig)))


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
