"""A delta GetTrials at the server, against study size: shardproxy's owner and Optuna's servicer.

Run (needs MariaDB at 127.0.0.1:3306, user root without a password, and PostgreSQL at
127.0.0.1:5432, user postgres; a database that does not answer is skipped; SQLite's
is a file of its own):
    pytest bench/test_bench_delta.py --benchmark-only \
        --benchmark-json bench/results/delta.json -p no:cacheprovider
(`-k mariadb`, `-k postgres` or `-k sqlite` runs one database.)

On each database, for each study size (1 000, 10 000 and 100 000 finished trials of one float
parameter, bulk-inserted into a fresh database once per size, then 8 RUNNING trials
as 8 live workers would hold) one request is timed: the delta GetTrials a synced
`GrpcStorageProxy` sends every trial, `included_trial_ids` = the running trials it
holds and `trial_id_greater_than` = the last finished trial id. The reply is the 8
running trials. No gRPC transport: each system is called in-process, request bytes
in, reply bytes out.

- shardproxy: a single-shard `shardproxy.worker.Worker` with `Config`'s defaults
  (never started: no gRPC server), warmed with one full GetTrials, then
  `Front.handle`, the path of a request from its bytes to the reply's. Every call
  syncs the study (one delta query to the database) and encodes the reply.
- stock: Optuna's `OptunaStorageProxyService.GetTrials`, with the request parsed and
  the reply serialized around it as gRPC's generated handler does. Over two
  storages: `get_storage(URL)` (RDBStorage in `_CachedStorage`, what
  `run_grpc_proxy_server` is documented to be given and what `bench/run.py` runs)
  and a bare `RDBStorage(URL)`. Either way the servicer asks for
  `get_all_trials(study_id)` and filters the whole study in Python; bare RDBStorage
  also loads the whole study from the database on every call.

The same studies time the owner's answer to a heartbeat client's GetStaleTrialIds
(`shardproxy.client` asks it before every trial of a study with heartbeats on),
every trial with a heartbeat row as such workers leave them, against RDBStorage's
`_get_stale_trial_ids`, which a direct user of the database pays instead (the
stock proxy has no such call); and its answer to GetTrialIdFromStudyIdTrialNumber
(`study.tell(number, ...)` asks it) against RDBStorage's, for a finished trial in
the middle of the study. The owner has cached the study with a full GetTrials.

Wall time per call comes from pytest-benchmark (one call per round; the number of
rounds is fitted to a time budget from a probe, at least MIN_ROUNDS). CPU per
call is this process's `time.process_time` over the rounds (the server side only,
not the database's). `extra_info` also holds the ratio to shardproxy at the same size,
the growth against the smallest size, and the prefill and first full read times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy
from optuna.storages._grpc.auto_generated import api_pb2

from bench.databases import SERVERS, create_studies, fresh_database, prefill
from shardproxy import codec
from shardproxy.config import Config
from shardproxy.wire import METHOD_INDEX
from shardproxy.worker import Worker

pb: Any = api_pb2
SIZES = (1_000, 10_000, 100_000)
BACKENDS = ("mariadb", "postgres", "sqlite")
RUNNING = 8  # live workers, each holding one unfinished trial
PARAM_NAMES = ("x",)  # the seed scenario's one float parameter
BUDGET_SECONDS = 3.0  # per case: the machine is shared, keep the runs short
MIN_ROUNDS, MAX_ROUNDS = 3, 300
SLOW_CALL_SECONDS = 1.0
PROBES = 3
GET_TRIALS = METHOD_INDEX["GetTrials"]
# (system, database, size) -> (mean wall ms, CPU ms) per call, for the ratios.
MEASURED: dict[tuple[str, str, int], tuple[float, float]] = {}

# A system under test: GetTrials request bytes in, reply bytes out.
GetTrials = Callable[[bytes], bytes]


# -- the studies -------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    url: str
    backend: str
    study_id: int
    size: int
    last_finished_id: int
    running_ids: tuple[int, ...]
    prefill_seconds: float

    def delta_request(self) -> bytes:
        """What a synced GrpcStorageProxy sends: its unfinished trials, and newer ones."""
        return pb.GetTrialsRequest(
            study_id=self.study_id,
            included_trial_ids=list(self.running_ids),
            trial_id_greater_than=self.last_finished_id,
        ).SerializeToString()

    def full_request(self) -> bytes:
        return pb.GetTrialsRequest(
            study_id=self.study_id, trial_id_greater_than=-1
        ).SerializeToString()


def _say(request: pytest.FixtureRequest, text: str) -> None:
    """Prints past pytest's capture: the prefill takes a while, and should say so."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


def _server(backend: str) -> str | None:
    """The server URL (None for SQLite, which needs none), or a skip: this is a
    benchmark, and needs its database."""
    if backend == "sqlite":
        return None
    server = SERVERS[backend]
    admin = {"mariadb": "test", "postgres": "postgres"}[backend]
    engine = sqlalchemy.create_engine(
        f"{server}/{admin}",
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        pytest.skip(f"{backend} is not reachable at {server}: {exc.__class__.__name__}")
    finally:
        engine.dispose()
    return server


def _start_running_trials(url: str, study_id: int, count: int) -> tuple[int, ...]:
    """Trials as live workers leave them mid-objective: RUNNING, parameter set."""
    import optuna
    from optuna.distributions import FloatDistribution

    storage = optuna.storages.RDBStorage(url)
    try:
        ids = []
        for _ in range(count):
            trial_id = storage.create_new_trial(study_id)
            storage.set_trial_param(trial_id, "x", 0.5, FloatDistribution(-10.0, 10.0))
            ids.append(trial_id)
        return tuple(ids)
    finally:
        storage.engine.dispose()


@pytest.fixture(
    scope="module",
    params=[(backend, size) for backend in BACKENDS for size in SIZES],
    ids=lambda param: f"{param[0]}-{param[1] // 1000}k",
)
def study(request: pytest.FixtureRequest) -> Iterator[Study]:
    """One database per size, filled once; pytest runs every case of a size together."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend: str
    size: int
    backend, size = request.param
    with fresh_database(backend, _server(backend)) as db:
        study_id = create_studies(db.url, ["delta"])[0]
        started = time.perf_counter()
        last_finished = prefill(db.url, study_id, size, PARAM_NAMES)
        seconds = time.perf_counter() - started
        _say(request, f"\n{backend}: prefilled {size} finished trials in {seconds:.1f} s")
        running = _start_running_trials(db.url, study_id, RUNNING)
        _beat_every_trial(db.url)
        yield Study(db.url, backend, study_id, size, last_finished, running, seconds)


def _beat_every_trial(url: str) -> None:
    """A heartbeat row for every trial, as workers with heartbeats leave them
    (RDBStorage keeps a finished trial's), beaten now: none is stale."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) "
                "SELECT trial_id, CURRENT_TIMESTAMP FROM trials"))
    finally:
        engine.dispose()


# -- the systems, each a bytes-to-bytes call ---------------------------------------------


def _owner_worker(url: str) -> Worker:
    """A single-shard worker with `Config`'s defaults, never started: its front is
    the path a GetTrials takes from request bytes to reply bytes."""
    return Worker(Config(storage_url=url))


class _Context:
    """All the servicer's GetTrials uses of its context: `abort`, on a missing study."""

    def abort(self, code: object, details: str) -> None:
        raise AssertionError(f"GetTrials aborted: {code} {details}")


def _stock_call(servicer: Any, request: bytes) -> bytes:
    # gRPC's generated handler parses the request and serializes the reply around
    # the servicer; shardproxy's handler does both itself.
    message = pb.GetTrialsRequest.FromString(request)
    return servicer.GetTrials(message, _Context()).SerializeToString()


@pytest.fixture
def shardproxy_call(study: Study) -> Iterator[GetTrials]:
    worker = _owner_worker(study.url)
    try:
        yield lambda request: worker.front.handle(GET_TRIALS, request)
    finally:
        worker.store.close()


def _stock_fixture(storage: Any, engine: sqlalchemy.Engine) -> Iterator[GetTrials]:
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    servicer = OptunaStorageProxyService(storage)
    try:
        yield lambda request: _stock_call(servicer, request)
    finally:
        engine.dispose()


@pytest.fixture
def stock_cached_call(study: Study) -> Iterator[GetTrials]:
    import optuna

    storage: Any = optuna.storages.get_storage(study.url)
    yield from _stock_fixture(storage, storage._backend.engine)


@pytest.fixture
def stock_rdb_call(study: Study) -> Iterator[GetTrials]:
    import optuna

    storage = optuna.storages.RDBStorage(study.url)
    yield from _stock_fixture(storage, storage.engine)


# -- measuring ---------------------------------------------------------------------------


def _reply_ids(reply: bytes) -> list[int]:
    return sorted(trial.trial_id for trial in pb.GetTrialsReply.FromString(reply).trials)


def _timed(call: Callable[[], bytes]) -> tuple[float, bytes]:
    started = time.perf_counter()
    reply = call()
    return time.perf_counter() - started, reply


def _probe(call: Callable[[], bytes]) -> tuple[float, bytes]:
    """The quickest of a few calls (one when a call takes seconds): a single slow
    first call must not cut the rounds of a fast case."""
    seconds, reply = _timed(call)
    for _ in range(PROBES - 1):
        if seconds >= SLOW_CALL_SECONDS:
            break
        seconds = min(seconds, _timed(call)[0])
    return seconds, reply


def _rounds_for(seconds_per_call: float) -> int:
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(BUDGET_SECONDS / max(seconds_per_call, 1e-6))))


def measure(benchmark: Any, system: str, study: Study, get_trials: GetTrials) -> None:
    """Warms `system` with a full read, checks the delta reply, times the delta."""
    full_seconds, full = _timed(lambda: get_trials(study.full_request()))
    assert len(_reply_ids(full)) == study.size + RUNNING
    delta = study.delta_request()
    probe_seconds, reply = _probe(lambda: get_trials(delta))
    assert _reply_ids(reply) == list(study.running_ids)

    rounds = _rounds_for(probe_seconds)
    # The full read and the probe already warmed the slow cases; a round there is seconds.
    warmup = 1 if probe_seconds < SLOW_CALL_SECONDS else 0
    benchmark.group = f"delta GetTrials, {study.backend}, {study.size} trials"
    cpu = time.process_time()
    benchmark.pedantic(get_trials, args=(delta,), rounds=rounds, warmup_rounds=warmup)
    cpu_ms = (time.process_time() - cpu) / (rounds + warmup) * 1000
    mean_ms = benchmark.stats.stats.mean * 1000
    MEASURED[(system, study.backend, study.size)] = (mean_ms, cpu_ms)

    benchmark.extra_info.update(
        system=system,
        database=study.backend,
        trials=study.size,
        running_trials=RUNNING,
        rounds=rounds,
        wall_ms_per_call=mean_ms,
        median_ms_per_call=benchmark.stats.stats.median * 1000,
        cpu_ms_per_call=cpu_ms,
        reply_bytes=len(reply),
        first_full_get_trials_s=full_seconds,
        prefill_s=study.prefill_seconds,
        codec=codec.describe(),
    )
    _compare(benchmark, system, study.backend, study.size)


def _compare(benchmark: Any, system: str, backend: str, size: int) -> None:
    """Ratio to shardproxy at this size, and growth against the smallest size."""
    mean_ms, cpu_ms = MEASURED[(system, backend, size)]
    ours = MEASURED.get(("shardproxy", backend, size))
    line = (f"\n{system} on {backend} at {size} trials: {mean_ms:.3f} ms/call, "
            f"CPU {cpu_ms:.3f} ms/call")
    if ours is not None and system != "shardproxy":
        benchmark.extra_info["wall_ratio_to_shardproxy"] = mean_ms / ours[0]
        benchmark.extra_info["cpu_ratio_to_shardproxy"] = cpu_ms / ours[1]
        line += f"; × shardproxy: wall {mean_ms / ours[0]:.1f}, CPU {cpu_ms / ours[1]:.1f}"
    smallest = MEASURED.get((system, backend, SIZES[0]))
    if smallest is not None and size != SIZES[0]:
        benchmark.extra_info[f"wall_growth_vs_{SIZES[0]}"] = mean_ms / smallest[0]
        line += f"; × its {SIZES[0]}-trial figure: {mean_ms / smallest[0]:.2f}"
    print(line)


# Within each size, shardproxy runs first so that the stock cases can divide by it.


def test_delta_shardproxy(benchmark: Any, study: Study, shardproxy_call: GetTrials) -> None:
    measure(benchmark, "shardproxy", study, shardproxy_call)


def test_delta_stock_get_storage(
    benchmark: Any, study: Study, stock_cached_call: GetTrials
) -> None:
    measure(benchmark, "stock (get_storage)", study, stock_cached_call)


def test_delta_stock_rdbstorage(benchmark: Any, study: Study, stock_rdb_call: GetTrials) -> None:
    measure(benchmark, "stock (RDBStorage)", study, stock_rdb_call)


# -- stale trials, and a trial's id by its number ---------------------------------------

STALE_GRACE = 3600.0  # seconds: none of the study's trials is stale


def _measure_call(benchmark: Any, call_name: str, system: str, study: Study,
                  call: Callable[[], object], expected: object) -> None:
    """Times one call that answers `expected` on the study, warmed by one call."""
    assert call() == expected

    def call_for_probe() -> bytes:
        call()
        return b""

    probe_seconds, _ = _probe(call_for_probe)
    rounds = _rounds_for(probe_seconds)
    benchmark.group = f"{call_name}, {study.backend}, {study.size} trials"
    cpu = time.process_time()
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1)
    cpu_ms = (time.process_time() - cpu) / (rounds + 1) * 1000
    mean_ms = benchmark.stats.stats.mean * 1000
    MEASURED[(f"{call_name} {system}", study.backend, study.size)] = (mean_ms, cpu_ms)
    benchmark.extra_info.update(
        system=system, call=call_name, database=study.backend, trials=study.size,
        running_trials=RUNNING, rounds=rounds, wall_ms_per_call=mean_ms,
        median_ms_per_call=benchmark.stats.stats.median * 1000, cpu_ms_per_call=cpu_ms,
    )
    print(f"\n{call_name}, {system} on {study.backend} at {study.size} trials: "
          f"{mean_ms:.3f} ms/call, CPU {cpu_ms:.3f} ms/call")


@pytest.fixture
def owner(study: Study) -> Iterator[Worker]:
    """The owner, caching the study as its clients' GetTrials make it."""
    worker = _owner_worker(study.url)
    try:
        worker.front.handle(GET_TRIALS, study.full_request())
        yield worker
    finally:
        worker.store.close()


def test_stale_shardproxy(benchmark: Any, study: Study, owner: Worker) -> None:
    from shardproxy.extension_wire import (
        EXTENSION_INDEX,
        decode_stale_reply,
        encode_stale_request,
    )

    request = encode_stale_request(study.study_id, STALE_GRACE)
    index = EXTENSION_INDEX["GetStaleTrialIds"]
    _measure_call(benchmark, "stale trials", "shardproxy", study,
                  lambda: decode_stale_reply(owner.front.handle(index, request)), [])


def test_stale_rdbstorage(benchmark: Any, study: Study) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(study.url, heartbeat_interval=60,
                                         grace_period=int(STALE_GRACE))
    try:
        _measure_call(benchmark, "stale trials", "RDBStorage", study,
                      lambda: storage._get_stale_trial_ids(study.study_id), [])
    finally:
        storage.engine.dispose()


def _middle_trial(study: Study) -> tuple[int, int]:
    """(number, id) of a finished trial from the middle of the study: the prefill
    numbers its trials in id order."""
    number = study.size // 2
    return number, study.last_finished_id - study.size + 1 + number


def test_by_number_shardproxy(benchmark: Any, study: Study, owner: Worker) -> None:
    number, trial_id = _middle_trial(study)
    request = pb.GetTrialIdFromStudyIdTrialNumberRequest(
        study_id=study.study_id, trial_number=number).SerializeToString()
    index = METHOD_INDEX["GetTrialIdFromStudyIdTrialNumber"]

    def by_number() -> int:
        reply = owner.front.handle(index, request)
        return int(pb.GetTrialIdFromStudyIdTrialNumberReply.FromString(reply).trial_id)

    _measure_call(benchmark, "trial id by number", "shardproxy", study, by_number, trial_id)


def test_by_number_rdbstorage(benchmark: Any, study: Study) -> None:
    import optuna

    number, trial_id = _middle_trial(study)
    storage = optuna.storages.RDBStorage(study.url)
    try:
        _measure_call(benchmark, "trial id by number", "RDBStorage", study,
                      lambda: storage.get_trial_id_from_study_id_trial_number(
                          study.study_id, number),
                      trial_id)
    finally:
        storage.engine.dispose()
