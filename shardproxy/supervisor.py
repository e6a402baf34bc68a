"""Starts the worker processes, watches them, restarts the fallen, reloads and drains them.

The parent side of a shardproxy instance; `child` is the workers' side of the same
contract. The supervisor holds no listener: it checks that nothing else holds the
port (`ports`), then each worker binds it with SO_REUSEPORT and the kernel spreads
the connections. Workers are started with the `spawn` method, so no gRPC (or
database) state ever crosses a fork; this module imports neither.

Main loop (after gunicorn's arbiter and uvicorn's multiprocess supervisor): signal
handlers only queue the signal and wake the loop; each pass dispatches queued
signals to `handle_<name>`, reaps dead workers and restarts them with the same
shard index, notes readiness, kills workers whose heartbeat went stale (the
watchdog: a worker beats from a request its own handlers answered), and moves a
rolling restart on. A worker that fails before it reported ready exits with
`EXIT_BOOT_FAILURE`, and the supervisor then stops everything instead of
restarting it forever.

Standbys: a spawned interpreter spends most of a second importing and connecting
before it can serve. Once all workers are ready the supervisor keeps `standbys`
extra processes that have prepared (see `child`) and wait for a shard index; a
fallen worker is replaced by a standby (and a new standby is spawned behind it),
so a restart costs only the worker's shard-specific set-up. The idea is the spare
servers of Apache's prefork and PHP-FPM; there is still no fork.

Rolling restart (SIGHUP, as gunicorn's HUP): the standbys, which imported the old
code, are told to stop; then one shard at a time, a new process is spawned (it
imports the package afresh from disk), binds the shared port and takes over the
shard's forwarding socket, and only once it reported ready is the old process told
to go (SIGHUP: it lets its clients leave before it drains, see `handover`); the
next shard's replacement starts meanwhile. The old one keeps serving its
connections and the forwarded requests already on its socket until then. A
replacement that fails to start ends the reload and the old worker keeps its
shard.

Each process has a slot of its own in the shared `WorkerStatus`, so an old worker
draining beside its replacement never writes the replacement's status.

Admin endpoint (`admin`): optional plain HTTP on the supervisor for /healthz,
/readyz and /metrics; when it is on, the workers write their metrics into a
directory the supervisor prepares here and aggregates on each scrape.
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
from dataclasses import dataclass
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
# How often a worker proves its handlers answer, at most: a beat is one tiny RPC.
_MAX_BEAT_INTERVAL = 1.0
# While a worker reports that its database does not answer, its handlers wait for
# the database (a new process would wait the same), so the watchdog gives it this
# many times its timeout before it kills it.
_DATABASE_DOWN_PATIENCE = 4.0
# A pass of the main loop this much later than the last one means the supervisor
# itself did not run (the machine stalled: a paused VM, swapping); it saw no beats
# either, so every worker gets a whole watchdog timeout from then.
_STALL = 2.0


@dataclass(eq=False)
class _Child:
    """One spawned process and its slot in the shared status."""

    process: SpawnProcess
    slot: int
    # A standby's end of the pipe its shard index is sent on.
    assignment: multiprocessing.connection.Connection | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # started
        return self.process.pid


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
        """`heartbeat_timeout`: seconds without a beat before a worker is killed (None:
        never). `admin_port`: the admin endpoint's port on `admin_host` (0: none).
        `handover_timeout`: seconds a worker replaced by a reload may take to let its
        clients go and drain (default: `drain_timeout`)."""
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
        self.admin_host = admin_host
        self.admin_port = admin_port
        self.handover_timeout = drain_timeout if handover_timeout is None else handover_timeout
        self.ready = threading.Event()  # set once all workers first reported ready
        # Worker processes replaced, by cause: "crash", "watchdog" or "reload".
        self.restarts: collections.Counter[str] = collections.Counter()
        self._context = multiprocessing.get_context("spawn")
        # Slots: the workers, the standbys, as many old processes draining after a
        # reload, and the replacement in a reload's handover.
        self._status = WorkerStatus(self._context, 2 * (workers + standbys) + 2)
        self._free_slots = list(range(self._status.slots))
        self._workers: dict[int, _Child] = {}  # shard -> its current process
        self._standbys: list[_Child] = []  # oldest first
        # During a reload: shard -> its old process, serving until the new one is ready.
        self._handover: dict[int, _Child] = {}
        # Told to stop (after a reload), each with the time it is killed at.
        self._retiring: list[tuple[_Child, float]] = []
        self._reload_queue: list[int] = []  # shards a reload has yet to replace
        self._watchdog_kills: set[int] = set()  # pids killed for a stale beat
        self._last_watch = time.monotonic()  # the watchdog's last pass
        self._watch_from = 0.0  # beats older than this count from this instead
        self._standby_due: float | None = None  # when to start the missing standbys
        self._announced: set[int] = set()  # shards whose current process was logged ready
        self._lock = threading.Lock()  # guards the process tables for other threads
        self._signals: collections.deque[int] = collections.deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
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
            restore_signals = self._install_signal_handlers()
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
            return {shard: child.pid for shard, child in self._workers.items()}

    def standby_pids(self) -> list[int]:
        """The standbys waiting for a shard, the next to be used first."""
        with self._lock:
            return [child.pid for child in self._standbys]

    @property
    def reloading(self) -> bool:
        """Whether a rolling restart has shards left to replace."""
        with self._lock:
            return bool(self._reload_queue or self._handover)

    def readiness(self) -> list[str]:
        """Why the instance is not ready to serve, one line per reason; empty when it is.

        Ready: every shard has a process that reported ready, has not begun to drain,
        reaches its database and (with the watchdog on) answered a beat lately.
        """
        with self._lock:
            if self._stop_deadline is not None:
                return ["stopping"]
            candidates = {
                shard: [c for c in (self._handover.get(shard), self._workers.get(shard)) if c]
                for shard in range(self.workers)
            }
        now = time.monotonic()
        problems = []
        for shard, children in candidates.items():
            reasons = [self._unready_reason(child.slot, now) for child in children]
            if None not in reasons:
                problems.append(f"worker {shard}: {reasons[-1] if reasons else 'not running'}")
        return problems

    def shard_states(self) -> dict[int, tuple[bool, float | None]]:
        """Shard → (ready to serve, seconds since its worker's last beat or None)."""
        with self._lock:
            current = dict(self._workers)
        now = time.monotonic()
        states: dict[int, tuple[bool, float | None]] = {}
        for shard in range(self.workers):
            child = current.get(shard)
            if child is None or not self._status.is_ready(child.slot):
                states[shard] = (False, None)
                continue
            silent = now - self._status.last_beat(child.slot)
            states[shard] = (self._unready_reason(child.slot, now) is None, silent)
        return states

    def _unready_reason(self, slot: int, now: float) -> str | None:
        status = self._status
        if not status.is_ready(slot):
            return "starting"
        if not status.is_serving(slot):
            return "draining"
        if not status.database_answers(slot):
            return "its database does not answer"
        silent = now - status.last_beat(slot)
        if self.heartbeat_timeout is not None and silent > self.heartbeat_timeout / 2:
            return f"its request handlers answered no watchdog beat for {silent:.1f} s"
        return None

    # -- signals ---------------------------------------------------------------------

    def handle_term(self) -> None:
        self._begin_stop(0)

    def handle_int(self) -> None:
        if self._stop_deadline is None:
            self._begin_stop(0)
        else:  # a second Ctrl-C: no more waiting
            _logger.warning("stopping now: killing %d workers", len(self._workers))
            self._signal_all(signal.SIGKILL)
            self._stop_deadline = time.monotonic()

    def handle_hup(self) -> None:
        """A rolling restart: every worker replaced by a fresh process, one at a time."""
        if self._stop_deadline is not None:
            return
        _logger.info("reloading: replacing the %d workers one at a time", self.workers)
        # Standbys imported the code on disk when they started: they go too.
        with self._lock:
            standbys, self._standbys = self._standbys, []
        for child in standbys:
            self._retire(child, signal.SIGTERM, self.drain_timeout)
        self._standby_due = None
        with self._lock:
            self._reload_queue = list(range(self.workers))

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # only the main thread may; callers use enqueue_signal

        def handler(signum: int, frame: FrameType | None) -> None:
            self.enqueue_signal(signum)

        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, handler) for s in signals}

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
        self._last_watch = time.monotonic()
        while True:
            self._sleep()
            self._dispatch_signals()
            if self._stop_deadline is not None:
                if self._finish_stop():
                    return self._exit_code
                continue
            self._reap()
            self._reap_retiring()
            if self._stop_deadline is not None:  # a boot failure
                continue
            self._note_ready()
            self._kill_stale()
            self._advance_reload()
            self._reap_standbys()
            self._start_standbys()

    def _sleep(self) -> None:
        """Until a worker exits, a signal arrives, or it is time to poll again."""
        now = time.monotonic()
        if self._stop_deadline is not None:
            timeout = max(0.0, min(_STEADY_POLL, self._stop_deadline - now))
        elif len(self._announced) < len(self._workers):
            timeout = _BOOT_POLL
        else:
            timeout = _STEADY_POLL
        if self._standby_due is not None and self._stop_deadline is None:
            timeout = max(0.0, min(timeout, self._standby_due - now))
        for _, deadline in self._retiring:
            timeout = max(0.0, min(timeout, deadline - now))
        sentinels: list[int] = [child.process.sentinel for child in self._children()]
        if multiprocessing.connection.wait([*sentinels, self._wake_read], timeout):
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(self._wake_read, False)
                os.read(self._wake_read, 4096)

    def _children(self) -> list[_Child]:
        """Every process alive or not yet reaped."""
        with self._lock:
            return [
                *self._workers.values(),
                *self._handover.values(),
                *self._standbys,
                *(child for child, _ in self._retiring),
            ]

    def _start(self, shard: int) -> None:
        """Starts a worker for `shard`: a standby if one is left, else a new process."""
        child = self._assign_standby(shard)
        if child is None:
            child = self._new_process(shard, f"shardproxy-worker-{shard}")
            source = "a new process"
        else:
            source = "a standby"
            self._standby_due = time.monotonic()  # its replacement
        with self._lock:
            self._workers[shard] = child
        self._announced.discard(shard)
        _logger.info("worker %d started from %s (pid %d)", shard, source, child.pid)

    def _assign_standby(self, shard: int) -> _Child | None:
        """The oldest standby, told its shard; None when no standby is left."""
        while self._standbys:
            with self._lock:
                child = self._standbys.pop(0)
            assert child.assignment is not None
            try:
                child.assignment.send(shard)
                return child
            except OSError:  # it died a moment ago and cannot take the shard
                child.process.kill()
                child.process.join(5.0)
                self._release(child)
            finally:
                child.assignment.close()
                child.assignment = None
        return None

    def _spec(self, shard: int, slot: int) -> WorkerSpec:
        interval = None
        if self.heartbeat_timeout is not None:
            interval = min(_MAX_BEAT_INTERVAL, self.heartbeat_timeout / 4)
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
            slot=slot,
            metrics_dir=None if self._metrics is None else self._metrics.path,
        )

    def _new_process(self, shard: int, name: str) -> _Child:
        """Spawns a process for `shard` (-1: a standby) in a free slot."""
        slot = self._free_slots.pop(0)
        self._status.reset(slot)
        spec = self._spec(shard, slot)
        receive = None
        if shard < 0:
            receive, send = self._context.Pipe(duplex=False)
            spec.assignment = receive
        process = self._context.Process(
            target=child_main, args=(self.target, self.prepare, spec), name=name
        )
        process.start()
        if receive is not None:
            receive.close()  # the child has its own copy now
            return _Child(process, slot, send)
        return _Child(process, slot)

    def _release(self, child: _Child) -> None:
        """After the process exited: its slot and its metrics' bookkeeping."""
        pid = child.process.pid
        self._watchdog_kills.discard(pid or 0)
        self._free_slots.append(child.slot)
        self._free_slots.sort()
        if child.assignment is not None:
            child.assignment.close()
        if self._metrics is not None and pid is not None:
            self._metrics.process_exited(pid)
        with contextlib.suppress(ValueError):  # still running (a join timed out)
            child.process.close()

    # -- standbys ----------------------------------------------------------------------

    def _start_standbys(self) -> None:
        if self._standby_due is None or time.monotonic() < self._standby_due:
            return
        if self._reload_queue or self._handover:
            return  # started when the reload is done, with the new code
        self._standby_due = None
        while len(self._standbys) < self.standbys and self._free_slots:
            child = self._new_process(-1, "shardproxy-standby")
            with self._lock:
                self._standbys.append(child)
            _logger.debug("standby started (pid %d)", child.pid)

    def _reap_standbys(self) -> None:
        for child in list(self._standbys):
            if child.process.exitcode is None:
                continue
            with self._lock:
                self._standbys.remove(child)
            if self._stop_deadline is None:
                _logger.warning(
                    "standby (pid %s) %s before it was needed; another starts in %.0f s",
                    child.pid,
                    _describe(child.process.exitcode),
                    _STANDBY_RETRY_PAUSE,
                )
                self._standby_due = time.monotonic() + _STANDBY_RETRY_PAUSE
            self._release(child)

    # -- workers -----------------------------------------------------------------------

    def _reap(self) -> None:
        for shard, child in list(self._workers.items()):
            if child.process.exitcode is None:
                continue
            exit_code, pid = child.process.exitcode, child.pid
            cause = "watchdog" if pid in self._watchdog_kills else "crash"
            self._forget(shard)
            old = self._handover.get(shard)
            if old is not None:  # a reload's replacement that never took over
                with self._lock:
                    del self._handover[shard]
                    self._workers[shard] = old
                    self._reload_queue.clear()
                self._announced.add(shard)
                self._standby_due = time.monotonic()
                _logger.error(
                    "reload stopped: the new worker %d (pid %d) %s before it was ready; "
                    "the old workers keep serving",
                    shard,
                    pid,
                    _describe(exit_code),
                )
                continue
            if exit_code == EXIT_BOOT_FAILURE:
                _logger.error("worker %d failed to start (see its error above); stopping", shard)
                self._begin_stop(EXIT_BOOT_FAILURE)
                return
            self.restarts[cause] += 1
            _logger.warning(
                "worker %d (pid %s) %s; restarting it", shard, pid, _describe(exit_code)
            )
            self._start(shard)
        for shard, child in list(self._handover.items()):
            if child.process.exitcode is not None:  # died while its replacement started
                with self._lock:
                    del self._handover[shard]
                self.restarts["watchdog" if child.pid in self._watchdog_kills else "crash"] += 1
                _logger.warning(
                    "worker %d (pid %d) %s while its replacement started",
                    shard,
                    child.pid,
                    _describe(child.process.exitcode),
                )
                self._release(child)

    def _note_ready(self) -> None:
        for shard, child in list(self._workers.items()):
            if shard in self._announced or not self._status.is_ready(child.slot):
                continue
            self._announced.add(shard)
            _logger.debug("worker %d ready", shard)
            old = self._handover.get(shard)
            if old is not None:
                with self._lock:
                    del self._handover[shard]
                # SIGHUP: it lets its clients leave at their own pace before it drains.
                self._retire(old, signal.SIGHUP, self.handover_timeout)
                self.restarts["reload"] += 1
                _logger.info(
                    "worker %d replaced (pid %d serves, pid %d drains)", shard, child.pid, old.pid
                )
                if not self._reload_queue:
                    _logger.info("reload done: all %d workers replaced", self.workers)
                    self._standby_due = time.monotonic()
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
        if now - self._last_watch > _STALL:
            _logger.warning(
                "the supervisor did not run for %.1f s; the watchdog starts over",
                now - self._last_watch,
            )
            self._watch_from = now
        self._last_watch = now
        watched = [(shard, self._workers[shard]) for shard in self._announced]
        watched += list(self._handover.items())
        for shard, child in watched:
            if child.pid in self._watchdog_kills:
                continue  # killed already, not yet reaped
            silent = now - max(self._status.last_beat(child.slot), self._watch_from)
            allowed = self.heartbeat_timeout
            if not self._status.database_answers(child.slot):
                allowed *= _DATABASE_DOWN_PATIENCE
            if silent > allowed:
                _logger.error(
                    "worker %d (pid %d): its request handlers answered no watchdog beat "
                    "for %.1f s; killing it",
                    shard,
                    child.pid,
                    silent,
                )
                self._watchdog_kills.add(child.pid)
                child.process.kill()  # reaped and restarted on a following pass

    # -- rolling restart -------------------------------------------------------------------

    def _advance_reload(self) -> None:
        """Starts the next shard's replacement once the previous one took over."""
        if not self._reload_queue or self._handover or not self._free_slots:
            return
        if len(self._announced) < self.workers:
            return  # a worker is (re)starting: replace nothing beside it
        with self._lock:
            shard = self._reload_queue.pop(0)
            self._handover[shard] = self._workers[shard]
        self._start(shard)

    def _retire(self, child: _Child, signum: int, timeout: float) -> None:
        """Tells a process to stop; it is killed if it has not exited within `timeout`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
        with self._lock:
            self._retiring.append((child, time.monotonic() + timeout))

    def _reap_retiring(self) -> None:
        now = time.monotonic()
        for entry in list(self._retiring):
            child, deadline = entry
            if child.process.exitcode is not None:
                with self._lock:
                    self._retiring.remove(entry)
                if child.process.exitcode != 0:
                    _logger.warning(
                        "pid %d %s while it drained", child.pid, _describe(child.process.exitcode)
                    )
                self._release(child)
            elif now >= deadline:
                _logger.warning("pid %d did not stop in time; killing it", child.pid)
                child.process.kill()
                with self._lock:  # killed once; reaped on a following pass
                    self._retiring[self._retiring.index(entry)] = (child, float("inf"))

    # -- stopping --------------------------------------------------------------------

    def _begin_stop(self, exit_code: int) -> None:
        if self._stop_deadline is not None:
            return
        self._exit_code = exit_code
        self._stop_deadline = time.monotonic() + self.drain_timeout
        with self._lock:
            self._reload_queue.clear()
        _logger.info(
            "stopping %d workers (drain up to %.1f s)", len(self._workers), self.drain_timeout
        )
        self._signal_all(signal.SIGTERM)

    def _finish_stop(self) -> bool:
        """True once every process is gone; kills the rest at the drain deadline."""
        for shard, child in list(self._workers.items()):
            if child.process.exitcode is not None:
                self._forget(shard)
        for shard, child in list(self._handover.items()):
            if child.process.exitcode is not None:
                with self._lock:
                    del self._handover[shard]
                self._release(child)
        for entry in list(self._retiring):
            if entry[0].process.exitcode is not None:
                with self._lock:
                    self._retiring.remove(entry)
                self._release(entry[0])
        self._reap_standbys()
        if not self._children():
            _logger.info("all workers stopped")
            return True
        assert self._stop_deadline is not None
        if time.monotonic() < self._stop_deadline:
            return False
        _logger.warning("killing %d workers still draining", len(self._children()))
        self._kill_all()
        return True

    def _signal_all(self, signum: int) -> None:
        for child in self._children():
            if child.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def _kill_all(self) -> None:
        with self._lock:
            children = [
                *self._workers.values(),
                *self._handover.values(),
                *self._standbys,
                *(child for child, _ in self._retiring),
            ]
            self._workers, self._handover, self._standbys, self._retiring = {}, {}, [], []
        self._announced.clear()
        for child in children:
            if child.process.exitcode is None:
                child.process.kill()
            child.process.join(5.0)
            self._release(child)

    def _forget(self, shard: int) -> None:
        with self._lock:
            child = self._workers.pop(shard)
        self._announced.discard(shard)
        self._release(child)

    # -- admin endpoint --------------------------------------------------------------------

    def _start_admin(self) -> Any:
        """The admin HTTP endpoint, and the directory the workers write metrics into."""
        from shardproxy import admin  # prometheus_client, only when there is an endpoint

        self._metrics = admin.MetricsDirectory(os.path.join(self._socket_dir, "metrics"))
        server = admin.AdminServer(self.admin_host, self.admin_port, self, self._metrics)
        self.admin_port = server.port
        _logger.info("admin endpoint on http://%s", server.address)
        return server


def _describe(exit_code: int) -> str:
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}"
