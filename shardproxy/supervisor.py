"""Starts the worker processes, watches them, restarts the fallen, reloads and drains them.

The parent side of a shardproxy instance; `child` is the workers' side of the same
contract. The supervisor holds no listener: it checks that nothing else holds the
port (`ports`), then each worker binds it with SO_REUSEPORT and the kernel spreads
the connections. Workers are started with the `spawn` method, so no gRPC (or
database) state ever crosses a fork; this module imports neither.

Main loop (after gunicorn's arbiter and uvicorn's multiprocess supervisor): signal
handlers only queue the signal and wake the loop; each pass dispatches queued
signals to `handle_<name>`, reaps dead workers and restarts them with the same
shard index, notes readiness, kills workers whose watchdog beat went stale, and
moves a rolling restart on. A worker that fails before it reported ready exits with
`EXIT_BOOT_FAILURE`, and the supervisor then stops everything instead of
restarting it forever.

The supervisor decides; its collaborators each keep one part of what it knows:
`processes` spawns and releases processes in their status slots, `standbys` keeps
processes booted ahead of need, `liveness` reads the workers' beats and readiness,
`rolling` holds a rolling restart's state (SIGHUP). The admin endpoint (`admin`)
is optional plain HTTP on the supervisor for /healthz, /readyz and /metrics; when
it is on, the workers write their metrics into a directory the supervisor prepares
here and aggregates on each scrape.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from shardproxy.child import EXIT_BOOT_FAILURE, WorkerSpec
from shardproxy.liveness import Liveness
from shardproxy.ports import ensure_port_free
from shardproxy.processes import Child, Processes, describe
from shardproxy.rolling import RollingRestart
from shardproxy.signals import SignalQueue
from shardproxy.standbys import Standbys

_logger = logging.getLogger(__name__)

_BOOT_POLL = 0.05  # readiness lives in shared memory and is polled while workers boot
_STEADY_POLL = 0.5


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
        admin_host: str = "127.0.0.1",
        admin_port: int = 0,
        handover_timeout: float | None = None,
    ) -> None:
        """`heartbeat_timeout`: seconds without a watchdog beat before a worker is
        killed (None: never). `prepare`: what a standby runs before it waits for a
        shard. `admin_port`: the admin endpoint's port on `admin_host` (0: none).
        `handover_timeout`: seconds a worker replaced by a reload may take to let its
        clients go and drain (default: `drain_timeout`)."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.host = host
        self.port = port  # the concrete port once run() has resolved port 0
        self.drain_timeout = drain_timeout
        self.ready_callback = ready_callback
        self.admin_host = admin_host
        self.admin_port = admin_port
        self.handover_timeout = drain_timeout if handover_timeout is None else handover_timeout
        self.ready = threading.Event()  # set once all workers first reported ready
        # Worker processes replaced, by cause: "crash", "watchdog" or "reload".
        self.restarts: collections.Counter[str] = collections.Counter()
        # Slots: the workers, the standbys, as many old processes draining after a
        # reload, and the replacement in a reload's handover.
        slots = 2 * (workers + max(standbys, 0)) + 2
        self._processes = Processes(target, prepare, slots, on_exit=self._process_exited)
        self._standbys = Standbys(
            standbys,
            self._processes,
            lambda: self._processes.spawn(
                lambda slot: self._spec(-1, slot), "shardproxy-standby", standby=True
            ),
        )
        self._liveness = Liveness(self._processes.status, heartbeat_timeout)
        self._reload = RollingRestart()
        self._workers: dict[int, Child] = {}  # shard -> its current process
        self._lock = threading.Lock()  # guards `_workers` for the admin endpoint's thread
        self._announced: set[int] = set()  # shards whose current process was logged ready
        self._signals = SignalQueue()
        self._socket_dir = ""
        self._stop_deadline: float | None = None
        self._exit_code = 0
        self._metrics: Any = None  # admin.MetricsDirectory when the admin endpoint is on

    # -- public --------------------------------------------------------------------

    def run(self) -> int:
        """Serves until SIGTERM/SIGINT (or a boot failure); returns the exit code."""
        try:
            self.port = ensure_port_free(self.host, self.port)
        except OSError as exc:
            _logger.error("cannot serve on %s:%d: %s", self.host, self.port, exc)
            return 1
        self._socket_dir = tempfile.mkdtemp(prefix="shardproxy-")
        admin = None
        try:
            if self.admin_port:
                try:
                    admin = self._start_admin()
                except OSError as exc:
                    _logger.error(
                        "cannot serve the admin endpoint on %s:%d: %s; choose another "
                        "--admin-port, or 0 for none",
                        self.admin_host,
                        self.admin_port,
                        exc,
                    )
                    return 1
            restore_signals = self._signals.install(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            try:
                for shard in range(self.workers):
                    self._start(shard)
                return self._loop()
            finally:
                self._kill_all()
                restore_signals()
        finally:
            if admin is not None:
                admin.close()
            self._signals.close()
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def enqueue_signal(self, signum: int) -> None:
        """What the signal handlers do; also the way to signal a supervisor run in a thread."""
        self._signals.put(signum)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    def worker_pids(self) -> dict[int, int]:
        """Shard index → pid of its current process."""
        with self._lock:
            return {shard: child.pid for shard, child in self._workers.items()}

    def standby_pids(self) -> list[int]:
        """The standbys waiting for a shard, the next to be used first."""
        return self._standbys.pids()

    @property
    def reloading(self) -> bool:
        """Whether a rolling restart has shards left to replace."""
        return self._reload.in_progress

    def readiness(self) -> list[str]:
        """Why the instance is not ready to serve, one line per shard; empty when it is."""
        if self._stop_deadline is not None:
            return ["stopping"]
        with self._lock:
            current = {shard: child.slot for shard, child in self._workers.items()}
        old = {shard: child.slot for shard, child in self._reload.handovers().items()}
        return self._liveness.problems(
            {
                shard: [slot for slot in (old.get(shard), current.get(shard)) if slot is not None]
                for shard in range(self.workers)
            }
        )

    def shard_states(self) -> dict[int, tuple[bool, float | None]]:
        """Shard → (ready to serve, seconds since its worker's last beat or None)."""
        with self._lock:
            current = {shard: child.slot for shard, child in self._workers.items()}
        return self._liveness.states({shard: current.get(shard) for shard in range(self.workers)})

    # -- signals ---------------------------------------------------------------------

    def handle_term(self) -> None:
        self._begin_stop(0)

    def handle_int(self) -> None:
        if self._stop_deadline is None:
            self._begin_stop(0)
        else:  # a second Ctrl-C: no more waiting
            _logger.warning("stopping now: killing %d workers", len(self._workers))
            self._processes.signal_all(signal.SIGKILL)
            self._stop_deadline = time.monotonic()

    def handle_hup(self) -> None:
        """A rolling restart: every worker replaced by a fresh process, one at a time."""
        if self._stop_deadline is not None:
            return
        _logger.info("reloading: replacing the %d workers one at a time", self.workers)
        # Standbys imported the code on disk when they started: they go too.
        for child in self._standbys.remove_all():
            self._reload.retire(child, signal.SIGTERM, self.drain_timeout)
        self._reload.begin(self.workers)

    # -- main loop -------------------------------------------------------------------

    def _loop(self) -> int:
        self._liveness.start_watching()
        while True:
            self._sleep()
            self._signals.dispatch(self)
            if self._stop_deadline is not None:
                if self._finish_stop():
                    return self._exit_code
                continue
            self._reap()
            self._reload.reap_retiring(self._processes.release)
            if self._stop_deadline is not None:  # a boot failure
                continue
            self._note_ready()
            self._kill_stale()
            self._advance_reload()
            self._standbys.reap(stopping=False)
            if not self._reload.in_progress:  # else started with the new code, after it
                self._standbys.start_due()

    def _sleep(self) -> None:
        """Until a worker exits, a signal arrives, or it is time to poll again."""
        now = time.monotonic()
        if self._stop_deadline is not None:
            timeout = max(0.0, min(_STEADY_POLL, self._stop_deadline - now))
        elif len(self._announced) < len(self._workers):
            timeout = _BOOT_POLL
        else:
            timeout = _STEADY_POLL
        if self._standbys.due is not None and self._stop_deadline is None:
            timeout = max(0.0, min(timeout, self._standbys.due - now))
        kill_at = self._reload.next_deadline()
        if kill_at is not None:
            timeout = max(0.0, min(timeout, kill_at - now))
        sentinels: list[int] = [child.process.sentinel for child in self._processes.unreleased()]
        if multiprocessing.connection.wait([*sentinels, self._signals.wake_fd], timeout):
            self._signals.drain_wake_ups()

    def _start(self, shard: int) -> None:
        """Starts a worker for `shard`: a standby if one is left, else a new process."""
        child = self._standbys.take(shard)
        source = "a standby"
        if child is None:
            child = self._processes.spawn(
                lambda slot: self._spec(shard, slot), f"shardproxy-worker-{shard}", standby=False
            )
            source = "a new process"
        with self._lock:
            self._workers[shard] = child
        self._announced.discard(shard)
        _logger.info("worker %d started from %s (pid %d)", shard, source, child.pid)

    def _spec(self, shard: int, slot: int) -> WorkerSpec:
        """What the process in `slot` is told; shard -1: a standby, told its shard later."""
        return WorkerSpec(
            shard_index=shard,
            shard_count=self.workers,
            host=self.host,
            port=self.port,
            peer_socket_paths=[
                os.path.join(self._socket_dir, f"shard-{i}.sock") for i in range(self.workers)
            ],
            drain_timeout=self.drain_timeout,
            heartbeat_interval=self._liveness.beat_interval,
            supervisor_pid=os.getpid(),
            status=self._processes.status,
            slot=slot,
            metrics_dir=None if self._metrics is None else self._metrics.path,
        )

    def _process_exited(self, pid: int) -> None:
        """What was kept for a process, dropped as its slot is released."""
        self._liveness.killed.discard(pid)
        if self._metrics is not None:
            self._metrics.process_exited(pid)

    def _cause(self, child: Child) -> str:
        return "watchdog" if child.pid in self._liveness.killed else "crash"

    # -- workers -----------------------------------------------------------------------

    def _reap(self) -> None:
        for shard, child in list(self._workers.items()):
            if not child.exited:
                continue
            exit_code, pid, cause = child.process.exitcode, child.pid, self._cause(child)
            assert exit_code is not None
            self._forget(shard)
            old = self._reload.end_handover(shard)
            if old is not None:  # a reload's replacement that never took over
                with self._lock:
                    self._workers[shard] = old
                self._reload.cancel()
                self._announced.add(shard)
                self._standbys.fill_after()
                _logger.error(
                    "reload stopped: the new worker %d (pid %d) %s before it was ready; "
                    "the old workers keep serving",
                    shard,
                    pid,
                    describe(exit_code),
                )
                continue
            if exit_code == EXIT_BOOT_FAILURE:
                _logger.error("worker %d failed to start (see its error above); stopping", shard)
                self._begin_stop(EXIT_BOOT_FAILURE)
                return
            self.restarts[cause] += 1
            _logger.warning(
                "worker %d (pid %s) %s; restarting it", shard, pid, describe(exit_code)
            )
            self._start(shard)
        for shard, child in self._reload.handovers().items():
            if child.exited:  # died while its replacement started
                self._reload.end_handover(shard)
                self.restarts[self._cause(child)] += 1
                assert child.process.exitcode is not None
                _logger.warning(
                    "worker %d (pid %d) %s while its replacement started",
                    shard,
                    child.pid,
                    describe(child.process.exitcode),
                )
                self._processes.release(child)

    def _note_ready(self) -> None:
        for shard, child in list(self._workers.items()):
            if shard in self._announced or not self._processes.status.is_ready(child.slot):
                continue
            self._announced.add(shard)
            _logger.debug("worker %d ready", shard)
            old = self._reload.end_handover(shard)
            if old is not None:
                # SIGHUP: it lets its clients leave at their own pace before it drains.
                self._reload.retire(old, signal.SIGHUP, self.handover_timeout)
                self.restarts["reload"] += 1
                _logger.info(
                    "worker %d replaced (pid %d serves, pid %d drains)", shard, child.pid, old.pid
                )
                if not self._reload.queued:
                    _logger.info("reload done: all %d workers replaced", self.workers)
                    self._standbys.fill_after()
        if not self.ready.is_set() and len(self._announced) == self.workers:
            _logger.info("all %d workers ready on %s:%d", self.workers, self.host, self.port)
            self.ready.set()
            # Only now: standbys booting beside the workers would slow their start.
            self._standbys.fill_after()
            if self.ready_callback is not None:
                self.ready_callback()

    def _kill_stale(self) -> None:
        watched = [(shard, self._workers[shard]) for shard in self._announced]
        self._liveness.kill_stale(watched + list(self._reload.handovers().items()))

    def _advance_reload(self) -> None:
        """Starts the next shard's replacement once the previous one took over."""
        if not self._processes.has_free_slot:
            return
        if len(self._announced) < self.workers:
            return  # a worker is (re)starting: replace nothing beside it
        with self._lock:
            current = dict(self._workers)
        shard = self._reload.hand_over_next(current)
        if shard is not None:
            self._start(shard)

    # -- stopping --------------------------------------------------------------------

    def _begin_stop(self, exit_code: int) -> None:
        if self._stop_deadline is not None:
            return
        self._exit_code = exit_code
        self._stop_deadline = time.monotonic() + self.drain_timeout
        self._reload.cancel()
        _logger.info(
            "stopping %d workers (drain up to %.1f s)", len(self._workers), self.drain_timeout
        )
        self._processes.signal_all(signal.SIGTERM)

    def _finish_stop(self) -> bool:
        """True once every process is gone; kills the rest at the drain deadline."""
        for shard, child in list(self._workers.items()):
            if child.exited:
                self._forget(shard)
        for shard, child in self._reload.handovers().items():
            if child.exited:
                self._reload.end_handover(shard)
                self._processes.release(child)
        self._reload.reap_retiring(self._processes.release, quiet=True)
        self._standbys.reap(stopping=True)
        if not self._processes.unreleased():
            _logger.info("all workers stopped")
            return True
        assert self._stop_deadline is not None
        if time.monotonic() < self._stop_deadline:
            return False
        _logger.warning("killing %d workers still draining", len(self._processes.unreleased()))
        self._kill_all()
        return True

    def _kill_all(self) -> None:
        with self._lock:
            self._workers = {}
        self._reload.remove_all()
        self._standbys.remove_all()
        self._announced.clear()
        self._processes.kill_all()

    def _forget(self, shard: int) -> None:
        with self._lock:
            child = self._workers.pop(shard)
        self._announced.discard(shard)
        self._processes.release(child)

    # -- admin endpoint --------------------------------------------------------------------

    def _start_admin(self) -> Any:
        """The admin HTTP endpoint, and the directory the workers write metrics into."""
        from shardproxy import admin  # prometheus_client, only when there is an endpoint

        self._metrics = admin.MetricsDirectory(os.path.join(self._socket_dir, "metrics"))
        server = admin.AdminServer(self.admin_host, self.admin_port, self, self._metrics)
        self.admin_port = server.port
        _logger.info("admin endpoint on http://%s", server.address)
        return server
