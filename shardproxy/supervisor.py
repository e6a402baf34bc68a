"""Starts the worker processes, watches them, restarts the fallen, drains them on exit.

The supervisor holds no listener: it checks that nothing else holds the port, then
each worker binds it with SO_REUSEPORT and the kernel spreads the connections.
Workers are started with the `spawn` method, so no gRPC (or database) state ever
crosses a fork; this module imports neither.

Main loop (after gunicorn's arbiter and uvicorn's multiprocess supervisor): signal
handlers only queue the signal and wake the loop; each pass dispatches queued
signals to `handle_<name>`, reaps dead workers and restarts them with the same
shard index, notes readiness, and kills workers whose heartbeat went stale. A
worker that fails before it reported ready exits with `EXIT_BOOT_FAILURE`, and the
supervisor then stops everything instead of restarting it forever.

Standbys: a spawned interpreter spends most of a second importing and connecting
before it can serve. Every process first runs `prepare()` (the work that does not
depend on the shard: imports, opening the database) and keeps its result in
`spec.prepared`. Once all workers are ready the supervisor keeps `standbys` extra
processes that have prepared and wait for a shard index; a fallen worker is
replaced by a standby (and a new standby is spawned behind it), so a restart costs
only the worker's shard-specific set-up. The idea is the spare servers of Apache's
prefork and PHP-FPM; there is still no fork.

A worker is `target(spec)` called in the child's main thread with a `WorkerSpec`,
after `prepare()`.
It calls `spec.notify_ready()` once it serves, `spec.heartbeat()` every
`spec.heartbeat_interval` seconds from whatever proves it healthy, and returns once
it has drained after SIGTERM: either through `spec.wait_for_stop()`, or through a
SIGTERM handler of its own. The target must be picklable (a module-level function,
or a `functools.partial` of one), and so must `prepare`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from types import FrameType
from typing import Any

_logger = logging.getLogger(__name__)

EXIT_BOOT_FAILURE = 3  # a worker failed before it was ready (gunicorn's WORKER_BOOT_ERROR)

_BOOT_POLL = 0.05  # readiness lives in shared memory and is polled while workers boot
_STEADY_POLL = 0.5
_PARENT_CHECK_INTERVAL = 1.0
# A standby that died unused is replaced only after this pause: one that cannot even
# import must not be respawned in a hot loop (meanwhile a restart starts cold).
_STANDBY_RETRY_PAUSE = 5.0
# A standby's name in ps/top once it has prepared, until it is given a shard.
STANDBY_PROCESS_NAME = "shardproxy-idle"


# -- the port ----------------------------------------------------------------------


class PortInUseError(OSError):
    """Another process holds the port the workers are to share."""


def ensure_port_free(host: str, port: int) -> int:
    """Checks that nothing listens on `host:port`; returns the port (a free one if 0).

    Binds a plain socket to every address of `host` without SO_REUSEPORT and closes
    it. With SO_REUSEPORT the workers' own bind would succeed next to a stale or
    foreign server and the kernel would silently share the traffic with it. (The
    port can still be taken between this check and the workers' bind.)
    """
    addresses = _addresses(host, port)
    for _ in range(100):  # port 0: the port picked on one address may be taken on another
        chosen = port
        try:
            for family, address in addresses:
                chosen = _probe(family, (address[0], chosen, *address[2:])) or chosen
        except PortInUseError:
            if port == 0:
                continue
            raise PortInUseError(
                errno.EADDRINUSE,
                f"{host}:{port} is already in use by another process; stop it or choose "
                "another port (shardproxy shares a port only among its own workers)",
            ) from None
        if chosen == 0:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {host!r} can be bound here")
        return chosen
    raise PortInUseError(errno.EADDRINUSE, f"found no port free on every address of {host}")


def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    infos = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    addresses: list[tuple[int, tuple[Any, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in addresses:
            addresses.append((family, address))
    return addresses


def _probe(family: int, address: tuple[Any, ...]) -> int:
    """Binds and releases `address`; returns its port, 0 for an address unusable here."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as gRPC sets it: TIME_WAIT leftovers of our own previous run
        # must not count as "in use", a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(errno.EADDRINUSE, str(exc)) from None
            if exc.errno == errno.EADDRNOTAVAIL:  # e.g. ::1 on a host without IPv6
                return 0
            raise
        return int(probe.getsockname()[1])


# -- what a worker is given ------------------------------------------------------------


class WorkerStatus:
    """Per shard, in shared memory: ready or not, and the last heartbeat (monotonic)."""

    def __init__(self, context: SpawnContext, count: int) -> None:
        self._ready = context.RawArray("b", count)
        self._beats = context.RawArray("d", count)

    def reset(self, shard: int) -> None:
        self._ready[shard] = 0
        self._beats[shard] = time.monotonic()

    def mark_ready(self, shard: int) -> None:
        self.beat(shard)
        self._ready[shard] = 1

    def beat(self, shard: int) -> None:
        # CLOCK_MONOTONIC is one clock for all processes of the machine.
        self._beats[shard] = time.monotonic()

    def is_ready(self, shard: int) -> bool:
        return bool(self._ready[shard])

    def last_beat(self, shard: int) -> float:
        return float(self._beats[shard])


class _StopFlag:
    """Set from a signal handler, awaited from any thread.

    A pipe rather than a threading.Event: Event.set takes a lock, and a handler
    that interrupted its own thread inside Event.wait would deadlock on it.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            os.write(self._write, b"\0")

    def fileno(self) -> int:
        """Readable once set."""
        return self._read

    def wait(self, timeout: float | None) -> bool:
        poll = select.poll()
        poll.register(self._read, select.POLLIN)
        return bool(poll.poll(None if timeout is None else timeout * 1000.0))


@dataclass
class WorkerSpec:
    """Everything one worker process is told; picklable while a process is spawned."""

    shard_index: int
    shard_count: int
    host: str
    port: int
    # One Unix socket path per shard (the forwarding channel), in a private directory.
    peer_socket_paths: list[str]
    drain_timeout: float
    # How often to call heartbeat(); None when the supervisor checks no heartbeat.
    heartbeat_interval: float | None
    supervisor_pid: int
    status: WorkerStatus = field(repr=False, compare=False)
    # A standby's end of the pipe its shard index arrives on (shard_index is -1 until
    # then); None for a worker started for its shard.
    assignment: multiprocessing.connection.Connection | None = field(
        default=None, repr=False, compare=False
    )
    # What `prepare()` returned in this process.
    prepared: Any = field(default=None, init=False, repr=False, compare=False)
    _stop: _StopFlag | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def role(self) -> str:
        """For logs: "worker N", or "standby" while it waits for a shard."""
        return "standby" if self.shard_index < 0 else f"worker {self.shard_index}"

    @property
    def socket_path(self) -> str:
        """This worker's own forwarding socket."""
        return self.peer_socket_paths[self.shard_index]

    def notify_ready(self) -> None:
        """Tells the supervisor this worker serves (and from then on heartbeats)."""
        self.status.mark_ready(self.shard_index)

    def heartbeat(self) -> None:
        self.status.beat(self.shard_index)

    @property
    def stop_requested(self) -> bool:
        return self._stop_flag().is_set

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """True once the worker was told to stop (SIGTERM, or the supervisor is gone)."""
        return self._stop_flag().wait(timeout)

    def _stop_flag(self) -> _StopFlag:
        if self._stop is None:
            self._stop = _StopFlag()
        return self._stop


# -- the worker process's side -----------------------------------------------------------


def _worker_main(
    target: Callable[[WorkerSpec], None],
    prepare: Callable[[], Any] | None,
    spec: WorkerSpec,
) -> None:
    """The child's entry point: wires stopping and parent death, runs the target, exits."""
    stop = spec._stop_flag()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # Ctrl-C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_supervisor(spec)
    os._exit(_run_target(target, prepare, spec))


def _wait_for_shard(spec: WorkerSpec) -> bool:
    """A standby waits for its shard index; False if told to stop first."""
    assert spec.assignment is not None
    stop = spec._stop_flag()
    ready = multiprocessing.connection.wait([spec.assignment, stop.fileno()])
    if stop.is_set or stop.fileno() in ready:
        return False
    try:
        spec.shard_index = int(spec.assignment.recv())
    except EOFError:  # the supervisor is gone
        return False
    finally:
        spec.assignment.close()
    return True


def name_process(name: str) -> None:
    """Sets /proc/PID/comm (what ps and top show; at most 15 bytes are kept)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the name is a convenience only


def _run_target(
    target: Callable[[WorkerSpec], None], prepare: Callable[[], Any] | None, spec: WorkerSpec
) -> int:
    standby = spec.assignment is not None
    try:
        if prepare is not None:
            spec.prepared = prepare()
        if standby:
            name_process(STANDBY_PROCESS_NAME)  # only now: ps shows it ready to take over
        if standby and not _wait_for_shard(spec):
            return 0  # stopped, or the supervisor left, before it was needed
        target(spec)
        code = 0
    except BaseException:
        ready = spec.shard_index >= 0 and spec.status.is_ready(spec.shard_index)
        _logger.exception("%s %s", spec.role, "failed" if ready else "failed to start")
        code = 1 if ready else EXIT_BOOT_FAILURE
    # os._exit skips interpreter shutdown (a stray non-daemon thread must not keep a
    # drained worker alive), so flush what would otherwise be lost.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _die_with_supervisor(spec: WorkerSpec) -> None:
    """No orphans holding the port: the worker stops when the supervisor is gone.

    PR_SET_PDEATHSIG delivers SIGTERM at once on Linux; a watcher thread covers the
    other systems, a parent that died before the prctl, and a worker that does not
    finish draining on its own.
    """
    _set_parent_death_signal(signal.SIGTERM)
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    threading.Thread(
        target=_watch_supervisor, args=(spec, sentinel), name="supervisor-watch", daemon=True
    ).start()


def _set_parent_death_signal(signum: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) != 0:
            _logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        _logger.debug("prctl unavailable: %s", exc)


def _watch_supervisor(spec: WorkerSpec, sentinel: int | None) -> None:
    while os.getppid() == spec.supervisor_pid:
        if sentinel is None:
            time.sleep(_PARENT_CHECK_INTERVAL)
        elif multiprocessing.connection.wait([sentinel], _PARENT_CHECK_INTERVAL):
            break  # the supervisor's end of the pipe closed: it is gone
    _logger.warning("%s: supervisor gone, stopping", spec.role)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(spec.drain_timeout)
    _logger.error(
        "%s: not drained %.1f s after the supervisor left", spec.role, spec.drain_timeout
    )
    os._exit(1)


# -- the supervisor ----------------------------------------------------------------------


class Supervisor:
    """Runs `workers` processes of `target`, one per shard, on the shared `host:port`."""

    def __init__(
        self,
        target: Callable[[WorkerSpec], None],
        *,
        workers: int,
        host: str,
        port: int,
        drain_timeout: float = 30.0,
        heartbeat_timeout: float | None = None,
        ready_callback: Callable[[], None] | None = None,
        prepare: Callable[[], Any] | None = None,
        standbys: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if standbys < 0:
            raise ValueError(f"standbys must not be negative, got {standbys}")
        self.target = target
        self.workers = workers
        self.host = host
        self.port = port  # the concrete port once run() has resolved port 0
        self.drain_timeout = drain_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.ready_callback = ready_callback
        self.prepare = prepare
        self.standbys = standbys
        self.ready = threading.Event()  # set once all workers first reported ready
        self._context = multiprocessing.get_context("spawn")
        self._status = WorkerStatus(self._context, workers)
        self._processes: dict[int, SpawnProcess] = {}
        # Standbys, oldest first, each with the supervisor's end of its assignment pipe.
        self._standbys: list[tuple[SpawnProcess, multiprocessing.connection.Connection]] = []
        self._standby_due: float | None = None  # when to start the missing standbys
        self._announced: set[int] = set()  # shards whose current process was logged ready
        self._lock = threading.Lock()  # guards _processes for worker_pids()
        self._signals: collections.deque[int] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._socket_dir = ""
        self._stop_deadline: float | None = None
        self._exit_code = 0

    # -- public --------------------------------------------------------------------

    def run(self) -> int:
        """Serves until SIGTERM/SIGINT (or a boot failure); returns the exit code."""
        try:
            self.port = ensure_port_free(self.host, self.port)
        except OSError as exc:
            _logger.error("cannot serve on %s:%d: %s", self.host, self.port, exc)
            return 1
        self._socket_dir = tempfile.mkdtemp(prefix="shardproxy-")
        restore_signals = self._install_signal_handlers()
        try:
            for shard in range(self.workers):
                self._start(shard)
            return self._loop()
        finally:
            self._kill_all()
            restore_signals()
            os.close(self._wake_read)
            os.close(self._wake_write)
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def enqueue_signal(self, signum: int) -> None:
        """What the signal handlers do; also the way to signal a supervisor run in a thread."""
        self._signals.append(signum)
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            os.write(self._wake_write, b"\0")

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def worker_pids(self) -> dict[int, int]:
        """Shard index → pid of its current process."""
        with self._lock:
            return {shard: p.pid for shard, p in self._processes.items() if p.pid is not None}

    def standby_pids(self) -> list[int]:
        """The standbys waiting for a shard, the next to be used first."""
        with self._lock:
            return [p.pid for p, _ in self._standbys if p.pid is not None]

    # -- signals ---------------------------------------------------------------------

    def handle_term(self) -> None:
        self._begin_stop(0)

    def handle_int(self) -> None:
        if self._stop_deadline is None:
            self._begin_stop(0)
        else:  # a second Ctrl-C: no more waiting
            _logger.warning("stopping now: killing %d workers", len(self._processes))
            self._signal_all(signal.SIGKILL)
            self._stop_deadline = time.monotonic()

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # only the main thread may; callers use enqueue_signal

        def handler(signum: int, frame: FrameType | None) -> None:
            self.enqueue_signal(signum)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for signum, previous_handler in previous.items():
                signal.signal(signum, previous_handler)

        return restore

    def _dispatch_signals(self) -> None:
        while self._signals:
            name = signal.Signals(self._signals.popleft()).name  # "SIGTERM"
            handle = getattr(self, "handle_" + name[3:].lower(), None)
            if handle is None:
                _logger.warning("ignoring %s", name)
            else:
                handle()

    # -- main loop -------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            self._sleep()
            self._dispatch_signals()
            if self._stop_deadline is not None:
                if self._finish_stop():
                    return self._exit_code
                continue
            self._reap()
            self._note_ready()
            self._kill_stale()
            self._reap_standbys()
            self._start_standbys()

    def _sleep(self) -> None:
        """Until a worker exits, a signal arrives, or it is time to poll again."""
        if self._stop_deadline is not None:
            timeout = max(0.0, min(_STEADY_POLL, self._stop_deadline - time.monotonic()))
        elif len(self._announced) < len(self._processes):
            timeout = _BOOT_POLL
        else:
            timeout = _STEADY_POLL
        if self._standby_due is not None and self._stop_deadline is None:
            timeout = max(0.0, min(timeout, self._standby_due - time.monotonic()))
        with self._lock:
            sentinels: list[int] = [p.sentinel for p in self._processes.values()]
            sentinels += [p.sentinel for p, _ in self._standbys]
        if multiprocessing.connection.wait([*sentinels, self._wake_read], timeout):
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(self._wake_read, False)
                os.read(self._wake_read, 4096)

    def _start(self, shard: int) -> None:
        """Starts a worker for `shard`: a standby if one is left, else a new process."""
        self._status.reset(shard)
        process = self._assign_standby(shard)
        if process is None:
            process = self._new_process(self._spec(shard), f"shardproxy-worker-{shard}")
            source = "a new process"
        else:
            source = "a standby"
            self._standby_due = time.monotonic()  # its replacement
        with self._lock:
            self._processes[shard] = process
        self._announced.discard(shard)
        _logger.info("worker %d started from %s (pid %d)", shard, source, process.pid)

    def _assign_standby(self, shard: int) -> SpawnProcess | None:
        """The oldest standby, told its shard; None when no standby is left."""
        while self._standbys:
            with self._lock:
                process, assignment = self._standbys.pop(0)
            try:
                assignment.send(shard)
                return process
            except OSError:  # it died a moment ago and cannot take the shard
                process.kill()
                process.join(5.0)
                process.close()
            finally:
                assignment.close()
        return None

    def _spec(self, shard: int) -> WorkerSpec:
        interval = None if self.heartbeat_timeout is None else self.heartbeat_timeout / 3
        return WorkerSpec(
            shard_index=shard,
            shard_count=self.workers,
            host=self.host,
            port=self.port,
            peer_socket_paths=[
                os.path.join(self._socket_dir, f"shard-{i}.sock") for i in range(self.workers)
            ],
            drain_timeout=self.drain_timeout,
            heartbeat_interval=interval,
            supervisor_pid=os.getpid(),
            status=self._status,
        )

    def _new_process(self, spec: WorkerSpec, name: str) -> SpawnProcess:
        process = self._context.Process(
            target=_worker_main, args=(self.target, self.prepare, spec), name=name
        )
        process.start()
        return process

    # -- standbys ----------------------------------------------------------------------

    def _start_standbys(self) -> None:
        if self._standby_due is None or time.monotonic() < self._standby_due:
            return
        self._standby_due = None
        while len(self._standbys) < self.standbys:
            receive, send = self._context.Pipe(duplex=False)
            spec = self._spec(-1)
            spec.assignment = receive
            process = self._new_process(spec, "shardproxy-standby")
            receive.close()  # the child has its own copy now
            with self._lock:
                self._standbys.append((process, send))
            _logger.debug("standby started (pid %d)", process.pid)

    def _reap_standbys(self) -> None:
        for entry in list(self._standbys):
            process, assignment = entry
            if process.exitcode is None:
                continue
            with self._lock:
                self._standbys.remove(entry)
            assignment.close()
            if self._stop_deadline is None:
                _logger.warning(
                    "standby (pid %s) %s before it was needed; another starts in %.0f s",
                    process.pid,
                    _describe(process.exitcode),
                    _STANDBY_RETRY_PAUSE,
                )
                self._standby_due = time.monotonic() + _STANDBY_RETRY_PAUSE
            process.close()

    def _reap(self) -> None:
        for shard, process in list(self._processes.items()):
            if process.exitcode is None:
                continue
            exit_code, pid = process.exitcode, process.pid
            self._forget(shard)
            if exit_code == EXIT_BOOT_FAILURE:
                _logger.error("worker %d failed to start (see its error above); stopping", shard)
                self._begin_stop(EXIT_BOOT_FAILURE)
                return
            _logger.warning(
                "worker %d (pid %s) %s; restarting it", shard, pid, _describe(exit_code)
            )
            self._start(shard)

    def _note_ready(self) -> None:
        for shard in self._processes:
            if shard not in self._announced and self._status.is_ready(shard):
                self._announced.add(shard)
                _logger.debug("worker %d ready", shard)
        if not self.ready.is_set() and len(self._announced) == self.workers:
            _logger.info("all %d workers ready on %s:%d", self.workers, self.host, self.port)
            self.ready.set()
            # Only now: standbys booting beside the workers would slow their start.
            self._standby_due = time.monotonic()
            if self.ready_callback is not None:
                self.ready_callback()

    def _kill_stale(self) -> None:
        if self.heartbeat_timeout is None:
            return
        now = time.monotonic()
        for shard in self._announced:
            silent = now - self._status.last_beat(shard)
            if silent > self.heartbeat_timeout:
                process = self._processes[shard]
                _logger.error(
                    "worker %d (pid %d) sent no heartbeat for %.1f s; killing it",
                    shard,
                    process.pid,
                    silent,
                )
                process.kill()  # reaped and restarted on a following pass

    # -- stopping --------------------------------------------------------------------

    def _begin_stop(self, exit_code: int) -> None:
        if self._stop_deadline is not None:
            return
        self._exit_code = exit_code
        self._stop_deadline = time.monotonic() + self.drain_timeout
        _logger.info(
            "stopping %d workers (drain up to %.1f s)", len(self._processes), self.drain_timeout
        )
        self._signal_all(signal.SIGTERM)

    def _finish_stop(self) -> bool:
        """True once every worker is gone; kills the rest at the drain deadline."""
        for shard, process in list(self._processes.items()):
            if process.exitcode is not None:
                self._forget(shard)
        self._reap_standbys()
        if not self._processes and not self._standbys:
            _logger.info("all workers stopped")
            return True
        assert self._stop_deadline is not None
        if time.monotonic() < self._stop_deadline:
            return False
        _logger.warning("killing %d workers still draining", len(self._processes))
        self._kill_all()
        return True

    def _signal_all(self, signum: int) -> None:
        for process in [*self._processes.values(), *(p for p, _ in self._standbys)]:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _kill_all(self) -> None:
        for shard, process in list(self._processes.items()):
            if process.exitcode is None:
                process.kill()
            process.join(5.0)
            self._forget(shard)
        with self._lock:
            standbys, self._standbys = self._standbys, []
        for process, assignment in standbys:
            assignment.close()
            if process.exitcode is None:
                process.kill()
            process.join(5.0)
            with contextlib.suppress(ValueError):
                process.close()

    def _forget(self, shard: int) -> None:
        with self._lock:
            process = self._processes.pop(shard)
        self._announced.discard(shard)
        with contextlib.suppress(ValueError):  # still running (a join timed out)
            process.close()


def _describe(exit_code: int) -> str:
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}"
