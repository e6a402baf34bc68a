"""One worker process: a store, the study caches, the service, the front, a gRPC server.

A worker is both a front (it terminates client gRPC on the shared port) and the
owner of one shard of the studies. `Worker` assembles the parts; `run_worker` is
the supervisor's target in each child process. Everything that opens a socket or
a database connection is created here, after the process started, never before
a fork.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from shardproxy import codec
from shardproxy.cache import StudyCaches
from shardproxy.config import Config, masked_url
from shardproxy.errors import StatusError
from shardproxy.front import Front
from shardproxy.metrics import Metrics
from shardproxy.routing import ForwardClient, ForwardServer, TrialStudyMap, owner_of
from shardproxy.service import METHODS, Service
from shardproxy.store import Store
from shardproxy.supervisor import WorkerSpec, name_process

_logger = logging.getLogger(__name__)

SERVICE_NAME = "optuna.StorageService"
# How long a forwarded request waits for its owner to come back after a crash; the
# supervisor restarts a worker within about a second.
OWNER_RESTART_WAIT = 10.0


@dataclass(frozen=True)
class Shard:
    """Which shard of the studies a worker owns, and how to reach its peers."""

    index: int = 0
    count: int = 1
    # One Unix socket path per shard; empty for a single worker.
    peer_socket_paths: list[str] = field(default_factory=list)


def open_store(config: Config) -> Store:
    """Opens the database and checks its schema: the part of a worker no shard changes."""
    return Store(
        config.storage_url,
        pool_size=config.db_pool_size,
        max_batch=config.max_batch,
        retry_deadline=config.retry_deadline,
        commit_window=config.commit_window,
    )


class Worker:
    def __init__(
        self, config: Config, shard: Shard | None = None, store: Store | None = None
    ) -> None:
        """`store`: one `open_store(config)` made ahead (a standby's); else opened here."""
        self.config = config
        self.shard = shard or Shard()
        self.store = store = store or open_store(config)
        self.caches = StudyCaches(
            lambda study_id, id_greater_than, ids: store.load_trials(
                study_id, id_greater_than=id_greater_than, ids=ids
            ),
            config.cache_max_trials,
            sync_window=config.sync_window,
        )
        self.service = Service(self.store, self.caches, TrialStudyMap())
        self.metrics = Metrics()
        self._forwarders: list[ForwardClient] = []
        self._forward_server: ForwardServer | None = None
        self.front = self._make_front()
        self._server = self._make_grpc_server()
        self.port = 0

    def start(self) -> int:
        """Binds the port (shared with the other workers) and starts serving."""
        address = f"{self.config.host}:{self.config.port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        if self.shard.count > 1:
            path = self.shard.peer_socket_paths[self.shard.index]
            self._forward_server = ForwardServer(path, self.service.handle_status)
        self._server.start()
        _logger.info(
            "worker %d/%d listening on %s:%d, codec %s, database %s",
            self.shard.index,
            self.shard.count,
            self.config.host,
            self.port,
            codec.describe(),
            masked_url(self.config.storage_url),
        )
        return self.port

    def front_requests(self) -> int:
        """RPCs this worker received from clients (served here or forwarded)."""
        return sum(n for k, n in self.metrics.snapshot().items() if k.startswith("received."))

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting, lets in-flight RPCs finish within `grace`, closes the pools."""
        grace = self.config.drain_timeout if grace is None else grace
        self._server.stop(grace).wait()
        _logger.info("worker %d stopped: %s", self.shard.index, self.metrics.summary())
        if self._forward_server is not None:
            self._forward_server.close()
        for forwarder in self._forwarders:
            forwarder.close()
        self.store.close()

    def run_until_signalled(self) -> None:
        """Serves until SIGTERM or SIGINT, then drains and returns."""
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        stop.wait()
        _logger.info("worker %d draining", self.shard.index)
        self.stop()

    def _make_front(self) -> Front | Service:
        if self.shard.count == 1:
            return self.service  # no routing with a single shard
        forwarders = [
            None
            if index == self.shard.index
            # Wait for a restarting owner rather than failing the client at once.
            else ForwardClient(path, connect_timeout=OWNER_RESTART_WAIT)
            for index, path in enumerate(self.shard.peer_socket_paths)
        ]
        self._forwarders = [f for f in forwarders if f is not None]
        count = self.shard.count
        return Front(
            self.service,
            self.shard.index,
            lambda study_id: owner_of(study_id, count),
            forwarders,
            self.metrics,
            forward_timeout=self.config.retry_deadline + 30.0,
        )

    def _make_grpc_server(self) -> grpc.Server:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                _rpc(self.front.handle, index, self.metrics)
            )
            for index, name in enumerate(METHODS)
        }
        return grpc.server(
            ThreadPoolExecutor(max_workers=self.config.threads, thread_name_prefix="rpc"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)],
            options=[
                # Several workers share the port; a lone one must own it outright.
                ("grpc.so_reuseport", 1 if self.shard.count > 1 else 0),
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ],
        )


def _rpc(
    handle: Callable[[int, bytes], bytes], method_index: int, metrics: Metrics
) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """A raw-bytes gRPC handler for one method: no generated message classes."""
    counter = f"received.{METHODS[method_index]}"

    def rpc(request: bytes, context: grpc.ServicerContext) -> bytes:
        metrics.add(counter)
        try:
            return handle(method_index, request)
        except StatusError as exc:
            context.abort(exc.code, exc.details)
        except Exception:
            _logger.exception("%s failed", METHODS[method_index])
            context.abort(grpc.StatusCode.INTERNAL, f"{METHODS[method_index]} failed")
        raise AssertionError("unreachable")  # context.abort always raises

    return rpc



def run_worker(config: Config, spec: WorkerSpec) -> None:
    """The supervisor's target: one worker serving its shard until told to stop.

    The supervisor's child entry point turns SIGTERM (and the supervisor's death)
    into `spec.wait_for_stop()` returning True; the worker then drains.
    """
    name_process(f"shardproxy-w{spec.shard_index}")
    shard = Shard(spec.shard_index, spec.shard_count, list(spec.peer_socket_paths))
    store = spec.prepared if isinstance(spec.prepared, Store) else None
    worker = Worker(config.replace(port=spec.port, drain_timeout=spec.drain_timeout), shard, store)
    worker.start()
    spec.notify_ready()
    interval = spec.heartbeat_interval
    while not spec.wait_for_stop(interval):
        spec.heartbeat()
    _logger.info("worker %d draining", shard.index)
    worker.stop()
