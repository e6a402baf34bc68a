"""Every connection between the proxy and its database cut, again and again, under load.

`shardproxy serve` (4 workers) reaches MariaDB or PostgreSQL through a TCP relay
in the test (`relay.py`), and 8 unmodified Optuna client processes run trials
through it, while the relay resets every open database connection at random
moments (0.1 to 1 s apart) for 10 s (SHARDPROXY_LONG_FAULTS=1: 30 s). A cut
lands wherever a connection is: in a read, in a group commit's statements, in
the reply to its COMMIT.

No client sees an exception; every acknowledged trial is stored as
acknowledged; numbers are unique and dense; no trial is RUNNING at the end; and
no trial exists that no client was told of (a write retried after a lost COMMIT
reply that had in fact committed would show as one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_database
from tests.faults.cases import run_cuts, shardproxy
from tests.faults.trials import assert_nothing_lost

pytestmark = pytest.mark.slow

LONG = os.environ.get("SHARDPROXY_LONG_FAULTS", "") not in ("", "0")
CUTTING = 30.0 if LONG else 10.0


@pytest.fixture(params=["mariadb", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_connections_cut_at_random_fail_no_client_and_lose_nothing(database: str) -> None:
    run = run_cuts(shardproxy(), database, CUTTING)
    print(run.notes, run.audit.summary())
    assert run.notes["cuts"] >= CUTTING / 1.0, "the relay cut less often than planned"
    errors = [line for line in run.log.splitlines() if "ERROR" in line][-20:]
    assert run.audit.failures == {}, (run.audit.summary(), run.failures_text(), errors)
    assert_nothing_lost(run.audit)
    assert run.processes_after == run.processes_before, "a worker was restarted"
    assert run.stalled_clients() == [], "no progress after the cuts"
