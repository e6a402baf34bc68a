"""The supervisor's admin endpoint: /healthz, /readyz and /metrics over plain HTTP.

Kept off the data path, as Envoy's admin port and PgBouncer's console are: a
thread of the supervisor serves it, on its own port, bound to localhost unless
told otherwise.

- `/healthz`: 200 while the supervisor runs (its loop may be stuck; that is for
  the process manager to see).
- `/readyz`: 200 when every shard has a worker that reported ready, is not
  draining, reaches its database and beat lately (its handlers began calls or
  answered a watchdog beat); else 503
  with one line per reason.
- `/metrics`: the Prometheus text format, aggregated over all worker processes.

Metrics aggregation: prometheus_client's multiprocess mode, as gunicorn deployments
run it. Each worker writes its counters and histograms into files of its own in a
directory the supervisor prepares empty before any worker starts (no value of a
previous run survives), in that mode's format (see `metrics` for how a worker
tallies and writes them); a scrape builds a fresh registry whose
`MultiProcessCollector` sums the files. Chosen over an aggregation of our own in
the supervisor's shared memory because it gives labelled histograms and counters
that stay monotonic across worker restarts with no registry of names to keep in
two places. When a worker exits it is marked dead (its live gauges disappear), and
its counter and histogram files are folded into one archive per kind, so that the
directory and the scrape stay small however many times workers are restarted or
reloaded. The supervisor's own figures (restarts by cause, readiness per shard) come from a
collector over its state.
"""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

_logger = logging.getLogger(__name__)

RESTART_CAUSES = ("crash", "watchdog", "reload")


class SupervisorView(Protocol):
    """What the endpoint reads of the supervisor (from its own thread)."""

    workers: int

    def readiness(self) -> list[str]: ...

    def shard_states(self) -> dict[int, tuple[bool, float | None]]: ...

    @property
    def restarts(self) -> dict[str, int]: ...


class MetricsDirectory:
    """The workers' metric files: prepared empty, aggregated, folded when a worker exits."""

    _ARCHIVED_KINDS = ("counter", "histogram")

    def __init__(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)  # nothing of an earlier run may count
        os.makedirs(path)
        self.path = path
        # A scrape must never see a dead worker's values twice, or not at all, while
        # they move into the archive.
        self._lock = threading.Lock()

    def process_exited(self, pid: int) -> None:
        """Marks the process dead and folds its counters and histograms into the archive."""
        with self._lock:
            mark_process_dead(pid, self.path)
            for kind in self._ARCHIVED_KINDS:
                dead = os.path.join(self.path, f"{kind}_{pid}.db")
                if os.path.exists(dead):
                    self._fold(kind, dead)

    def _fold(self, kind: str, dead: str) -> None:
        archive = os.path.join(self.path, f"{kind}_archive.db")
        files = [dead, *([archive] if os.path.exists(archive) else [])]
        merged = MultiProcessCollector.merge(files, accumulate=False)
        staging = archive + ".new"  # not *.db: no scrape reads it half written
        if os.path.exists(staging):
            os.unlink(staging)
        folded = MmapedDict(staging)
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(
                        metric.name,
                        sample.name,
                        list(sample.labels),
                        list(sample.labels.values()),
                        metric.documentation,
                    )
                    folded.write_value(key, sample.value, 0.0)
        finally:
            folded.close()
        os.replace(staging, archive)
        os.unlink(dead)

    def render(self, supervisor: SupervisorView) -> bytes:
        """The Prometheus text of every worker's metrics and the supervisor's."""
        registry = CollectorRegistry()
        registry.register(_SupervisorCollector(supervisor))
        with self._lock:
            MultiProcessCollector(registry, self.path)
            return generate_latest(registry)


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: SupervisorView) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "shardproxy_worker_restarts",
            "Worker processes replaced, by cause: crash (exited or killed), watchdog "
            "(killed because its request handlers stopped answering), reload (SIGHUP)",
            labels=["cause"],
        )
        counts = self._supervisor.restarts
        for cause in RESTART_CAUSES:
            restarts.add_metric([cause], counts.get(cause, 0))
        yield restarts
        ready = GaugeMetricFamily(
            "shardproxy_shard_ready",
            "1 when the shard's worker is ready, serving, reaches its database and "
            "beats (its request handlers begin calls or answer watchdog beats)",
            labels=["shard"],
        )
        silence = GaugeMetricFamily(
            "shardproxy_watchdog_silence_seconds",
            "Seconds since the shard's worker last beat: its request handlers began calls, "
            "or answered a watchdog beat",
            labels=["shard"],
        )
        for shard, (is_ready, silent) in sorted(self._supervisor.shard_states().items()):
            ready.add_metric([str(shard)], float(is_ready))
            if silent is not None:
                silence.add_metric([str(shard)], silent)
        yield ready
        yield silence


class AdminServer:
    """Serves the endpoint from a daemon thread until `close()`."""

    def __init__(
        self, host: str, port: int, supervisor: SupervisorView, metrics: MetricsDirectory
    ) -> None:
        bare = host.strip("[]")
        family = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0][0]
        handler = _handler_class(supervisor, metrics)
        server_class = type(
            "AdminHTTPServer", (http.server.ThreadingHTTPServer,), {"address_family": family}
        )
        self._server = server_class((bare, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.address = f"[{bare}]:{self.port}" if ":" in bare else f"{bare}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="admin-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_class(
    supervisor: SupervisorView, metrics: MetricsDirectory
) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "shardproxy-admin"

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                problems = supervisor.readiness()
                body = ("\n".join(problems) if problems else "ready") + "\n"
                self._reply(503 if problems else 200, body.encode())
            elif path == "/metrics":
                self._reply(200, metrics.render(supervisor), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found: try /healthz, /readyz or /metrics\n")

        def _reply(
            self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            _logger.debug("admin %s: " + format, self.address_string(), *args)

    return Handler
