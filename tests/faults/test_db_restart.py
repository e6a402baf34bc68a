"""The database server stopped under load, then started again.

`shardproxy serve` (4 workers) serves 8 unmodified Optuna client processes on 4
studies while the test stops the MariaDB or PostgreSQL server, keeps it down, and
starts it again (in a `finally`: the server is restored whatever happens).

- Within `--retry-deadline`: no client sees an exception at all; their calls wait
  for the database and complete.
- Past a shortened `--retry-deadline`: clients are answered UNAVAILABLE (nothing
  else, INTERNAL least of all), and a call so answered wrote nothing; once the
  database is back the same worker processes serve again, without a restart.

Afterwards, in both cases: every trial a client saw acknowledged is stored as
acknowledged, numbers are unique and dense, no trial is left RUNNING, and no
trial exists that no client was told of. The default outages are short, because
other test runs share these servers; SHARDPROXY_LONG_FAULTS=1 runs the long one
(30 s past a 10 s deadline). Everything that stops a server is in this one module,
so that the outages follow one another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from tests.databases import fresh_database
from tests.faults import dbserver
from tests.faults.harness import serve, worker_pids
from tests.faults.trials import (
    Audit,
    acknowledged_after,
    assert_nothing_lost,
    audit,
    client_processes,
    first_ack_after,
    stored_trials,
    wait_for_progress,
)
from tests.proxies import proxy_client
from tests.servers import server_log

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 8
STUDIES = [f"restart-{i}" for i in range(4)]
WARM_UP = 2.0  # load before the outage
AFTER = 4.0  # load after the database answers again
LONG = os.environ.get("SHARDPROXY_LONG_FAULTS", "") not in ("", "0")
# (outage seconds, --retry-deadline seconds)
WITHIN_DEADLINE = (5.0, 60.0)
PAST_DEADLINE = (30.0, 10.0) if LONG else (8.0, 2.0)


@dataclass
class OutageRun:
    outage: dbserver.Outage
    audit: Audit
    reports: list
    workers_before: dict[str, int]
    workers_after: dict[str, int]
    server_log: str

    @property
    def recovered_after(self) -> float | None:
        """Seconds from the database answering again to the first trial acknowledged."""
        return first_ack_after(self.reports, self.outage.up_at)


def run_outage(url: str, backend: str, outage_seconds: float, deadline: float) -> OutageRun:
    options = ("--retry-deadline", str(deadline))
    with serve(url, workers=WORKERS, options=options) as (server, port):
        with proxy_client(port) as setup:
            for name in STUDIES:
                optuna.create_study(study_name=name, storage=setup)
        workers_before = worker_pids(server)
        with client_processes(port, STUDIES, CLIENTS) as collect:
            wait_for_progress(lambda: stored_trials(url) - CLIENTS)
            time.sleep(WARM_UP)
            outage = dbserver.outage(backend, outage_seconds)
            time.sleep(AFTER)
            reports = collect()
        workers_after = worker_pids(server)
        log = server_log(server)
    return OutageRun(outage, audit(url, reports), reports, workers_before, workers_after, log)


def describe(run: OutageRun) -> str:
    failures = [(r.name, round(f.at - run.outage.down_at, 2), f.step, f.code, f.details)
                for r in run.reports for f in r.failures]
    return (f"outage {run.outage.seconds:.1f} s, recovered after {run.recovered_after} s, "
            f"{run.audit.summary()}, lost {run.audit.lost}, left running {run.audit.running}, "
            f"never acknowledged {run.audit.unacknowledged}, "
            f"failures (s after the stop) {failures[:20]}\n"
            "the server's errors:\n" + "\n".join(
                line for line in run.server_log.splitlines()
                if "COMMIT" in line or "ERROR" in line)[-6000:])


@pytest.fixture(params=["mariadb", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(backend, tmp_path) as url:
        yield url


def test_outage_within_the_retry_deadline_fails_no_client(backend: str, database: str) -> None:
    run = run_outage(database, backend, *WITHIN_DEADLINE)
    print(describe(run))
    assert run.audit.failures == {}, describe(run)
    assert_nothing_lost(run.audit)
    assert run.workers_after == run.workers_before, "a worker was restarted"
    stalled = [name for name, count in acknowledged_after(run.reports, run.outage.up_at).items()
               if not count]
    assert stalled == [], f"no progress after the outage: {stalled}"


def test_outage_past_the_retry_deadline_is_unavailable_then_served(
    backend: str, database: str
) -> None:
    outage_seconds, deadline = PAST_DEADLINE
    run = run_outage(database, backend, outage_seconds, deadline)
    print(describe(run))
    assert run.audit.failures, "the outage outlasted the deadline, yet no call failed"
    assert set(run.audit.failures) == {"UNAVAILABLE"}, describe(run)
    # A call fails only once its deadline has passed inside the outage: none fails
    # later than a deadline after the database answers again.
    late = [f for r in run.reports for f in r.failures
            if not run.outage.down_at < f.at < run.outage.up_at + deadline + 1.0]
    assert late == [], describe(run)
    assert_nothing_lost(run.audit)
    assert run.workers_after == run.workers_before, "a worker was restarted"
    stalled = [name for name, count in acknowledged_after(run.reports, run.outage.up_at).items()
               if not count]
    assert stalled == [], f"no progress after the outage: {stalled}"
