"""A worker's health, as gRPC's standard health service reports it, and the check that asks.

Every worker serves `grpc.health.v1.Health` beside Optuna's service, on the same
port (what `grpc_health_probe`, Kubernetes' gRPC probes and Envoy call). Both the
overall service `""` and `optuna.StorageService` are:

- SERVING while the worker serves, its database answers and its request handler
  threads begin calls;
- NOT_SERVING once the worker drains (set before it closes its port, so that load
  balancers stop sending first), for good;
- NOT_SERVING while its database has not answered for `down_after` seconds, and
  SERVING again, on its own, once it does;
- NOT_SERVING while its handler threads have begun no call for `STUCK_AFTER`
  seconds although one waited (every thread blocked), SERVING again once they do.

A Check (and the start of a Watch, which gRPC clients' own health checking opens)
is answered by a thread of its own, ahead of the clients' calls: under
overload those wait in the handlers' queue for seconds, and a check that waited
there took as long (p99 4.7–9.0 s with 2 000 clients without think time on one
two-core proxy, against 0.21–0.28 s on its own thread:
`bench/results/health-under-overload.md`). Kubernetes' default probe timeout of
one second would have turned a peak into restarts, or into a proxy taken out of
its Service. Whether the handlers take work is judged instead, from the calls
they begin (`watchdog.Stall`).

The database is watched by a probe, a `SELECT 1` through the store's read pool
every `interval` seconds from a thread of its own, rather than judged from the
outcomes of client requests: the probe costs the request path nothing (no hook,
no lock), sees an outage and the recovery when no client is sending, and a pause
in traffic is not mistaken for health. Its price is one trivial statement per
worker per interval. A second thread judges the age of the last answer, so that
a probe stuck in a connect that never returns still turns the worker NOT_SERVING,
and looks at the handlers.

`ask_health` is the client side (`shardproxy check`, the benchmark's probes and the
tests call it); `check_health` says in one line what it found.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shardproxy.ports import bare_host, grpc_address
from shardproxy.watchdog import CountingExecutor, Stall
from shardproxy.wire import SERVICE

_logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = (health.OVERALL_HEALTH, SERVICE)


# Seconds a worker's handler threads may begin no call, with one waiting, before
# its health says NOT_SERVING. All of them (64 by default) blocked that long is a
# stuck pool or a database that does not answer; a busy pool begins calls all the
# time. Well inside the watchdog's default timeout (30 s), which kills such a worker.
STUCK_AFTER = 5.0


class Health:
    """The health service of one worker and the probe that keeps it true."""

    def __init__(
        self,
        ping: Callable[[], None],
        handlers: CountingExecutor,
        *,
        interval: float,
        down_after: float,
    ) -> None:
        """`ping()` returns once the database answered and raises when it did not;
        `handlers` is the pool of the worker's request handler threads."""
        self.servicer = health.HealthServicer()
        self._ping = ping
        self._stall = Stall(handlers)
        self._interval = interval
        self._down_after = down_after
        self._last_answer = time.monotonic()  # the store was opened just now
        self._last_error = ""
        self._database_up = True
        self._handlers_begin = True
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe, name="health-probe", daemon=True),
            threading.Thread(target=self._judge, name="health-judge", daemon=True),
        ]
        self._health_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self._set(SERVING)

    def register(self, server: grpc.Server) -> None:
        servicer = self.servicer

        def check(request: Any, context: grpc.ServicerContext) -> Any:
            return servicer.Check(request, context)

        def watch(request: Any, context: grpc.ServicerContext,
                  send_response_callback: Any = None) -> Any:
            return servicer.Watch(request, context, send_response_callback)

        # grpcio runs a method on the pool named by its behaviour's
        # `experimental_thread_pool`; a non-blocking Watch (what the servicer is
        # made for) returns at once and its updates are sent by whoever sets a status.
        for method in (check, watch):
            setattr(method, "experimental_thread_pool", self._health_thread)  # noqa: B010
        setattr(watch, "experimental_non_blocking", True)  # noqa: B010
        methods = SimpleNamespace(Check=check, List=servicer.List, Watch=watch)
        health_pb2_grpc.add_HealthServicer_to_server(methods, server)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def database_up(self) -> bool:
        return self._database_up

    def drain(self) -> None:
        """NOT_SERVING from now on, whatever the database does."""
        self._stop.set()
        self.servicer.enter_graceful_shutdown()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                # A probe stuck in a connect is left behind: it is a daemon thread.
                thread.join(timeout=1.0)
        self._health_thread.shutdown(wait=False)

    def _set(self, status: int) -> None:
        for service in SERVICES:
            self.servicer.set(service, status)

    def _serving(self) -> bool:
        return self._database_up and self._handlers_begin

    def _probe(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._ping()
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
            else:
                self._last_answer = time.monotonic()

    def _judge(self) -> None:
        period = min(self._interval, self._down_after) / 2 or self._interval
        while not self._stop.wait(period):
            serving = self._serving()
            self._judge_database()
            self._judge_handlers()
            if self._serving() == serving:
                continue
            if self._stop.is_set():
                return  # draining: NOT_SERVING stays
            self._set(SERVING if self._serving() else NOT_SERVING)

    def _judge_database(self) -> None:
        silent = time.monotonic() - self._last_answer
        up = silent <= self._down_after
        if up == self._database_up:
            return
        self._database_up = up
        if up:
            _logger.info("the database answers again%s", self._then())
        else:
            _logger.warning(
                "the database has not answered for %.1f s: health NOT_SERVING (%s)",
                silent,
                self._last_error.splitlines()[0] if self._last_error else "no answer yet",
                extra={"cause": "database-down"},
            )

    def _judge_handlers(self) -> None:
        stalled = self._stall.look(time.monotonic())
        begin = stalled <= STUCK_AFTER
        if begin == self._handlers_begin:
            return
        self._handlers_begin = begin
        if begin:
            _logger.info("the request handler threads begin calls again%s", self._then())
        else:
            _logger.warning(
                "the request handler threads have begun no call for %.1f s, one waiting: "
                "health NOT_SERVING", stalled, extra={"cause": "handlers-stuck"},
            )

    def _then(self) -> str:
        """What a recovery turns the health to: SERVING once nothing else holds it
        down, and never while draining, which keeps NOT_SERVING."""
        return ": health SERVING" if self._serving() and not self._stop.is_set() else ""


@dataclass(frozen=True)
class Answer:
    """What one health check came back with: the status the service answered, or
    the gRPC code its call failed with, never both. `name` is either's name; UNKNOWN
    is both a serving status and a gRPC code, so a caller that must tell them apart
    looks at `code`."""

    status: int | None = None  # a HealthCheckResponse.ServingStatus, when answered
    code: grpc.StatusCode | None = None  # when the call failed
    details: str = ""  # the failed call's own words

    @property
    def serving(self) -> bool:
        return self.status == SERVING

    @property
    def name(self) -> str:
        if self.code is not None:
            return self.code.name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(self.status or 0)


def ask_health(
    target: str,
    timeout: float,
    service: str = health.OVERALL_HEALTH,
    credentials: grpc.ChannelCredentials | None = None,
) -> Answer:
    """One Check of `service` at `target` ("host:port"), over TLS with `credentials`.

    Each call dials a new connection, as a balancer's or Kubernetes' probe does: a
    channel of its own with its own subchannels, so a closed port shows as one and
    the kernel hands the connection to any of the workers sharing the port."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call):
                return Answer(code=exc.code(), details=exc.details() or "")
            return Answer(code=grpc.StatusCode.UNKNOWN, details=str(exc))
    return Answer(status=reply.status)


def check_health(
    host: str,
    port: int,
    timeout: float,
    service: str = health.OVERALL_HEALTH,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[bool, str]:
    """(serving, one line saying what was found) from `host:port`'s health service;
    over TLS with `credentials`."""
    target = grpc_address(_dialable(host), port)
    answer = ask_health(target, timeout, service, credentials)
    if answer.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return False, f"{target}: no answer within {timeout:g} s"
    if answer.code == grpc.StatusCode.NOT_FOUND:
        return False, f"{target}: unknown service {service!r}"
    if answer.code == grpc.StatusCode.UNIMPLEMENTED:
        return False, f"{target}: no gRPC health service there"
    if answer.code is not None:
        return False, f"{target}: unreachable ({answer.details})"
    return answer.serving, f"{target} {service or '(overall)'}: {answer.name}"


def _dialable(host: str) -> str:
    """The address to dial for a listening host: a wildcard means this machine."""
    bare = bare_host(host)
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bare == "::":
        return "::1"
    return host
