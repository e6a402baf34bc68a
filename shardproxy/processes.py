"""The supervisor's processes: spawning one in a status slot, and releasing it after it exits.

Every process the supervisor runs (a worker, a standby, an old worker draining
after a reload) has a slot of its own in the shared `WorkerStatus`, so a process
draining beside its replacement never writes the replacement's status. The slots
are sized once, when the supervisor starts: the workers, the standbys, as many old
processes draining after a reload, and the replacement in a reload's handover.

Processes are started with the `spawn` method, so no gRPC (or database) state
ever crosses a fork; this module imports neither.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

from shardproxy.child import WorkerSpec, WorkerStatus, child_main


@dataclass(eq=False)
class Child:
    """One spawned process and its slot in the shared status."""

    process: SpawnProcess
    slot: int
    # A standby's end of the pipe its shard index is sent on.
    assignment: multiprocessing.connection.Connection | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # started
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process.exitcode is not None


class Processes:
    """Spawns `target` in free status slots, and knows every process not yet released."""

    def __init__(
        self,
        target: Callable[[WorkerSpec], None],
        prepare: Callable[[], Any] | None,
        slots: int,
        on_exit: Callable[[int], None] = lambda pid: None,
    ) -> None:
        """`prepare`: what a standby runs before it waits for a shard (see `child`).
        `on_exit(pid)`: called as a process is released, for what was kept per pid."""
        self.target = target
        self.prepare = prepare
        self.on_exit = on_exit
        self.context = multiprocessing.get_context("spawn")
        self.status = WorkerStatus(self.context, slots)
        self._free_slots = list(range(slots))
        self._unreleased: list[Child] = []  # spawned, oldest first
        self._lock = threading.Lock()  # the admin endpoint's thread reads the list

    @property
    def has_free_slot(self) -> bool:
        return bool(self._free_slots)

    def spawn(self, spec_for: Callable[[int], WorkerSpec], name: str, *, standby: bool) -> Child:
        """Starts a process with the spec `spec_for(slot)` builds for a free slot.

        A standby gets the receiving end of a pipe in its spec; its shard index is
        sent on the other end, kept in `Child.assignment`.
        """
        slot = self._free_slots.pop(0)
        self.status.reset(slot)
        spec = spec_for(slot)
        receive = send = None
        if standby:
            receive, send = self.context.Pipe(duplex=False)
            spec.assignment = receive
        process = self.context.Process(
            target=child_main, args=(self.target, self.prepare, spec), name=name
        )
        process.start()
        if receive is not None:
            receive.close()  # the child has its own copy now
        child = Child(process, slot, send)
        with self._lock:
            self._unreleased.append(child)
        return child

    def release(self, child: Child) -> None:
        """After the process exited: its slot, its pipe, and what was kept for its pid."""
        pid = child.process.pid
        with self._lock:
            self._unreleased.remove(child)
        self._free_slots.append(child.slot)
        self._free_slots.sort()
        if child.assignment is not None:
            child.assignment.close()
        if pid is not None:
            self.on_exit(pid)
        with contextlib.suppress(ValueError):  # still running (a join timed out)
            child.process.close()

    def unreleased(self) -> list[Child]:
        """Every process spawned and not yet released: alive, or exited and not reaped."""
        with self._lock:
            return list(self._unreleased)

    def signal_all(self, signum: int) -> None:
        for child in self.unreleased():
            if not child.exited:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def kill_all(self) -> None:
        """Kills every process not yet released, waits for each and releases it."""
        for child in self.unreleased():
            if not child.exited:
                child.process.kill()
            child.process.join(5.0)
            self.release(child)


def describe(exit_code: int) -> str:
    """How a process ended, for the log: "was killed by SIGKILL", "exited with code 3"."""
    if exit_code < 0:
        return f"was killed by {signal.Signals(-exit_code).name}"
    return f"exited with code {exit_code}"
