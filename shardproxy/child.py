"""A worker process's side of the supervisor: what it is given, and its life.

The supervisor spawns each worker with `child_main(target, prepare, spec)`:

1. `prepare()` runs first: the work that does not depend on the shard (imports,
   opening the database). Its result is kept in `spec.prepared`.
2. A standby (started without a shard, `spec.assignment` set) then names itself
   `STANDBY_PROCESS_NAME` and waits until the supervisor sends it a shard index.
3. `target(spec)` serves the shard. It calls `spec.notify_ready()` once it serves,
   `spec.heartbeat()` every `spec.heartbeat_interval` seconds from whatever proves
   it healthy (a worker: from a request its own request handlers answered, so that
   a stuck handler pool stops the beat), reports whether it serves and whether its
   database answers (`report_serving`, `report_database`, read by readiness checks),
   and returns once it has drained after `spec.wait_for_stop()` returned True
   (SIGTERM, or the supervisor is gone). SIGHUP stops it too, with
   `spec.handing_over` set: a replacement took its shard, and it may first let its
   clients leave at their own pace (see `handover`); a SIGTERM after it clears
   the flag again (no more waiting).
4. The process exits: 0 after a drain, 1 when the target failed after it was
   ready, `EXIT_BOOT_FAILURE` when it failed before (the supervisor then stops
   instead of restarting it forever).

`target` and `prepare` must be picklable: module-level functions, `functools.partial`s
of them, or `Entry`s, which name a function that only the child imports (so the
supervisor never imports gRPC or a database driver).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from types import FrameType
from typing import Any

_logger = logging.getLogger(__name__)

EXIT_BOOT_FAILURE = 3  # a worker failed before it was ready (gunicorn's WORKER_BOOT_ERROR)
# A standby's name in ps/top once it has prepared, until it is given a shard.
STANDBY_PROCESS_NAME = "shardproxy-idle"
_PARENT_CHECK_INTERVAL = 1.0


class BootFailure(Exception):
    """A process cannot start, for a reason its message says in full: logged as one
    line, without a traceback (every worker may fail alike: the database went away
    between the start-up check and the workers' start)."""


@dataclass(frozen=True)
class Entry:
    """`module.function(*args, ...)`, imported only when called (in the child)."""

    module: str
    function: str
    args: tuple[Any, ...] = ()

    def __call__(self, *more: Any) -> Any:
        function = getattr(importlib.import_module(self.module), self.function)
        return function(*self.args, *more)


class WorkerStatus:
    """Per process slot, in shared memory: ready, serving, database answering, last beat.

    A slot belongs to one process from its start to its exit (a standby keeps its
    slot when it takes a shard), so that an old worker still draining beside its
    replacement never writes over the replacement's status. Beats are monotonic
    seconds: CLOCK_MONOTONIC is one clock for all processes of the machine.
    """

    def __init__(self, context: SpawnContext, slots: int) -> None:
        self.slots = slots
        self._ready = context.RawArray("b", slots)
        self._serving = context.RawArray("b", slots)
        self._database = context.RawArray("b", slots)
        self._beats = context.RawArray("d", slots)

    def reset(self, slot: int) -> None:
        self._ready[slot] = 0
        self._serving[slot] = 0
        self._database[slot] = 1  # it opened the database before it can be ready
        self._beats[slot] = time.monotonic()

    def mark_ready(self, slot: int) -> None:
        self.beat(slot)
        self._serving[slot] = 1
        self._ready[slot] = 1

    def beat(self, slot: int) -> None:
        self._beats[slot] = time.monotonic()

    def set_serving(self, slot: int, serving: bool) -> None:
        self._serving[slot] = int(serving)

    def set_database(self, slot: int, answers: bool) -> None:
        self._database[slot] = int(answers)

    def is_ready(self, slot: int) -> bool:
        return bool(self._ready[slot])

    def is_serving(self, slot: int) -> bool:
        return bool(self._serving[slot])

    def database_answers(self, slot: int) -> bool:
        return bool(self._database[slot])

    def last_beat(self, slot: int) -> float:
        return float(self._beats[slot])


class StopFlag:
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
    # This process's slot in `status`.
    slot: int = 0
    # Where this process writes its metrics (prometheus_client's multiprocess
    # directory), or None when the instance exports none.
    metrics_dir: str | None = None
    # A standby's end of the pipe its shard index arrives on (shard_index is -1 until
    # then); None for a worker started for its shard.
    assignment: multiprocessing.connection.Connection | None = field(
        default=None, repr=False, compare=False
    )
    # What `prepare()` returned in this process.
    prepared: Any = field(default=None, init=False, repr=False, compare=False)
    # Set by SIGHUP: stopping because a replacement took the shard (see above).
    handing_over: bool = field(default=False, init=False, repr=False, compare=False)
    _stop: StopFlag | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def role(self) -> str:
        """For logs: "worker N", or "standby" while it waits for a shard."""
        return "standby" if self.shard_index < 0 else f"worker {self.shard_index}"

    @property
    def socket_path(self) -> str:
        """This worker's own forwarding socket."""
        return self.peer_socket_paths[self.shard_index]

    @property
    def process_socket_path(self) -> str:
        """A Unix socket path of this process alone, beside the shards' sockets.

        Unlike `socket_path`, which a replacement of this worker takes over, no other
        process ever uses it: what is sent there reaches this process.
        """
        directory = os.path.dirname(self.peer_socket_paths[0])
        return os.path.join(directory, f"process-{os.getpid()}.sock")

    def notify_ready(self) -> None:
        """Tells the supervisor this worker serves (and from then on heartbeats)."""
        self.status.mark_ready(self.slot)

    def heartbeat(self) -> None:
        self.status.beat(self.slot)

    def report_serving(self, serving: bool) -> None:
        """False while the worker drains or otherwise refuses new work."""
        self.status.set_serving(self.slot, serving)

    def report_database(self, answers: bool) -> None:
        """Whether the worker's database answers (readiness checks ask)."""
        self.status.set_database(self.slot, answers)

    @property
    def stop_requested(self) -> bool:
        return self._stop_flag().is_set

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """True once the worker was told to stop (SIGTERM, or the supervisor is gone)."""
        return self._stop_flag().wait(timeout)

    def _stop_flag(self) -> StopFlag:
        if self._stop is None:
            self._stop = StopFlag()
        return self._stop


# -- the worker process's side -----------------------------------------------------------


def child_main(
    target: Callable[[WorkerSpec], None],
    prepare: Callable[[], Any] | None,
    spec: WorkerSpec,
) -> None:
    """The child's entry point: wires stopping and parent death, runs the target, exits."""
    stop = spec._stop_flag()

    def stop_now(signum: int, frame: FrameType | None) -> None:
        spec.handing_over = False
        stop.set()

    def hand_over(signum: int, frame: FrameType | None) -> None:
        spec.handing_over = True
        stop.set()

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGHUP, hand_over)
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
    except BootFailure as exc:
        _logger.error("%s failed to start: %s", spec.role, exc)
        code = EXIT_BOOT_FAILURE
    except BaseException:
        ready = spec.shard_index >= 0 and spec.status.is_ready(spec.slot)
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
