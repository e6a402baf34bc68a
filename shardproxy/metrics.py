"""One worker's metrics: RPCs answered and forwarded, group commits, cache syncs, database.

`Metrics` holds a worker's prometheus_client instruments. In a worker process of an
instance with an admin endpoint, `export_to(directory)` first switches the process
to prometheus_client's multiprocess mode, so that every update lands in this
process's memory-mapped files in the supervisor's directory, where each scrape of
the supervisor's /metrics sums them over all workers (see `admin`). Elsewhere (a
worker run inside a test, or an instance without an admin endpoint) only the plain
counts of `snapshot()` are kept.

Why prometheus_client's multiprocess mode rather than counters of our own in the
supervisor's shared memory: labelled counters and histograms come for free and stay
monotonic across worker restarts (a dead worker's files are kept, folded into an
archive, see `admin`), the names live in one place, and an update costs a worker a
lock and a write into a page of its own, with no cross-process lock.

Cost on the request path, with metrics exported: two clock reads, a counter and a
histogram update per RPC (each a lock and a write into the process's own mapped
page), through an RPC observer (`rpc`); without an admin endpoint there is no
observer and no instrument at all. The store and the caches report through hooks
that are None unless `install()` set them, so they cost one comparison when
nothing listens.

Metric names, all prefixed `shardproxy_`:

- `rpcs_total{method,code}`: RPCs answered by this front, by gRPC status name.
- `rpc_duration_seconds{method}`: how long each took here (forwarding included).
- `forwarded_total{method}`: requests this front sent on to their study's owner.
- `commit_batch_size`, `commit_duration_seconds`: operations per group commit, and
  its time from its first attempt to its outcome (retries included).
- `cache_reads_per_sync`: reads one study cache sync served (its count is the
  number of syncs, its sum the reads that needed one).
- `db_statements_total`, `db_transient_errors_total`, `db_retries_total`: statements
  sent through a cursor, transient database errors met, and attempts run again.
- `cached_studies`, `cached_trials`, `cached_bytes`: what the caches hold (encoded
  trial bytes), summed over the live workers.
- `build_info{version,codec,driver}`: 1, per running version.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from shardproxy.wire import METHODS

_PREFIX = "shardproxy_"
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
_POWERS_OF_TWO = tuple(float(1 << i) for i in range(11))  # 1 … 1024


def export_to(directory: str) -> None:
    """Makes this process write its metrics into `directory` (multiprocess mode).

    Must run before the first instrument is made. prometheus_client takes the
    directory from its environment variable, which this process's children (none)
    would inherit; the value class is set too, in case prometheus_client was
    imported before the variable was.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()


class Metrics:
    """A worker's counters; when `exported`, its prometheus_client instruments too.

    Always: counts of what arrived (`received.<method>`) and what was forwarded
    (`forwarded.<method>`), one lock and one add each, for tests, benchmarks and the
    line a worker logs when it stops. Exported: the instruments of the module
    docstring, fed by `observe` (an RPC observer, see `rpc`) and the hooks.
    """

    def __init__(self, exported: bool = False) -> None:
        self.exported = exported
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._forwarded_names = [f"forwarded.{name}" for name in METHODS]
        if exported:
            self._make_instruments()

    def _make_instruments(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._rpcs = Counter(_PREFIX + "rpcs", "RPCs answered by this front, by status",
                             ["method", "code"], registry=r)
        latency = Histogram(_PREFIX + "rpc_duration_seconds", "RPC time in the proxy",
                            ["method"], buckets=_SECONDS, registry=r)
        forwarded = Counter(_PREFIX + "forwarded", "Requests forwarded to their study's owner",
                            ["method"], registry=r)
        self._commit_size = Histogram(_PREFIX + "commit_batch_size",
                                      "Write operations per group commit",
                                      buckets=_POWERS_OF_TWO, registry=r)
        self._commit_seconds = Histogram(_PREFIX + "commit_duration_seconds",
                                         "Group commit time, retries included",
                                         buckets=_SECONDS, registry=r)
        self._reads_per_sync = Histogram(_PREFIX + "cache_reads_per_sync",
                                         "Reads served by one study cache sync",
                                         buckets=_POWERS_OF_TWO[:9], registry=r)
        self._statements = Counter(_PREFIX + "db_statements",
                                   "Statements sent to the database", registry=r)
        self._transient = Counter(_PREFIX + "db_transient_errors",
                                  "Transient database errors met", registry=r)
        self._retries = Counter(_PREFIX + "db_retries",
                                "Database attempts run again after a transient error",
                                registry=r)
        self._studies = Gauge(_PREFIX + "cached_studies", "Studies cached",
                              multiprocess_mode="livesum", registry=r)
        self._trials = Gauge(_PREFIX + "cached_trials", "Trials cached",
                             multiprocess_mode="livesum", registry=r)
        self._bytes = Gauge(_PREFIX + "cached_bytes", "Encoded trial bytes cached",
                            multiprocess_mode="livesum", registry=r)
        self._build = Gauge(_PREFIX + "build_info", "The running version, codec and driver",
                            ["version", "codec", "driver"], multiprocess_mode="livemax",
                            registry=r)  # fmt: skip
        # Children bound once: labels() takes a lock and builds a key on every call.
        self._latency = [latency.labels(name) for name in METHODS]
        self._forwarded = [forwarded.labels(name) for name in METHODS]
        self._rpc_children: dict[tuple[int, grpc.StatusCode], Any] = {}

    # -- the request path ------------------------------------------------------------

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def observe(
        self, method_index: int, request: bytes, code: grpc.StatusCode, seconds: float
    ) -> None:
        """An RPC observer (see `rpc`): counted by method and status, and timed."""
        child = self._rpc_children.get((method_index, code))
        if child is None:
            child = self._rpcs.labels(METHODS[method_index], code.name)
            self._rpc_children[(method_index, code)] = child
        child.inc()
        self._latency[method_index].observe(seconds)

    def forwarded(self, method_index: int) -> None:
        self.add(self._forwarded_names[method_index])
        if self.exported:
            self._forwarded[method_index].inc()

    # -- hooks of the store and the caches ---------------------------------------------

    def commit_done(self, operations: int, seconds: float) -> None:
        self._commit_size.observe(operations)
        self._commit_seconds.observe(seconds)

    def cache_synced(self, reads: int) -> None:
        self._reads_per_sync.observe(reads)

    def transient_error(self, retrying: bool) -> None:
        self._transient.inc()
        if retrying:
            self._retries.inc()

    def statement(self) -> None:
        self._statements.inc()

    def install(self) -> None:
        """Makes the store of this process report here (its hooks are process-wide)."""
        from shardproxy.store import committer, retry

        committer.commit_observer = self.commit_done
        retry.transient_observer = self.transient_error
        global _count_statement
        _count_statement = self.statement

    # -- state, set now and then ---------------------------------------------------------

    def set_cached(self, studies: int, trials: int, encoded_bytes: int) -> None:
        self._studies.set(studies)
        self._trials.set(trials)
        self._bytes.set(encoded_bytes)

    def set_build(self, version: str, codec: str, driver: str) -> None:
        self._build.labels(version, codec, driver).set(1)

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        """The `received.<method>` and `forwarded.<method>` counts."""
        with self._lock:
            return dict(self._counts)

    def summary(self) -> str:
        return ", ".join(f"{name}={count}" for name, count in sorted(self.snapshot().items()))


# -- statements, counted at the driver's cursor ------------------------------------------

_count_statement: Callable[[], None] | None = None
_counting_classes: dict[type, type] = {}
_counting_lock = threading.Lock()


def count_statements() -> None:
    """Counts the statements of every database connection this process opens from now.

    Counting happens in the driver's cursor class, below SQLAlchemy: an engine event
    listener would be simpler, but it turns the store's prepared statements back
    into SQLAlchemy executions (see `store.prepared`), which costs more than the
    count is worth.
    """
    from sqlalchemy import event, pool

    if not event.contains(pool.Pool, "connect", _on_connect):
        event.listen(pool.Pool, "connect", _on_connect)


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    if hasattr(dbapi_connection, "set_trace_callback"):  # sqlite3
        dbapi_connection.set_trace_callback(_sqlite_statement)
    elif hasattr(dbapi_connection, "cursorclass"):  # PyMySQL, mysqlclient
        dbapi_connection.cursorclass = _counting(dbapi_connection.cursorclass)
    elif hasattr(dbapi_connection, "cursor_factory"):  # psycopg2
        base = dbapi_connection.cursor_factory
        if base is None:
            import psycopg2.extensions

            base = psycopg2.extensions.cursor
        dbapi_connection.cursor_factory = _counting(base)


def _counted() -> None:
    count = _count_statement
    if count is not None:
        count()


def _sqlite_statement(sql: str) -> None:
    # SQLite reports its transaction statements too; the other drivers send those
    # without a cursor, so they are left out here as well.
    if not sql.startswith(("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA")):
        _counted()


def _counting(base: type) -> type:
    """A subclass of the driver's cursor class that counts its statements."""
    with _counting_lock:
        counting = _counting_classes.get(base)
        if counting is None:

            class Counting(base):  # type: ignore[valid-type, misc]
                _many = False  # inside executemany: its own execute calls are not more

                def execute(self, *args: Any, **kwargs: Any) -> Any:
                    if not self._many:
                        _counted()
                    return super().execute(*args, **kwargs)

                def executemany(self, *args: Any, **kwargs: Any) -> Any:
                    _counted()
                    self._many = True
                    try:
                        return super().executemany(*args, **kwargs)
                    finally:
                        self._many = False

            counting = _counting_classes[base] = Counting
        return counting
