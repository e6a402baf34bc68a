"""How every process of an instance logs: one format, to stderr, never a password.

Two formats (`--log-format`):

- `text`: one human line per record, `time pid LEVEL logger: message`.
- `json`: one JSON object per line, for log shippers: `time` (ISO 8601, local, with
  its offset), `level`, `process` (pid), `worker` (the shard index of a worker
  process; null in the supervisor and in a standby), `logger`, `message`, then any
  fields the record was given with `extra=` (such as `method`, `study`, `code`,
  `duration_ms`, `route` on an access line), and `exception` with a traceback.

Messages name databases with `urls.masked_url`; as a second line of defence each
formatted line is scrubbed of anything shaped like a URL's password
(`scheme://user:secret@host` → `scheme://user:***@host`).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

# `scheme://user:password@`: the password runs to the last '@' before the host, so
# that a raw '@' inside it is hidden too.
_URL_PASSWORD = re.compile(r"(://[^\s/:@\"']*:)[^\s\"']*@")
# A LogRecord's own attributes; everything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_HANDLER_NAME = "shardproxy"
_worker: int | None = None  # this process's shard index, once it serves one


def scrub(text: str) -> str:
    """`text` with any URL password replaced by `***`."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(r"\1***@", text)


def set_worker(index: int) -> None:
    """Names this process's shard in the JSON `worker` field of its records."""
    global _worker
    _worker = index


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.process,
            "worker": _worker,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str, log_format: str = "text") -> None:
    """Sets up this process's logging (a spawned worker starts without its parent's)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Called again in one process (a check, then serving): replace our handler, and
    # leave any other (a test runner's capture) alone.
    for previous in list(root.handlers):
        if previous.get_name() == _HANDLER_NAME:
            root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level.upper())
