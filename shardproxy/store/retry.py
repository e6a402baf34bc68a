"""Which database errors are worth retrying, and the backoff between attempts."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc

_logger = logging.getLogger(__name__)

T = TypeVar("T")

# MySQL/MariaDB: deadlock (also a Galera certification conflict), lock wait timeout,
# server gone, lost connection, cannot connect, connection killed, server shutting
# down, read-only during failover, client idle too long, a Galera node out of the
# cluster's primary component (until it rejoins).
_MYSQL_TRANSIENT = {1213, 1205, 2006, 2013, 2003, 1927, 1053, 1290, 4031, 1047}
# PostgreSQL SQLSTATEs: serialization failure, deadlock, and classes 08 (connection)
# and 57P (operator intervention: admin shutdown, crash shutdown, cannot connect now).
_POSTGRES_TRANSIENT = ("40001", "40P01", "08", "57P")
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy")


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same transaction may well succeed."""
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    original = exc.orig
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL / MySQLdb: (code, message)
        return args[0] in _MYSQL_TRANSIENT
    code = getattr(original, "pgcode", None)
    if isinstance(code, str):
        return code.startswith(_POSTGRES_TRANSIENT)
    message = str(original).lower()
    if any(text in message for text in _SQLITE_TRANSIENT):
        return True
    # psycopg2 reports a dropped or refused connection without a SQLSTATE.
    return isinstance(exc, sqlalchemy.exc.InterfaceError) or (
        isinstance(exc, sqlalchemy.exc.OperationalError)
        and ("server closed the connection" in message or "connection" in message)
    )


class Backoff:
    """Exponential backoff with jitter, until a deadline."""

    def __init__(self, deadline_seconds: float) -> None:
        self._give_up = time.monotonic() + deadline_seconds
        self._delay = 0.01

    def wait(self) -> bool:
        """Sleeps before the next attempt; False when the deadline leaves no time for one."""
        delay = self._delay * (0.5 + random.random())
        if time.monotonic() + delay > self._give_up:
            return False
        time.sleep(delay)
        self._delay = min(self._delay * 2, 1.0)
        return True


# Called with the error before each new attempt, once the backoff has waited.
OnRetry = Callable[[sqlalchemy.exc.DBAPIError], None]

# Told of every transient error `with_retries` meets, and whether it tries again
# (False: the deadline leaves no time): the worker's metrics set it.
transient_observer: Callable[[bool], None] | None = None


def with_retries(
    attempt: Callable[[], T],
    deadline_seconds: float,
    what: str | None = None,
    *,
    on_retry: OnRetry | None = None,
) -> T:
    """Runs `attempt` until it succeeds, fails for good, or the deadline passes.

    Each attempt must be a whole transaction that leaves nothing behind when it
    fails, so that running it again cannot apply anything twice. Before each new
    attempt a warning names `what` and the error; a caller that says it its own way
    passes `on_retry` instead, and one that passes neither retries silently.
    """
    backoff = Backoff(deadline_seconds)
    while True:
        try:
            return attempt()
        except sqlalchemy.exc.DBAPIError as exc:
            if not is_transient(exc):
                raise
            retrying = backoff.wait()
            if transient_observer is not None:
                transient_observer(retrying)
            if not retrying:
                raise
            if what is not None:
                _logger.warning("%s: transient database error, retrying: %s", what, exc.orig)
            if on_retry is not None:
                on_retry(exc)


def with_retries_until_settled(
    attempt: Callable[[], T],
    deadline_seconds: float,
    unsettled: Callable[[], bool],
    waiting: str,
    what: str | None = None,
    *,
    on_retry: OnRetry | None = None,
) -> T:
    """`with_retries`, begun again whenever its deadline passes while `unsettled()`.

    For a write whose earlier attempt may have been applied (a COMMIT, or an
    autocommitted statement, whose reply was lost): failing it would tell the
    caller nothing was written, so it waits for the database to answer. `waiting`
    names the write in the warning logged each time the deadline passes.
    """
    while True:
        try:
            return with_retries(attempt, deadline_seconds, what, on_retry=on_retry)
        except sqlalchemy.exc.DBAPIError as exc:
            if not (is_transient(exc) and unsettled()):
                raise
            _logger.warning("%s: it may have been applied; waiting for the database past "
                            "the retry deadline to know", waiting)
