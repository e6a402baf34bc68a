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
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.databases import fresh_database
from tests.faults.harness import serve, worker_pids
from tests.faults.relay import cutting, relay_for, relayed_url
from tests.faults.trials import (
    acknowledged_after,
    assert_nothing_lost,
    audit,
    client_processes,
    stored_trials,
    wait_for_progress,
)
from tests.proxies import proxy_client
from tests.servers import server_log

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 8
STUDIES = [f"cut-{i}" for i in range(4)]
LONG = os.environ.get("SHARDPROXY_LONG_FAULTS", "") not in ("", "0")
CUTTING = 30.0 if LONG else 10.0
AFTER = 2.0  # load after the last cut


@pytest.fixture(params=["mariadb", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_connections_cut_at_random_fail_no_client_and_lose_nothing(database: str) -> None:
    with relay_for(database) as relay, \
            serve(relayed_url(database, relay), workers=WORKERS) as (server, port):
        with proxy_client(port) as setup:
            for name in STUDIES:
                optuna.create_study(study_name=name, storage=setup)
        workers_before = worker_pids(server)
        with client_processes(port, STUDIES, CLIENTS) as collect:
            wait_for_progress(lambda: stored_trials(database) - CLIENTS)
            with cutting(relay, seed=13) as moments:
                time.sleep(CUTTING)
            last_cut = time.monotonic()
            time.sleep(AFTER)
            reports = collect()
        assert worker_pids(server) == workers_before, "a worker was restarted"
        log = server_log(server)
    found = audit(database, reports)
    print(f"{len(moments)} cuts, {relay.cuts} connections cut, {found.summary()}")
    assert len(moments) >= CUTTING / 1.0, "the relay cut less often than planned"
    assert found.failures == {}, (
        found.summary(), [f for r in reports for f in r.failures][:20],
        [line for line in log.splitlines() if "ERROR" in line][-20:],
    )
    assert_nothing_lost(found)
    stalled = [name for name, n in acknowledged_after(reports, last_cut).items() if not n]
    assert stalled == [], f"no progress after the cuts: {stalled}"
