"""Starting and stopping the systems under test as subprocesses.

Every proxy runs as its own process group, started here and ended by its id:
SIGTERM first (shardproxy drains), SIGKILL for whatever of the group is left.
A system that cannot start (shardproxy not installed yet, a crash at start-up) is
reported as not available with the tail of its stderr; the run goes on without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from bench import counters
from shardproxy.child import STANDBY_PROCESS_NAME

PROXIES = ("shardproxy", "stock", "echo")
SYSTEMS = ("shardproxy", "stock", "direct", "echo")
HOST = "127.0.0.1"
READY_LIMIT = 60.0
STOP_LIMIT = 40.0


class Unavailable(Exception):
    """The system could not be started; the message says why."""


@dataclass(frozen=True)
class ProxyOptions:
    workers: int = 2  # shardproxy and echo processes
    threads: int | None = None  # gRPC handler threads per process (None: the default)
    cpus: tuple[int, ...] | None = None  # taskset pinning
    serve_flags: tuple[str, ...] = ()  # more `shardproxy serve` flags


# The most lines of a proxy's log a run keeps (the first ones: what went wrong first).
LOG_LINES_KEPT = 20


@dataclass
class RunningProxy:
    name: str
    port: int
    process: subprocess.Popen
    # What the proxy logged (shardproxy at WARNING and above), read once it stopped:
    # a worker killed by the watchdog, or a database error answered to a client,
    # shows here and not in the load's figures.
    log_lines: list[str] = field(default_factory=list)
    log_line_count: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def command(name: str, storage_url: str, port: int, options: ProxyOptions) -> list[str]:
    common = ["--host", HOST, "--port", str(port)]
    if name == "shardproxy":
        argv = [sys.executable, "-m", "shardproxy", "serve", "--storage", storage_url, *common,
                "--workers", str(options.workers), "--log-level", "WARNING",
                *options.serve_flags]
    elif name == "stock":
        argv = [sys.executable, "-m", "bench.references", "stock", "--storage", storage_url,
                *common]
    elif name == "echo":
        argv = [sys.executable, "-m", "bench.references", "echo", *common,
                "--workers", str(options.workers)]
    else:
        raise ValueError(f"{name} is not a proxy")
    if options.threads is not None and name != "stock":
        argv += ["--threads", str(options.threads)]
    if options.cpus:
        argv = ["taskset", "-c", ",".join(map(str, options.cpus)), *argv]
    return argv


def _wait_ready(proxy: RunningProxy, stderr_path: str) -> None:
    deadline = time.monotonic() + READY_LIMIT
    with grpc.insecure_channel(proxy.target) as channel:
        future = grpc.channel_ready_future(channel)
        while True:
            try:
                future.result(timeout=0.25)
                return
            except grpc.FutureTimeoutError:
                pass
            if proxy.process.poll() is not None:
                raise Unavailable(f"{proxy.name} exited with code {proxy.process.returncode}: "
                                  f"{_tail(stderr_path)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{proxy.name} not ready after {READY_LIMIT:.0f} s: "
                                  f"{_tail(stderr_path)}")


def _wait_settled(proxy: RunningProxy, workers: int, stderr_path: str) -> None:
    """Until every worker is named and the standby has prepared (it names itself then).

    A standby boots once all workers are ready; its import and connect CPU must not
    fall into the measured window.
    """
    deadline = time.monotonic() + READY_LIMIT
    while True:
        names = list(counters.tree_names(proxy.process.pid).values())
        named = sum(n.startswith("shardproxy-w") for n in names)
        if named == workers and STANDBY_PROCESS_NAME in names:
            return
        if proxy.process.poll() is not None or time.monotonic() > deadline:
            raise Unavailable(f"{proxy.name}: workers or standby did not come up: "
                              f"{sorted(names)} {_tail(stderr_path)}")
        time.sleep(0.05)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the proxy, then SIGKILL to its process group if anything is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_LIMIT)
        except subprocess.TimeoutExpired:
            pass
    group = process.pid  # started with start_new_session: the group id is its pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, 0)
        time.sleep(0.5)  # children of a clean exit may still be finishing
        os.killpg(group, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=5)


@contextlib.contextmanager
def running_proxy(name: str, storage_url: str, options: ProxyOptions) -> Iterator[RunningProxy]:
    """The proxy `name`, ready to serve; stopped on exit. Raises Unavailable."""
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log",
                                     delete=False) as stderr:
        stderr_path = stderr.name
        try:
            process = subprocess.Popen(command(name, storage_url, port, options),
                                       stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True)
        except OSError as exc:
            raise Unavailable(f"{name}: {exc}") from exc
    proxy = RunningProxy(name, port, process)
    try:
        _wait_ready(proxy, stderr_path)
        if name == "shardproxy" and options.workers > 1:
            _wait_settled(proxy, options.workers, stderr_path)
        yield proxy
    finally:
        stop(process)
        proxy.log_line_count, proxy.log_lines = _read_log(stderr_path)
        with contextlib.suppress(OSError):
            os.unlink(stderr_path)


def _read_log(path: str) -> tuple[int, list[str]]:
    """(lines in the log, the first LOG_LINES_KEPT of them)."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0, []
    return len(lines), lines[:LOG_LINES_KEPT]
