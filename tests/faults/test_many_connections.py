"""Thousands of client connections at once.

`shardproxy serve` (4 workers, MariaDB) is sent 5 000 connections from 4 client
processes within a few seconds; then 2 000 of them run trials at once (the load
generator's virtual Optuna workers) for 10 s while the rest stay open. No
connection is refused, no RPC fails, no worker dies, and the memory of each
worker stays bounded (its peak RSS is printed; the bound asserted is generous, a
leak per connection or per call would pass it). `python -m bench.faults` reports
the same case with latencies beside Optuna's stock proxy.
"""

from __future__ import annotations

import optuna
import pytest

from tests.faults.crowd import RssWatch, latency_percentiles, merged, run_crowd
from tests.faults.harness import serve, worker_pids
from tests.proxies import proxy_client

pytestmark = pytest.mark.slow

WORKERS = 4
CONNECTIONS = 5000
ACTIVE = 2000
DURATION = 10.0
RSS_BOUND_MIB = 1024


def test_five_thousand_connections_and_two_thousand_running_trials(mariadb_url: str) -> None:
    with serve(mariadb_url, workers=WORKERS) as (server, port):
        with proxy_client(port) as setup:
            study_ids = tuple(
                optuna.create_study(study_name=f"crowd-{i}", storage=setup)._study_id
                for i in range(4))
        workers = worker_pids(server)
        with RssWatch(workers) as rss:
            reports = run_crowd(f"127.0.0.1:{port}", CONNECTIONS, ACTIVE, study_ids, DURATION)
        assert worker_pids(server) == workers, "a worker died"
    total, recorder = merged(reports)
    print(f"opened {total.opened} in {total.connect_seconds:.1f} s, "
          f"{recorder.trials} trials, peak RSS MiB {rss.peak}, "
          f"latencies {latency_percentiles(recorder)}")
    assert total.failed_to_connect == 0
    assert total.opened == CONNECTIONS
    assert total.errors == {}, total.errors
    assert recorder.trials > 0
    assert recorder.errors == 0
    assert all(0 < peak < RSS_BOUND_MIB for peak in rss.peak.values()), rss.peak
