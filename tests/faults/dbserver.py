"""Stopping and starting this machine's MariaDB and PostgreSQL servers, for outage tests.

`outage` stops a server, keeps it down for a while and starts it again, always:
the start runs in a `finally`, and returns only once the server answers, so a
failing test leaves the server as it found it. These servers are shared with
every other test run on the machine: keep outages short.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UP_TIMEOUT = 120.0


def _postgres_cluster() -> list[str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def answers(backend: str) -> bool:
    if backend == "mariadb":
        command = ["mysqladmin", "-uroot", "-h127.0.0.1", "--connect-timeout=2", "ping"]
    else:
        command = ["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "2"]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


# The pid file in /etc/mysql/my.cnf. start-stop-daemon must be given it: by its
# executable alone it would take any other mariadbd on the machine (a test's own
# cluster, say) for this server and start nothing.
MARIADB_PID_FILE = "/run/mysqld/mysqld.pid"
MARIADB_DAEMON = ["start-stop-daemon", "--pidfile", MARIADB_PID_FILE, "--exec",
                  "/usr/sbin/mariadbd"]


def _mariadb_runs() -> bool:
    return subprocess.run([*MARIADB_DAEMON, "--status"], capture_output=True).returncode == 0


def stop(backend: str) -> None:
    """Stops the server; returns once its process has exited."""
    if backend == "mariadb":
        shutdown = subprocess.run(["mysqladmin", "-uroot", "-h127.0.0.1", "shutdown"],
                                  capture_output=True, text=True, timeout=120)
        # Refused only if it still answers; otherwise it was stopping or down already
        # (these servers are shared), and is waited for as usual.
        if shutdown.returncode and answers(backend):
            raise RuntimeError(f"mysqladmin shutdown failed: {shutdown.stderr.strip()}")
        deadline = time.monotonic() + UP_TIMEOUT
        while _mariadb_runs():
            if time.monotonic() > deadline:
                raise RuntimeError("mariadb did not exit")
            time.sleep(0.05)
    else:
        subprocess.run([*_postgres_cluster(), "stop", "--", "-m", "fast"],
                       capture_output=True, timeout=120, check=True)


def start(backend: str) -> None:
    """Starts the server unless it runs, and waits until it answers."""
    deadline = time.monotonic() + UP_TIMEOUT
    while not answers(backend):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{backend} did not come back within {UP_TIMEOUT} s")
        if backend == "mariadb":
            if not _mariadb_runs():
                subprocess.run([*MARIADB_DAEMON, "--start", "--oknodo", "--background"],
                               capture_output=True, timeout=120)
        else:
            # Refuses (and changes nothing) while the cluster runs.
            subprocess.run([*_postgres_cluster(), "start"], capture_output=True, timeout=120)
        time.sleep(0.2)


@dataclass
class Outage:
    """When the server stopped answering and when it answered again (monotonic)."""

    down_at: float = 0.0
    up_at: float = 0.0

    @property
    def seconds(self) -> float:
        return self.up_at - self.down_at


@contextlib.contextmanager
def server_down(backend: str) -> Iterator[Outage]:
    """The server stopped inside the block, started (and answering) after it."""
    outage = Outage()
    try:
        outage.down_at = time.monotonic()
        stop(backend)
        yield outage
    finally:
        start(backend)
        outage.up_at = time.monotonic()


def outage(backend: str, seconds: float) -> Outage:
    """Stops the server for about `seconds` (its shutdown and restart included)."""
    with server_down(backend) as down:
        remaining = seconds - (time.monotonic() - down.down_at)
        if remaining > 0:
            time.sleep(remaining)
    return down
