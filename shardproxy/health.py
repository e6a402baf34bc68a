"""A worker's health, as gRPC's standard health service reports it, and the check that asks.

Every worker serves `grpc.health.v1.Health` beside Optuna's service, on the same
port and handler threads, so a Check is answered only by a worker that can answer
a client (what `grpc_health_probe`, Kubernetes' gRPC probes and Envoy call). Both
the overall service `""` and `optuna.StorageService` are:

- SERVING while the worker serves and its database answers;
- NOT_SERVING once the worker drains (set before it closes its port, so that load
  balancers stop sending first), for good;
- NOT_SERVING while its database has not answered for `down_after` seconds, and
  SERVING again, on its own, once it does.

The database is watched by a probe, a `SELECT 1` through the store's read pool
every `interval` seconds from a thread of its own, rather than judged from the
outcomes of client requests: the probe costs the request path nothing (no hook,
no lock), sees an outage and the recovery when no client is sending, and a pause
in traffic is not mistaken for health. Its price is one trivial statement per
worker per interval. A second thread judges the age of the last answer, so that
a probe stuck in a connect that never returns still turns the worker NOT_SERVING.

`check_health` is the client side: `shardproxy check` and the tests call it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shardproxy.ports import bare_host, grpc_address
from shardproxy.wire import SERVICE

_logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = (health.OVERALL_HEALTH, SERVICE)


class Health:
    """The health service of one worker and the probe that keeps it true."""

    def __init__(self, ping: Callable[[], None], *, interval: float, down_after: float) -> None:
        """`ping()` returns once the database answered and raises when it did not."""
        self.servicer = health.HealthServicer()
        self._ping = ping
        self._interval = interval
        self._down_after = down_after
        self._last_answer = time.monotonic()  # the store was opened just now
        self._last_error = ""
        self._database_up = True
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._probe, name="health-probe", daemon=True),
            threading.Thread(target=self._judge, name="health-judge", daemon=True),
        ]
        self._set(SERVING)

    def register(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

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

    def _set(self, status: int) -> None:
        for service in SERVICES:
            self.servicer.set(service, status)

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
            silent = time.monotonic() - self._last_answer
            up = silent <= self._down_after
            if up == self._database_up:
                continue
            self._database_up = up
            if self._stop.is_set():
                return  # draining: NOT_SERVING stays
            if up:
                _logger.info("the database answers again: health SERVING")
                self._set(SERVING)
            else:
                _logger.warning(
                    "the database has not answered for %.1f s: health NOT_SERVING (%s)",
                    silent,
                    self._last_error.splitlines()[0] if self._last_error else "no answer yet",
                    extra={"cause": "database-down"},
                )
                self._set(NOT_SERVING)


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
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"{target}: no answer within {timeout:g} s"
            if code == grpc.StatusCode.NOT_FOUND:
                return False, f"{target}: unknown service {service!r}"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, f"{target}: no gRPC health service there"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"{target}: unreachable ({details})"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING, f"{target} {service or '(overall)'}: {name}"


def _dialable(host: str) -> str:
    """The address to dial for a listening host: a wildcard means this machine."""
    bare = bare_host(host)
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bare == "::":
        return "::1"
    return host
