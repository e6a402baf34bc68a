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
# (DecodeError is a ValueError, but says more). A database error reaches here only
# after the store retried it up to its deadline: the client may try again later.
_CODE_OF_ERROR: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (codec.DecodeError, grpc.StatusCode.INVALID_ARGUMENT, "malformed request"),
    (KeyError, grpc.StatusCode.NOT_FOUND, "not found"),
    (DuplicatedStudyError, grpc.StatusCode.ALREADY_EXISTS, "study name taken"),
    (UpdateFinishedTrialError, grpc.StatusCode.FAILED_PRECONDITION, "trial already finished"),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, "invalid value"),
    (sqlalchemy.exc.OperationalError, grpc.StatusCode.UNAVAILABLE, "database unavailable"),
)
# The errors a request may end with that are answers, not faults of the proxy.
ANSWERED_ERRORS = tuple(kind for kind, _, _ in _CODE_OF_ERROR)


def status_error(exc: Exception) -> StatusError:
    """The status that answers `exc`, one of ANSWERED_ERRORS."""
    for kind, code, summary in _CODE_OF_ERROR:
        if isinstance(exc, kind):
            if kind is sqlalchemy.exc.OperationalError:
                return StatusError(code, summary)  # the driver's text is for the log
            # str(KeyError("x")) is "'x'": take the message itself.
            text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            return StatusError(code, f"{summary}: {text}" if text else summary)
    raise AssertionError(f"no status for {exc!r}")
