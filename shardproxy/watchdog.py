"""A worker's side of the watchdog: beats that travel the path of a client request.

gunicorn's sync worker proves it is alive from the loop that serves requests; a
gRPC worker serves from a pool of handler threads, and a thread beside the pool
would keep beating while every handler is stuck. So the beat is a request: a
thread of the worker sends a tiny RPC (`shardproxy.Watchdog/Beat`) to the
worker's own gRPC server, and the handler that answers it, one of the pool's
threads, records the beat (`WorkerSpec.heartbeat`). When every handler thread is
blocked, or the process is stopped (SIGSTOP), no beat is recorded and the
supervisor kills the worker once its beat is `--watchdog-timeout` seconds old.

The beat must reach this very process: a connection to the shared TCP port may
land on another worker (SO_REUSEPORT), so the server also listens on a Unix socket
of this process alone, and the beats go there. A beat waits in the same queue as
the clients' requests; a worker so overloaded that a request waits longer than the
timeout counts as stuck.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

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


class Pinger:
    """Sends a beat to `target` (this worker's own socket) every `interval` seconds."""

    def __init__(self, target: str, interval: float) -> None:
        self._target = target
        self._interval = interval
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
            while not self._stop.wait(self._interval):
                try:
                    # A stuck pool leaves the beat waiting: that is the point. Waiting
                    # a few intervals at most lets the next beat try again.
                    send(b"", timeout=self._interval * 4)
                except grpc.RpcError as exc:
                    _logger.debug("watchdog beat not answered: %s", exc)
