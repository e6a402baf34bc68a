"""A worker's side of the watchdog: beats that prove its request handlers take work.

gunicorn's sync worker proves it is alive from the loop that serves requests; a
gRPC worker serves from a pool of handler threads, and a thread beside the pool
would keep beating while every handler is stuck. So a beat needs evidence from
the pool itself, one of two kinds, checked every beat interval by a thread of the
worker (`Pinger`):

- The pool's threads began calls since the last look (`CountingExecutor` counts
  them): the handlers serve, however long calls wait in the queue before them.
- Otherwise (an idle worker has nothing to count) a tiny RPC
  (`shardproxy.Watchdog/Beat`) sent to the worker's own gRPC server, and the handler
  that answers it, one of the pool's threads, records the beat.

When every handler thread is blocked, the count stands still and the beat RPC
waits behind them; when the process is stopped (SIGSTOP), nothing runs. No beat
is recorded then, and the supervisor kills the worker once its beat is
`--watchdog-timeout` seconds old (`WorkerSpec.heartbeat`). A worker that is only
overloaded keeps beating: under 10 000 clients without think time
(`bench.run --gen 4x2500 --workers 1`) a call waited over 30 s in the queue, and
beats that had to wait there too had the watchdog kill the worker, serving all the
while, twice in a minute; 17 732 trials failed with the calls in flight on its
connections (`bench/results/watchdog-overload.md`).

The beat RPC must reach this very process: a connection to the shared TCP port
may land on another worker (SO_REUSEPORT), so the server also listens on a Unix
socket of this process alone, and the beats go there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

_logger = logging.getLogger(__name__)

SERVICE = "shardproxy.Watchdog"
BEAT = f"/{SERVICE}/Beat"


def beat_handler(beat: Callable[[], None]) -> grpc.GenericRpcHandler:
    """The service answering beats: each one calls `beat()` from a handler thread."""

    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        beat()
        return b""

    method = grpc.unary_unary_rpc_method_handler(answer)  # raw bytes both ways
    return grpc.method_handlers_generic_handler(SERVICE, {"Beat": method})


class CountingExecutor(ThreadPoolExecutor):
    """The request handlers' pool, counting the tasks its threads have begun.

    Counted when a thread begins a task, not when the task is queued: calls keep
    arriving at a pool whose every thread is stuck. The count is not locked, so
    two threads beginning at once may count one: only whether it moved is read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.begun = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(self._begin, fn, *args, **kwargs)

    def _begin(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.begun += 1
        return fn(*args, **kwargs)

    def submit_uncounted(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        """Queues `fn` without counting it when it begins: a task of the worker's own,
        which must not pass for a client's call in the watchdog's eyes."""
        return super().submit(fn, *args)


def _nothing() -> None:
    pass


class Stall:
    """How long a pool of handler threads has begun no task although one waited.

    Found by looking now and then (`look`): when the pool began calls since the last
    look it is not stalled, however long the queue before its threads. When it began
    none, a task that does nothing is queued (one at a time, not counted as a call):
    an idle pool begins it at once, which the next look sees, and a pool whose every
    thread is blocked leaves it waiting, the stall growing from the look that queued
    it. Not counted, so that the watchdog's pinger still proves an idle worker's
    gRPC server with its own beat RPC, not with these tasks.
    """

    def __init__(self, pool: CountingExecutor) -> None:
        self._pool = pool
        self._seen = pool.begun
        self._quiet_since: float | None = None
        self._waiting: Future[None] | None = None

    def look(self, now: float) -> float:
        """Seconds, at `now` (monotonic), since the pool last showed it begins tasks."""
        begun = self._pool.begun
        ran = self._waiting is not None and self._waiting.done()
        if ran:
            self._waiting = None
        if begun != self._seen or ran:
            self._seen = begun
            self._quiet_since = None
            return 0.0
        if self._quiet_since is None:
            self._quiet_since = now
        if self._waiting is None:
            try:
                self._waiting = self._pool.submit_uncounted(_nothing)
            except RuntimeError:  # shut down: nothing begins there any more
                pass
        return now - self._quiet_since


class Pinger:
    """Every `interval` seconds: `beat()` if the handlers began calls since the last
    look (`calls_begun()` moved), else a beat RPC to `target`, this worker's own
    socket, whose handler beats. The looks go on while a beat RPC waits: calls
    begun meanwhile beat at the next look, not when the RPC's wait ends."""

    def __init__(
        self,
        target: str,
        interval: float,
        beat: Callable[[], None],
        calls_begun: Callable[[], int],
    ) -> None:
        self._target = target
        self._interval = interval
        self._beat = beat
        self._calls_begun = calls_begun
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog-pinger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        with grpc.insecure_channel(self._target) as channel:
            send = channel.unary_unary(BEAT)
            seen = self._calls_begun()
            waiting: grpc.Future | None = None
            while not self._stop.wait(self._interval):
                begun = self._calls_begun()
                if begun != seen:  # the beat RPC's own call too, once begun
                    seen = begun
                    self._beat()
                elif waiting is None or waiting.done():
                    # A stuck pool leaves the beat waiting: that is the point. Waiting
                    # a few intervals at most lets a later look send another.
                    waiting = send.future(b"", timeout=self._interval * 4)
                    waiting.add_done_callback(_log_unanswered)


def _log_unanswered(beat: grpc.Future) -> None:
    if not beat.cancelled() and beat.exception() is not None:  # cancelled: closing
        _logger.debug("watchdog beat not answered: %s", beat.exception())
