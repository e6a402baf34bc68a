"""`shardproxy serve` in a subprocess, as production runs it, for tests of the whole server.

`serve` starts the supervisor and returns once a worker answers and every worker
process is up. The server's log (stderr) is kept in a file: `server_log(process)`
reads it, and when the block fails its last lines are printed, so that pytest
shows what the server said beside the assertion.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO
from urllib.error import HTTPError
from urllib.request import urlopen

from shardproxy.child import STANDBY_PROCESS_NAME
from tests.procfs import child_names
from tests.proxies import free_port, proxy_client

LOG_LINES_ON_FAILURE = 80

_logs: dict[int, IO[str]] = {}


def children_by_name(pid: int) -> dict[str, int]:
    """The supervisor's worker processes, by their name (`shardproxy-wN`)."""
    return {name: child for child, name in child_names(pid).items()
            if name.startswith("shardproxy-w")}


def standby_prepared(pid: int) -> bool:
    """Whether the supervisor `pid` has a standby ready (it names itself then)."""
    return STANDBY_PROCESS_NAME in child_names(pid).values()


def wait_until(condition, timeout: float, interval: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def server_log(process: subprocess.Popen) -> str:
    """What the server `serve` started has written to stderr so far."""
    log = _logs[process.pid]
    log.flush()
    log.seek(0)
    return log.read()


@contextlib.contextmanager
def serve(
    url: str, workers: int, port: int | None = None, options: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen, int]]:
    """`shardproxy serve` in a subprocess, once every worker answers; `options` added."""
    port = port or free_port()
    command = [sys.executable, "-m", "shardproxy", "serve", "--storage", url, "--host",
               "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--drain-timeout", "20", "--log-level", "WARNING", *options]
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stderr=log, text=True)
    _logs[process.pid] = log
    try:
        with proxy_client(port) as client:
            client.get_all_studies()
        if workers > 1:
            names = wait_until(lambda: len(children_by_name(process.pid)) == workers, 30)
            assert names, "not every worker came up"
        yield process, port
    except BaseException:
        lines = server_log(process).splitlines()[-LOG_LINES_ON_FAILURE:]
        print("--- the server's log, last lines ---", *lines, sep="\n")
        raise
    finally:
        stop_process(process, 60)
        del _logs[process.pid]
        log.close()


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, and SIGKILL if the process has not exited `timeout` seconds later."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def http_get(port: int, path: str, timeout: float = 60.0) -> tuple[int, str]:
    """(status, body) of GET `path` on 127.0.0.1:`port` (an admin endpoint), errors too."""
    try:
        with urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()
