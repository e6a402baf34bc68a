"""Starts the worker processes, watches them, restarts the fallen, drains them on exit.

The parent side of a shardproxy instance; `child` is the workers' side of the same
contract. The supervisor holds no listener: it checks that nothing else holds the
port (`ports`), then each worker binds it with SO_REUSEPORT and the kernel spreads
the connections. Workers are started with the `spawn` method, so no gRPC (or
database) state ever crosses a fork; this module imports neither.

Main loop (after gunicorn's arbiter and uvicorn's multiprocess supervisor): signal
handlers only queue the signal and wake the loop; each pass dispatches queued
signals to `handle_<name>`, reaps dead workers and restarts them with the same
shard index, notes readiness, and kills workers whose heartbeat went stale. A
worker that fails before it reported ready exits with `EXIT_BOOT_FAILURE`, and the
supervisor then stops everything instead of restarting it forever.

Standbys: a spawned interpreter spends most of a second importing and connecting
before it can serve. Once all workers are ready the supervisor keeps `standbys`
extra processes that have prepared (see `child`) and wait for a shard index; a
fallen worker is replaced by a standby (and a new standby is spawned behind it),
so a restart costs only the worker's shard-specific set-up. The idea is the spare
servers of Apache's prefork and PHP-FPM; there is still no fork.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from shardproxy.child import EXIT_BOOT_FAILURE, WorkerSpec, WorkerStatus, child_main
from shardproxy.ports import ensure_port_free

_logger = logging.getLogger(__name__)

_BOOT_POLL = 0.05  # readiness lives in shared memory and is polled while workers boot
_STEADY_POLL = 0.5
# A standby that died unused is replaced only after this pause: one that cannot even
# import must not be respawned in a hot loop (meanwhile a restart starts cold).
_STANDBY_RETRY_PAUSE = 5.0


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
            target=child_main, args=(self.target, self.prepare, spec), name=name
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
