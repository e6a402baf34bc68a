"""The exception the request path ends an RPC with, and the status each error gets.

Optuna's client turns status codes into exceptions (NOT_FOUND → KeyError,
ALREADY_EXISTS → DuplicatedStudyError, FAILED_PRECONDITION → UpdateFinishedTrialError,
INVALID_ARGUMENT → ValueError), so the proxy answers each error of its own with the
code that makes the client raise what RDBStorage would have raised.
"""

from __future__ import annotations

import grpc
import sqlalchemy.exc
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError

from shardproxy import codec


class StatusError(Exception):
    """Ends an RPC with `code` and `details`; nothing has been written when it is raised."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


# The client's mapping of codes to exceptions, read backwards; first match wins
# (DecodeError is a ValueError, but says more). An OperationalError reaches here
# only after the store retried it up to its deadline: the client may try again
# later. A DataError is the database refusing a value of the request (a string
# longer than its column, a step past the column's integer range); its transaction
# was rolled back (a group commit that fails so runs again one write per
# transaction), so the refused request has written nothing.
_CODE_OF_ERROR: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (codec.DecodeError, grpc.StatusCode.INVALID_ARGUMENT, "malformed request"),
    (KeyError, grpc.StatusCode.NOT_FOUND, "not found"),
    (DuplicatedStudyError, grpc.StatusCode.ALREADY_EXISTS, "study name taken"),
    (UpdateFinishedTrialError, grpc.StatusCode.FAILED_PRECONDITION, "trial already finished"),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, "invalid value"),
    (sqlalchemy.exc.DataError, grpc.StatusCode.INVALID_ARGUMENT, "value the database refuses"),
    (sqlalchemy.exc.OperationalError, grpc.StatusCode.UNAVAILABLE, "database unavailable"),
    # The pool's wait for a free connection ran out (`store.database.POOL_TIMEOUT`).
    (sqlalchemy.exc.TimeoutError, grpc.StatusCode.UNAVAILABLE, "no database connection free"),
)
# Status details travel in a trailer (gRPC clients refuse large ones by default):
# an error's text is cut to this many characters.
MAX_DETAILS = 500
# The errors a request may end with that are answers, not faults of the proxy.
ANSWERED_ERRORS = tuple(kind for kind, _, _ in _CODE_OF_ERROR)


def status_error(exc: Exception) -> StatusError:
    """The status that answers `exc`, one of ANSWERED_ERRORS."""
    for kind, code, summary in _CODE_OF_ERROR:
        if isinstance(exc, kind):
            if kind is sqlalchemy.exc.OperationalError:
                return StatusError(code, summary)  # the driver's text is for the log
            if isinstance(exc, sqlalchemy.exc.DBAPIError):
                # The driver's first line, without the statement and its parameters.
                text = str(exc.orig).strip().split("\n", 1)[0]
            elif isinstance(exc, KeyError) and exc.args:
                text = str(exc.args[0])  # str(KeyError("x")) is "'x'"
            else:
                text = str(exc)
            details = f"{summary}: {text}" if text else summary
            return StatusError(code, details[:MAX_DETAILS])
    raise AssertionError(f"no status for {exc!r}")
