"""One worker process: a store, the study caches, the service, the router, the front, gRPC.

A worker is both a front (it terminates client gRPC on the shared port) and the
owner of one shard of the studies. `Worker` assembles the parts. `prepare` and
`serve` are its life in a worker process, as `child` runs them: `prepare` opens
the database before the process knows its shard (a standby does it ahead),
`serve` serves that shard until the supervisor says stop, then drains.
Everything that opens a socket or a database connection is created here, after
the process started, never before a fork.

Besides Optuna's service the gRPC server serves the standard health service
(`health`) and the watchdog's beats (`watchdog`, also on a Unix socket of the
process's own), and its options carry the connection policy of `Config`:
keepalive, a maximum connection age, and the request size limit. In a worker
process, `serve` also exports its metrics when the instance has an admin
endpoint (`metrics`), publishes its database reachability to the supervisor, and,
when a reload replaced it, lets its clients go before it drains (`handover`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from shardproxy import __version__, codec
from shardproxy.child import BootFailure, WorkerSpec, name_process
from shardproxy.config import Config
from shardproxy.extension import ClientExtension
from shardproxy.extension_wire import EXTENSION_SERVICE
from shardproxy.forwarding import ForwardClient, ForwardServer
from shardproxy.front import Front
from shardproxy.handover import client_connections, close_listeners, connection_turnover
from shardproxy.health import Health
from shardproxy.heap import keep_large_blocks_apart
from shardproxy.logs import configure_logging, set_worker
from shardproxy.metrics import Metrics, count_statements
from shardproxy.ports import grpc_address
from shardproxy.reply_room import ReplyRoom
from shardproxy.routing import Router
from shardproxy.rpc import extension_handlers, method_handlers
from shardproxy.service import Service
from shardproxy.store import Store
from shardproxy.store.database import driver_url
from shardproxy.study_caches import StudyCaches
from shardproxy.tls import server_credentials
from shardproxy.trial_reads import TrialReads
from shardproxy.urls import masked_url
from shardproxy.watchdog import CountingExecutor, Pinger, beat_handler
from shardproxy.wire import SERVICE

_logger = logging.getLogger(__name__)

# How long a forwarded request waits for its owner to come back after a crash; the
# supervisor restarts a worker within about a second.
OWNER_RESTART_WAIT = 10.0
# How much longer than the owner's retry deadline a forwarded read waits for its
# reply (a forwarded write waits for the owner's answer: see `Front`).
FORWARDED_READ_MARGIN = 30.0
_INT_MAX = (1 << 31) - 1  # gRPC's integer options are C ints
# Calls that reached the server but that its serving thread has not taken yet wait
# in gRPC's own queue. Past 1 000 of them in one process gRPC drops new ones at
# random, with CANCELLED, and every one past 3 000 (its defaults for these
# options): a burst of a few thousand clients on one worker, as when a campaign
# starts or its clients reconnect, then abandoned 2-5 % of the trials of
# `bench.run --gen 4x500 --workers 1` that waiting would have served (the echo
# floor, which does nothing but answer, lost more). They all wait instead: a
# worker too slow to take them at all is the watchdog's to replace.
QUEUE_EVERY_CALL = [
    ("grpc.server.max_pending_requests", _INT_MAX),
    ("grpc.server.max_pending_requests_hard_limit", _INT_MAX),
]
# How often a serving worker publishes its state: database reachability for the
# supervisor's readiness, and the cache gauges.
_STATUS_INTERVAL = 1.0
_HANDOVER_POLL = 0.1


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
        self,
        config: Config,
        shard: Shard | None = None,
        store: Store | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`store`: one `open_store(config)` made ahead (a standby's); else opened here."""
        self.config = config
        self.shard = shard = shard or Shard()
        self.store = store = store or open_store(config)
        self.metrics = metrics = metrics or Metrics()
        self.caches = StudyCaches(
            # A first read streams the study; a sync reads its delta as a list.
            lambda study_id, id_greater_than, ids: store.stream_study(study_id)
            if id_greater_than < 0 and not ids
            else store.load_trials(study_id, id_greater_than=id_greater_than, ids=ids),
            config.cache_max_trials,
            max_bytes=config.cache_bytes_per_worker,
            sync_window=config.sync_window,
            on_sync=metrics.cache_synced if metrics.exported else None,
            # SQLite hands out a deleted row's id again (see cache.py).
            ids_reused=driver_url(config.storage_url).get_backend_name() == "sqlite",
            on_replaced=lambda study_id: self.front.study_replaced(study_id),
        )
        self.trial_reads = TrialReads(
            store.get_trials, on_batch=metrics.trials_read if metrics.exported else None
        )
        self.room = ReplyRoom(
            self.caches, on_waited=metrics.reply_waited if metrics.exported else None
        )
        self.service = Service(store, self.caches, self.trial_reads, self.room)
        self.router = Router(shard.index, shard.count, store.get_study_id_of_trial)
        self._forwarders = [
            None
            if index == shard.index
            # Wait for a restarting owner rather than failing the client at once.
            else ForwardClient(
                path,
                connect_timeout=OWNER_RESTART_WAIT,
                max_request_size=config.max_request_bytes,
            )
            for index, path in enumerate(shard.peer_socket_paths)
        ]
        self.front = Front(
            self.service,
            self.router,
            self._forwarders,
            self.metrics,
            read_timeout=config.retry_deadline + FORWARDED_READ_MARGIN,
            room=self.room,
            extension=ClientExtension(store, self.caches,
                                      _die_after_commit if config.fault_hooks else None),
        )
        self._forward_server: ForwardServer | None = None
        self._server = self._make_grpc_server()
        self.health = Health(
            store.ping,
            self._executor,
            interval=config.db_check_interval,
            down_after=config.db_down_after,
        )
        self.health.register(self._server)
        self.port = 0

    def start(self) -> int:
        """Binds the port (shared with the other workers) and starts serving."""
        address = grpc_address(self.config.host, self.config.port)
        if self.config.tls:
            credentials = server_credentials(
                self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca
            )
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        if self.config.insecure_port:  # plaintext beside TLS, shared as the port is
            plain = grpc_address(self.config.host, self.config.insecure_port)
            if not self._server.add_insecure_port(plain):
                raise OSError(f"cannot listen on {plain}")
        if self.shard.count > 1:
            path = self.shard.peer_socket_paths[self.shard.index]
            self._forward_server = ForwardServer(
                path,
                self.front.handle_forwarded,
                max_request_size=self.config.max_request_bytes,
                room=self.room,
            )
        self._server.start()
        self.health.start()
        _logger.info(
            "worker %d/%d listening on %s, codec %s, database %s",
            self.shard.index,
            self.shard.count,
            grpc_address(self.config.host, self.port),
            codec.describe(),
            masked_url(self.config.storage_url),
        )
        return self.port

    def front_requests(self) -> int:
        """RPCs this worker received from clients (served here or forwarded)."""
        return sum(n for k, n in self.metrics.snapshot().items() if k.startswith("received."))

    def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, then stops accepting, lets in-flight RPCs finish, closes.

        Health turns NOT_SERVING first and the worker goes on serving for
        `drain_delay` seconds, so that a load balancer probing it stops sending
        before the port closes. In-flight RPCs then have `grace` seconds (by
        default what is left of `drain_timeout`, the supervisor's deadline).
        """
        delay = self.config.drain_delay
        if grace is None:
            grace = max(0.0, self.config.drain_timeout - delay)
        self.health.drain()
        if delay > 0:
            time.sleep(delay)
        self._server.stop(grace).wait()
        self.health.close()
        _logger.info("worker %d stopped: %s", self.shard.index, self.metrics.summary())
        if self._forward_server is not None:
            self._forward_server.close()
        for forwarder in self._forwarders:
            if forwarder is not None:
                forwarder.close()
        self.store.close()

    def calls_begun(self) -> int:
        """Calls and other tasks the request handler threads have begun (see `watchdog`)."""
        return self._executor.begun

    def add_watchdog(self, path: str, beat: Callable[[], None]) -> None:
        """Before `start`: answers watchdog beats, also on the Unix socket `path`."""
        self._server.add_generic_rpc_handlers((beat_handler(beat),))
        if not self._server.add_insecure_port("unix:" + path):
            raise OSError(f"cannot listen on unix:{path}")

    def hand_over(self, patient: Callable[[], bool]) -> None:
        """Before `stop`, once another process serves the shard: lets the clients go.

        No new connections; the ones open are served until they leave at their
        maximum age, while `patient()` holds, up to `connection_turnover` (see
        `handover`: a server stopping under load fails the calls it has not begun).
        """
        self.health.drain()
        if self.metrics.exported:
            self.metrics.set_cached(0, 0, 0)  # the replacement holds the shard now
        closed = close_listeners(self.port)
        deadline = time.monotonic() + connection_turnover(self.config)
        left = client_connections(self.port)
        _logger.info("worker %d hands its shard over: %d listener(s) closed, %d client "
                     "connection(s) to go", self.shard.index, closed, left)
        while left and patient() and time.monotonic() < deadline:
            time.sleep(_HANDOVER_POLL)
            left = client_connections(self.port)
        if left:
            _logger.info("worker %d: %d client connection(s) still open at the deadline",
                         self.shard.index, left)

    def block_handlers(self) -> None:
        """A fault for tests: every request handler thread blocks for good."""
        _logger.warning("worker %d: blocking every request handler thread", self.shard.index)
        forever = threading.Event()
        for _ in range(self.config.threads):
            self._executor.submit(forever.wait)

    def _make_grpc_server(self) -> grpc.Server:
        handlers = method_handlers(self.front, self.metrics, self.room)
        self._executor = CountingExecutor(
            max_workers=self.config.threads, thread_name_prefix="rpc"
        )
        extension = extension_handlers(self.front, self.metrics)
        return grpc.server(
            self._executor,
            handlers=[
                grpc.method_handlers_generic_handler(SERVICE, handlers),
                grpc.method_handlers_generic_handler(EXTENSION_SERVICE, extension),
            ],
            options=server_options(self.config),
        )


# A fault for tests (Config.fault_hooks): a keyed write whose request key starts so
# kills its owner's process after the write committed, before the reply leaves.
DIE_AFTER_COMMIT = "die-after-commit-"


def _die_after_commit(key: str, repeated: bool) -> None:
    if key.startswith(DIE_AFTER_COMMIT) and not repeated:
        _logger.warning("killing this worker after the commit of %s (a test's fault)", key)
        os.kill(os.getpid(), signal.SIGKILL)


def server_options(config: Config) -> list[tuple[str, int]]:
    """The gRPC server's options: port sharing, message sizes, keepalive, the queue of
    calls not yet taken, connection age."""

    def ms(seconds: float) -> int:
        return min(int(seconds * 1000), _INT_MAX)

    keepalive_ms = ms(config.keepalive_time) if config.keepalive_time > 0 else _INT_MAX
    options = [
        # The workers share the port; the supervisor made sure nobody else holds it.
        ("grpc.so_reuseport", 1),
        # A larger request is answered RESOURCE_EXHAUSTED; the worker carries on.
        ("grpc.max_receive_message_length", config.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        # Ping a silent connection, idle ones too (a dead client's connection would
        # otherwise hold its file and memory for gRPC's default two hours), and
        # without the default cap of two pings between data frames.
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Clients' own keepalive pings are welcome down to this interval (gRPC's
        # default of five minutes closes the connection of a client pinging every
        # minute).
        ("grpc.http2.min_ping_interval_without_data_ms", ms(config.min_ping_interval)),
        *QUEUE_EVERY_CALL,
    ]
    if config.max_connection_age > 0:
        options += [
            ("grpc.max_connection_age_ms", ms(config.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(config.max_connection_age_grace)),
        ]
    return options


# -- a worker's life in its process (see `child`) -------------------------------------


def prepare(config: Config) -> Store:
    """Runs first in every worker process, before it knows its shard."""
    keep_large_blocks_apart()
    configure_logging(config.log_level, config.log_format)
    if config.admin_port:  # metrics are exported: count the store's statements
        count_statements()
    try:
        return open_store(config)
    except Exception as exc:
        from shardproxy.startup import describe_database_error

        described = describe_database_error(exc, config.storage_url)
        if described is None:
            raise
        raise BootFailure(described[1]) from exc


def serve(config: Config, spec: WorkerSpec) -> None:
    """Serves `spec`'s shard until told to stop (SIGTERM, or the supervisor left); drains."""
    name_process(f"shardproxy-w{spec.shard_index}")
    set_worker(spec.shard_index)
    shard = Shard(spec.shard_index, spec.shard_count, list(spec.peer_socket_paths))
    store = spec.prepared if isinstance(spec.prepared, Store) else None
    metrics = _process_metrics(config, spec)
    worker = Worker(
        config.replace(port=spec.port, drain_timeout=spec.drain_timeout), shard, store, metrics
    )
    pinger = None
    if spec.heartbeat_interval is not None:  # the watchdog: beats through the handlers
        worker.add_watchdog(spec.process_socket_path, spec.heartbeat)
        pinger = Pinger("unix:" + spec.process_socket_path, spec.heartbeat_interval,
                        spec.heartbeat, worker.calls_begun)
    if config.fault_hooks:
        signal.signal(signal.SIGUSR2, lambda signum, frame: worker.block_handlers())
    worker.start()
    # What start-up built lives as long as the process: out of the collector's way,
    # so that a full collection (one runs after a study's first read, see `cache`)
    # walks the trials and requests, not the imported modules and the engine.
    gc.freeze()
    spec.notify_ready()
    if pinger is not None:
        pinger.start()
    while not spec.wait_for_stop(_STATUS_INTERVAL):
        spec.report_database(worker.health.database_up)
        if metrics.exported:
            metrics.set_cached(*worker.caches.totals())
    spec.report_serving(False)
    if pinger is not None:
        pinger.close()
    if spec.handing_over:  # a replacement took the shard (a reload)
        worker.hand_over(lambda: spec.handing_over)
    _logger.info("worker %d draining", shard.index)
    worker.stop()
    metrics.close()  # the last totals written
    if pinger is not None:
        with contextlib.suppress(OSError):
            os.unlink(spec.process_socket_path)


def _process_metrics(config: Config, spec: WorkerSpec) -> Metrics:
    """This process's metrics: exported to the supervisor's directory, if it has one."""
    if spec.metrics_dir is None:
        return Metrics()
    metrics = Metrics(exported=True, directory=spec.metrics_dir)
    metrics.install()
    metrics.set_build(__version__, codec.NAME, driver_url(config.storage_url).drivername)
    metrics.start_flushing()
    return metrics
