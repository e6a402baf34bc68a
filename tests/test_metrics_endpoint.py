"""The admin endpoint of `shardproxy serve`: /healthz, /readyz and /metrics over HTTP.

Real Optuna clients (`GrpcStorageProxy`, unmodified) run trials through a proxy
with two worker processes on MariaDB; the scrape, parsed with prometheus_client's
own parser, must have counted exactly what they did, summed over both workers.
A database fault (its connections killed) must show as transient errors and
retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import optuna
import pytest
import sqlalchemy
from optuna.samplers import RandomSampler
from optuna.storages import GrpcStorageProxy
from prometheus_client.parser import text_string_to_metric_families

import shardproxy.client
from shardproxy import __version__
from shardproxy.metrics import FLUSH_INTERVAL
from shardproxy.routing import owner_of
from tests.proxies import free_port, proxy_client
from tests.servers import http_get, serve

pytestmark = pytest.mark.slow

BOUND = 60.0  # every wait here ends; none of them is a speed claim
TRIAL_WRITES = ("CreateNewTrial", "SetTrialParameter", "SetTrialStateValues",
                "SetTrialIntermediateValue", "SetTrialUserAttribute", "SetTrialSystemAttribute",
                "CreateNewTrialOnce", "SetTrialStateValuesOnce")
# shardproxy's own client sends a trial's creation and its end through shardproxy's
# service, as keyed writes.
EXTENSION_WRITES = ("CreateNewTrialOnce", "SetTrialStateValuesOnce")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """(sample name, sorted labels) -> value, from /metrics."""
    status, text = http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def settled(port: int) -> Samples:
    """A scrape once the workers' figures stopped moving.

    Workers write their metrics once a second; two scrapes a flush apart that agree
    have everything the clients did. Not compared: the watchdog's clock, and the
    statements, which the health probe's `SELECT 1` moves every second.
    """
    previous: Samples = {}
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        samples = scrape(port)
        moving = {k: v for k, v in samples.items()
                  if k[0] not in ("shardproxy_watchdog_silence_seconds",
                                  "shardproxy_db_statements_total")}
        if moving == previous:
            return samples
        previous = moving
        time.sleep(FLUSH_INTERVAL * 1.5)
    raise AssertionError("the metrics never settled")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over every label not given."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def run_studies(port: int, trials: dict[str, int]) -> None:
    """Each study optimized by a thread of its own, each with its own client."""
    errors: list[BaseException] = []

    def optimize(name: str, count: int) -> None:
        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=RandomSampler())
            study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=count)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            storage.close()

    threads = [threading.Thread(target=optimize, args=item) for item in trials.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 3)
    assert not errors, errors


def run_extension_study(port: int, name: str, count: int) -> None:
    """A study optimized through shardproxy's own client."""
    storage = shardproxy.client.GrpcStorageProxy(host="127.0.0.1", port=port)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=RandomSampler())
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=count)
    finally:
        storage.close()


def kill_database_connections(url: str) -> int:
    """KILLs every connection to the test's database (a server restart, as a client sees it)."""
    name = sqlalchemy.engine.make_url(url).database
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    killed = 0
    with engine.connect() as conn:
        ids = conn.execute(sqlalchemy.text(
            "SELECT id FROM information_schema.PROCESSLIST WHERE db = :db AND id <> "
            "CONNECTION_ID()"), {"db": name}).scalars().all()
        for connection_id in ids:
            conn.execute(sqlalchemy.text(f"KILL CONNECTION {int(connection_id)}"))
            killed += 1
    engine.dispose()
    return killed


def test_metrics_count_what_real_clients_did(mariadb_url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    admin = free_port()
    with serve(mariadb_url, workers=2, options=("--admin-port", str(admin))) as (server, port):
        assert http_get(admin, "/healthz") == (200, "ok\n")
        wait_for(lambda: http_get(admin, "/readyz") == (200, "ready\n"), "ready")
        # Studies on both shards, with trial counts of their own.
        trials: dict[str, int] = {}
        owned: dict[int, int] = {0: 0, 1: 0}  # trials of the studies each shard owns
        with proxy_client(port) as setup:
            while len(trials) < 4 or 0 in owned.values():
                name = f"metrics-{len(trials)}"
                optuna.create_study(study_name=name, storage=setup)
                trials[name] = 5 + len(trials)
                owned[owner_of(setup.get_study_id_from_name(name), 2)] += trials[name]
            with pytest.raises(KeyError):
                setup.get_study_id_from_name("no-such-study")
        before = settled(admin)
        run_studies(port, trials)
        created = sum(trials.values())
        extended = {"metrics-extension": 4}
        run_extension_study(port, *next(iter(extended.items())))
        with proxy_client(port) as reader:  # a read of each study brings its cache up to date
            for name, count in {**trials, **extended}.items():
                assert len(optuna.load_study(study_name=name, storage=reader).trials) == count
        after = settled(admin)
        assert value(after, "shardproxy_cached_trials") == created + sum(extended.values())

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        # Every RPC counted once, by method and status, and timed once.
        assert delta("shardproxy_rpcs_total", method="CreateNewTrial", code="OK") == created
        assert delta("shardproxy_rpcs_total", method="SetTrialStateValues", code="OK") == created
        assert value(before, "shardproxy_rpcs_total", method="GetStudyIdFromName",
                     code="NOT_FOUND") == 1
        assert delta("shardproxy_rpcs_total", code="INTERNAL") == 0
        for method in ("GetTrials", "GetTrial", "CreateNewTrial", "SetTrialParameter",
                       *EXTENSION_WRITES):
            assert (delta("shardproxy_rpc_duration_seconds_count", method=method)
                    == delta("shardproxy_rpcs_total", method=method) > 0)
        for method in EXTENSION_WRITES:
            assert delta("shardproxy_rpcs_total", method=method, code="OK") == sum(
                extended.values())
        # One client process has one connection, so one front: the studies owned by
        # the other worker were forwarded, every request of theirs.
        assert delta("shardproxy_forwarded_total", method="CreateNewTrial") in owned.values()
        # Each trial write is one operation of some group commit.
        writes = sum(delta("shardproxy_rpcs_total", method=m, code="OK") for m in TRIAL_WRITES)
        assert delta("shardproxy_commit_batch_size_sum") == writes
        assert 0 < delta("shardproxy_commit_batch_size_count") <= writes
        assert delta("shardproxy_commit_duration_seconds_count") == delta(
            "shardproxy_commit_batch_size_count")
        # GetTrial reads an unfinished trial on its own: one batch per statement.
        batches = delta("shardproxy_trial_reads_per_batch_count")
        assert 0 < batches <= delta("shardproxy_trial_reads_per_batch_sum") <= delta(
            "shardproxy_rpcs_total", method="GetTrial", code="OK")
        syncs = delta("shardproxy_cache_reads_per_sync_count")
        assert 0 < syncs <= delta("shardproxy_cache_reads_per_sync_sum")
        assert delta("shardproxy_db_statements_total") >= delta(
            "shardproxy_commit_batch_size_count") + syncs + batches
        assert value(after, "shardproxy_cached_studies") == len(trials) + len(extended)
        assert value(after, "shardproxy_cached_bytes") > 0
        (build,) = [labels for name, labels in after if name == "shardproxy_build_info"]
        assert dict(build)["version"] == __version__
        assert dict(build)["driver"] == "mysql+pymysql"
        assert value(after, "shardproxy_build_info", **dict(build)) == 1
        assert delta("shardproxy_db_transient_errors_total") == 0
        # No reply here is large enough to take room in the cache bound (`reply_room`).
        assert ("shardproxy_reply_room_waits_total", ()) in after
        assert value(after, "shardproxy_reply_room_waits_total") == 0
        assert total(after, "shardproxy_worker_restarts_total") == 0
        assert total(after, "shardproxy_shard_ready") == 2

        # The database drops every connection: the store retries, and says so.
        assert kill_database_connections(mariadb_url) > 0
        run_studies(port, {name: 2 for name in trials})
        faulted = settled(admin)
        assert value(faulted, "shardproxy_db_transient_errors_total") >= 1
        assert value(faulted, "shardproxy_db_retries_total") >= 1
        assert total(faulted, "shardproxy_rpcs_total", method="CreateNewTrial", code="OK") == (
            total(before, "shardproxy_rpcs_total", method="CreateNewTrial") + created
            + 2 * len(trials))
        assert server.poll() is None
