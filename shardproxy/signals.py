"""Signals for a main loop: handlers only queue the signal and wake the loop (a self-pipe).

The loop waits on `wake_fd` beside whatever else it waits for (the workers'
sentinels) and then dispatches the queued signals from its own thread, never from
inside a handler, so no handler runs in the middle of the loop's own work.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

_logger = logging.getLogger(__name__)


class SignalQueue:
    """Queued signals and the pipe that wakes the loop when one arrives."""

    def __init__(self) -> None:
        self._queued: collections.deque[int] = collections.deque()
        self.wake_fd, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def put(self, signum: int) -> None:
        """What the handlers do; also the way to signal a loop run in another thread."""
        self._queued.append(signum)
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            os.write(self._wake_write, b"\0")

    def drain_wake_ups(self) -> None:
        """Empties the pipe after the loop woke on it."""
        with contextlib.suppress(BlockingIOError):
            os.set_blocking(self.wake_fd, False)
            os.read(self.wake_fd, 4096)

    def install(self, *signals: signal.Signals) -> Callable[[], None]:
        """Queues `signals` from now on; returns what restores the previous handlers.
        Only the main thread may install handlers: elsewhere, callers use `put`."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: FrameType | None) -> None:
            self.put(signum)

        previous = {s: signal.signal(s, handler) for s in signals}

        def restore() -> None:
            for signum, previous_handler in previous.items():
                signal.signal(signum, previous_handler)

        return restore

    def dispatch(self, target: object) -> None:
        """Calls `target.handle_<name>()` for each queued signal (SIGTERM: `handle_term`)."""
        while self._queued:
            name = signal.Signals(self._queued.popleft()).name
            handle = getattr(target, "handle_" + name[3:].lower(), None)
            if handle is None:
                _logger.warning("ignoring %s", name)
            else:
                handle()

    def close(self) -> None:
        os.close(self.wake_fd)
        os.close(self._wake_write)
