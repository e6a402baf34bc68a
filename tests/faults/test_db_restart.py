"""The database server stopped under load, then started again.

`shardproxy serve` (4 workers) serves 8 unmodified Optuna client processes on 4
studies while the test stops the MariaDB or PostgreSQL server, keeps it down, and
starts it again (in a `finally`: the server is restored whatever happens).

- Within `--retry-deadline`: no client sees an exception at all; their calls wait
  for the database and complete.
- Past a shortened `--retry-deadline`: calls are answered UNAVAILABLE (nothing
  else, INTERNAL least of all; a read the test sends in the outage shows it, since
  the clients' own calls may all be writes of the next kind), and a call so
  answered wrote nothing: a write whose COMMIT the outage cut is answered only
  once its outcome is known. Once the database is back the same worker processes
  serve again, without a restart.

Afterwards, in both cases: every trial a client saw acknowledged is stored as
acknowledged, numbers are unique and dense, no trial is left RUNNING, and no
trial exists that no client was told of. The default outages are short, because
other test runs share these servers; SHARDPROXY_LONG_FAULTS=1 runs the long one
(30 s past a 10 s deadline). Everything that stops a server is in this one module,
so that the outages follow one another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_database
from tests.faults.cases import CaseRun, run_outage, shardproxy
from tests.faults.trials import assert_nothing_lost

pytestmark = pytest.mark.slow

LONG = os.environ.get("SHARDPROXY_LONG_FAULTS", "") not in ("", "0")
# (outage seconds, --retry-deadline seconds)
WITHIN_DEADLINE = (5.0, 60.0)
PAST_DEADLINE = (30.0, 10.0) if LONG else (8.0, 2.0)


def describe(run: CaseRun) -> str:
    errors = "\n".join(line for line in run.log.splitlines()
                       if "COMMIT" in line or "ERROR" in line)
    return (f"outage {run.over_at - run.fault_at:.1f} s, recovered after "
            f"{run.recovered_after} s, {run.audit.summary()}, lost {run.audit.lost}, "
            f"left running {run.audit.running}, never acknowledged "
            f"{run.audit.unacknowledged}, {run.failures_text()}\n"
            f"the server's errors:\n{errors[-6000:]}")


@pytest.fixture(params=["mariadb", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(backend, tmp_path) as url:
        yield url


def test_outage_within_the_retry_deadline_fails_no_client(backend: str, database: str) -> None:
    seconds, deadline = WITHIN_DEADLINE
    run = run_outage(shardproxy(("--retry-deadline", str(deadline))), database, backend, seconds)
    print(describe(run))
    assert run.audit.failures == {}, describe(run)
    assert_nothing_lost(run.audit)
    assert run.processes_after == run.processes_before, "a worker was restarted"
    assert run.stalled_clients() == [], "no progress after the outage"


def test_outage_past_the_retry_deadline_is_unavailable_then_served(
    backend: str, database: str
) -> None:
    seconds, deadline = PAST_DEADLINE
    run = run_outage(shardproxy(("--retry-deadline", str(deadline))), database, backend, seconds,
                     probe=True)
    print(describe(run))
    assert run.notes["probe_unavailable"] == 1, "a read in the outage was not UNAVAILABLE"
    assert set(run.audit.failures) <= {"UNAVAILABLE"}, describe(run)
    # A call fails only once its deadline has passed inside the outage: none fails
    # later than a deadline after the database answers again.
    late = [f for r in run.reports for f in r.failures
            if not run.fault_at < f.at < run.over_at + deadline + 1.0]
    assert late == [], describe(run)
    assert run.processes_after == run.processes_before, "a worker was restarted"
    assert run.stalled_clients() == [], "no progress after the outage"
    # Nothing half-applied: a write answered UNAVAILABLE wrote nothing, and one whose
    # COMMIT's outcome was unknown at the deadline was not answered until it was known.
    assert_nothing_lost(run.audit)
