"""One worker's metrics: RPCs answered and forwarded, group commits, cache syncs, database.

Exported (an instance with an admin endpoint): every figure is tallied by the
thread that sees it, in plain lists of its own, and a flusher thread sums the
threads' tallies once a second (and once more when the worker stops) and writes
the totals into this process's files in the supervisor's metrics directory, in
prometheus_client's multiprocess format. Each scrape of the supervisor's /metrics
reads those files with prometheus_client's `MultiProcessCollector` (see `admin`).

Why so: prometheus_client's multiprocess mode gives the supervisor a ready
aggregation (labelled counters and histograms summed over processes, a dead
worker's counters kept, a live gauge dropped), rather than an aggregation of our
own over shared memory with its own registry of names. But its instruments take
one lock per process, a getpid() and a write into the mapped file on every
update (about 5 µs for an RPC's three), which cost the seed benchmark some 7 % of
the proxy's CPU per trial, measured side by side. A tally is a list increment by
its own thread, with no lock and no system call (under 1 µs an RPC); the price is
that a scrape sees figures up to a second old, and a worker that crashes loses
its last second of them.

Not exported (no admin endpoint, or a worker run inside a test): no tally, no
flusher; only the counts of what arrived and what was forwarded, which
`snapshot()` reads and a stopping worker logs.

Metric names, all prefixed `shardproxy_`:

- `rpcs_total{method,code}`: RPCs answered by this front, by gRPC status name;
  `method` is one of Optuna's service or of shardproxy's own (`extension_wire`).
- `rpc_duration_seconds{method}`: how long each took here (forwarding included).
- `forwarded_total{method}`: requests this front sent on to their study's owner.
- `commit_batch_size`, `commit_duration_seconds`: operations per group commit, and
  its time from its first attempt to its outcome (retries included).
- `cache_reads_per_sync`: reads one study cache sync served (its count is the
  number of syncs, its sum the reads that needed one).
- `trial_reads_per_batch`: GetTrial reads of unfinished trials one statement
  served (`trial_reads`).
- `db_statements_total`, `db_transient_errors_total`, `db_retries_total`: statements
  sent through a cursor, transient database errors met, and attempts run again.
- `reply_room_waits_total`, `reply_room_wait_seconds_total`: large replies that
  waited for room in the cache bound beside those in flight (`reply_room`), and
  how long they waited: reads slowed because `--cache-memory` is tight.
- `cached_studies`, `cached_trials`, `cached_bytes`: what the caches hold (encoded
  trial bytes), summed over the live workers.
- `build_info{version,codec,driver}`: 1, per running version.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

from shardproxy.extension_wire import ALL_METHODS

_logger = logging.getLogger(__name__)

_PREFIX = "shardproxy_"
FLUSH_INTERVAL = 1.0
_INF = float("inf")
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5, 5.0, 10.0, 30.0, 60.0, _INF)  # fmt: skip
_BATCH = tuple(float(1 << i) for i in range(11)) + (_INF,)  # 1 … 1024
_READS = tuple(float(1 << i) for i in range(9)) + (_INF,)  # 1 … 256
# Each bucket's `le` label.
_LE = {bounds: [floatToGoString(b) for b in bounds] for bounds in (_SECONDS, _BATCH, _READS)}
_CODES = list(grpc.StatusCode)
# By id: a StatusCode's own hash is a Python-level Enum method.
_CODE_INDEX = {id(code): index for index, code in enumerate(_CODES)}

_HELP = {
    "rpcs": "RPCs answered by this front, by status",
    "rpc_duration_seconds": "RPC time in the proxy",
    "forwarded": "Requests forwarded to their study's owner",
    "commit_batch_size": "Write operations per group commit",
    "commit_duration_seconds": "Group commit time, retries included",
    "cache_reads_per_sync": "Reads served by one study cache sync",
    "trial_reads_per_batch": "GetTrial reads served by one batched statement",
    "db_statements": "Statements sent to the database",
    "db_transient_errors": "Transient database errors met",
    "db_retries": "Database attempts run again after a transient error",
    "reply_room_waits": "Large replies that waited for room in the cache bound",
    "reply_room_wait_seconds": "Seconds large replies waited for room in the cache bound",
    "cached_studies": "Studies cached",
    "cached_trials": "Trials cached",
    "cached_bytes": "Encoded trial bytes cached",
    "build_info": "The running version, codec and driver",
}


# A thread's tally is a dict from slot to value, so that a flush adds up only what
# each thread saw; the slots:
_M, _C, _S = len(ALL_METHODS), len(_CODES), len(_SECONDS)
_RPCS = 0  # + method * _C + code
_LATENCY = _RPCS + _M * _C  # + method * _S + bucket
_LATENCY_SUM = _LATENCY + _M * _S  # + method
_FORWARDED = _LATENCY_SUM + _M  # + method
_COMMIT_SIZE = _FORWARDED + _M  # + bucket, then the sum
_COMMIT_SECONDS = _COMMIT_SIZE + len(_BATCH) + 1  # + bucket, then the sum
_READS_PER_SYNC = _COMMIT_SECONDS + _S + 1  # + bucket, then the sum
_READS_PER_BATCH = _READS_PER_SYNC + len(_READS) + 1  # + bucket, then the sum
_STATEMENTS = _READS_PER_BATCH + len(_READS) + 1
_TRANSIENT = _STATEMENTS + 1
_RETRIES = _TRANSIENT + 1
_ROOM_WAITS = _RETRIES + 1
_ROOM_WAIT_SECONDS = _ROOM_WAITS + 1
_SLOTS = _ROOM_WAIT_SECONDS + 1

Tally = collections.defaultdict  # slot -> count or sum; only its thread writes it


def _add_into(total: Any, tally: Any) -> None:
    # list() copies the items at once (under the GIL) while the thread may add more.
    for slot, value in list(tally.items()):
        total[slot] += value


class Metrics:
    """A worker's metrics; exported ones are written into `directory` (see above)."""

    def __init__(self, exported: bool = False, directory: str | None = None) -> None:
        if exported and directory is None:
            raise ValueError("exported metrics need the supervisor's metrics directory")
        self.exported = exported
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._forwarded_names = [f"forwarded.{name}" for name in ALL_METHODS]
        self._local = threading.local()
        # Each thread's tally; a thread's that ended is added into `_ended` (forwarding
        # connections come and go, each with its thread).
        self._tallies: list[tuple[threading.Thread, Tally[int, float]]] = []
        self._ended: Tally[int, float] = Tally(int)
        self._cached = (0, 0, 0)
        self._build: tuple[str, str, str] | None = None
        self._directory = directory
        # (file kind, metric, sample, labels) -> (its key in the file, the value last
        # written): the keys are JSON, too dear to build for every series every flush.
        self._series: dict[tuple[str, ...], tuple[str, float]] = {}
        # A histogram's buckets and sum as last written: most do not change each time.
        self._histograms: dict[tuple[str, ...], tuple[list[float], float]] = {}
        self._files: dict[str, MmapedDict] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- the request path ------------------------------------------------------------

    def add(self, name: str, amount: int = 1) -> None:
        """A plain count: `received.<method>`, once per RPC.

        Exported metrics count every RPC in the tallies already (`observe`), and
        `snapshot` reads them there: no lock taken twice per RPC for the same count.
        """
        if self.exported:
            return
        with self._lock:
            self._counts[name] += amount

    def observe(
        self, method_index: int, request: bytes, code: grpc.StatusCode, seconds: float
    ) -> None:
        """An RPC observer (see `rpc`): counted by method and status, and timed."""
        tally = self._tally()
        tally[method_index * _C + _CODE_INDEX[id(code)]] += 1
        tally[_LATENCY + method_index * _S + bisect_left(_SECONDS, seconds)] += 1
        tally[_LATENCY_SUM + method_index] += seconds

    def forwarded(self, method_index: int) -> None:
        if self.exported:
            self._tally()[_FORWARDED + method_index] += 1
        else:
            self.add(self._forwarded_names[method_index])

    def _tally(self) -> Tally[int, float]:
        try:
            return self._local.tally  # type: ignore[no-any-return]
        except AttributeError:
            tally = self._local.tally = Tally(int)
            with self._lock:
                self._tallies.append((threading.current_thread(), tally))
            return tally

    def _all_tallies(self) -> list[Tally[int, float]]:
        """The live threads' tallies and the ended ones' total; call holding `_lock`."""
        live = []
        for thread, tally in self._tallies:
            if thread.is_alive():
                live.append((thread, tally))
            else:  # it will not change any more
                _add_into(self._ended, tally)
        self._tallies = live
        return [tally for _, tally in live] + [self._ended]

    # -- hooks of the store and the caches ---------------------------------------------

    def commit_done(self, operations: int, seconds: float) -> None:
        tally = self._tally()
        tally[_COMMIT_SIZE + bisect_left(_BATCH, operations)] += 1
        tally[_COMMIT_SIZE + len(_BATCH)] += operations
        tally[_COMMIT_SECONDS + bisect_left(_SECONDS, seconds)] += 1
        tally[_COMMIT_SECONDS + _S] += seconds

    def cache_synced(self, reads: int) -> None:
        tally = self._tally()
        tally[_READS_PER_SYNC + bisect_left(_READS, reads)] += 1
        tally[_READS_PER_SYNC + len(_READS)] += reads

    def trials_read(self, reads: int) -> None:
        tally = self._tally()
        tally[_READS_PER_BATCH + bisect_left(_READS, reads)] += 1
        tally[_READS_PER_BATCH + len(_READS)] += reads

    def transient_error(self, retrying: bool) -> None:
        tally = self._tally()
        tally[_TRANSIENT] += 1
        if retrying:
            tally[_RETRIES] += 1

    def reply_waited(self, seconds: float) -> None:
        tally = self._tally()
        tally[_ROOM_WAITS] += 1
        tally[_ROOM_WAIT_SECONDS] += seconds

    def statement(self) -> None:
        self._tally()[_STATEMENTS] += 1

    def install(self) -> None:
        """Makes the store of this process report here (its hooks are process-wide)."""
        from shardproxy.store import committer, retry

        committer.commit_observer = self.commit_done
        retry.transient_observer = self.transient_error
        global _count_statement
        _count_statement = self.statement

    # -- state, set now and then ---------------------------------------------------------

    def set_cached(self, studies: int, trials: int, encoded_bytes: int) -> None:
        self._cached = (studies, trials, encoded_bytes)

    def set_build(self, version: str, codec: str, driver: str) -> None:
        self._build = (version, codec, driver)

    # -- writing the files ------------------------------------------------------------------

    def start_flushing(self, interval: float = FLUSH_INTERVAL) -> None:
        """Writes the totals every `interval` seconds from a thread, until `close`."""

        def flush_until_closed() -> None:
            while not self._stop.wait(interval):
                self.flush()

        self._flusher = threading.Thread(target=flush_until_closed, name="metrics-flush",
                                         daemon=True)
        self._flusher.start()

    def close(self) -> None:
        """Stops the flusher, then writes the totals one last time."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self.exported:
            self.flush()
        for file in self._files.values():
            file.close()
        self._files.clear()

    def flush(self) -> None:
        """Writes every total that changed into this process's files."""
        total: list[float] = [0] * _SLOTS
        with self._lock:
            for tally in self._all_tallies():
                _add_into(total, tally)
        for m, method in enumerate(ALL_METHODS):
            for c, code in enumerate(_CODES):
                if total[_RPCS + m * _C + c]:
                    self._counter("rpcs", {"method": method, "code": code.name},
                                  total[_RPCS + m * _C + c])
            buckets = total[_LATENCY + m * _S : _LATENCY + (m + 1) * _S]
            if any(buckets):
                self._histogram("rpc_duration_seconds", {"method": method}, _SECONDS, buckets,
                                total[_LATENCY_SUM + m])
            if total[_FORWARDED + m]:
                self._counter("forwarded", {"method": method}, total[_FORWARDED + m])
        for name, bounds, base in (("commit_batch_size", _BATCH, _COMMIT_SIZE),
                                   ("commit_duration_seconds", _SECONDS, _COMMIT_SECONDS),
                                   ("cache_reads_per_sync", _READS, _READS_PER_SYNC),
                                   ("trial_reads_per_batch", _READS, _READS_PER_BATCH)):
            self._histogram(name, {}, bounds, total[base : base + len(bounds)],
                            total[base + len(bounds)])
        self._counter("db_statements", {}, total[_STATEMENTS])
        self._counter("db_transient_errors", {}, total[_TRANSIENT])
        self._counter("db_retries", {}, total[_RETRIES])
        self._counter("reply_room_waits", {}, total[_ROOM_WAITS])
        self._counter("reply_room_wait_seconds", {}, total[_ROOM_WAIT_SECONDS])
        for name, value in zip(("cached_studies", "cached_trials", "cached_bytes"),
                               self._cached, strict=True):
            self._write("gauge_livesum", name, name, {}, value)
        if self._build is not None:
            labels = dict(zip(("version", "codec", "driver"), self._build, strict=True))
            self._write("gauge_livemax", "build_info", "build_info", labels, 1)

    def _counter(self, name: str, labels: dict[str, str], value: float) -> None:
        self._write("counter", name, name + "_total", labels, value)

    def _histogram(self, name: str, labels: dict[str, str], bounds: tuple[float, ...],
                   buckets: list[float], total: float) -> None:
        series = (name, *labels.values())
        if self._histograms.get(series) == (buckets, total):
            return
        self._histograms[series] = (buckets, total)
        # Per bucket, not cumulative: the collector adds them up (and counts them).
        for le, count in zip(_LE[bounds], buckets, strict=True):
            self._write("histogram", name, name + "_bucket", {**labels, "le": le}, count)
        self._write("histogram", name, name + "_sum", labels, total)

    def _write(self, kind: str, name: str, sample: str, labels: dict[str, str],
               value: float) -> None:
        series = (kind, name, sample, *labels.values())
        known = self._series.get(series)
        if known is not None and known[1] == value:
            return
        if known is None:
            key = mmap_key(_PREFIX + name, _PREFIX + sample, list(labels),
                           list(labels.values()), _HELP[name])
        else:
            key = known[0]
        file = self._files.get(kind)
        if file is None:
            assert self._directory is not None
            path = os.path.join(self._directory, f"{kind}_{os.getpid()}.db")
            file = self._files[kind] = MmapedDict(path)
        file.write_value(key, float(value), 0.0)
        self._series[series] = (key, value)

    # -- reading -------------------------------------------------------------------------

    def get(self, name: str) -> int:
        return self.snapshot().get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """The `received.<method>` and `forwarded.<method>` counts of this process."""
        with self._lock:
            counts = dict(self._counts)
            if self.exported:  # what arrived and what was forwarded is in the tallies
                total: list[float] = [0] * _SLOTS
                for tally in self._all_tallies():
                    _add_into(total, tally)
                for m, method in enumerate(ALL_METHODS):
                    received = sum(total[_RPCS + m * _C : _RPCS + (m + 1) * _C])
                    for name, count in ((f"received.{method}", received),
                                        (f"forwarded.{method}", total[_FORWARDED + m])):
                        if count:
                            counts[name] = int(count)
        return counts

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
