"""A stuck worker is replaced by the watchdog; SIGHUP replaces every worker; under load.

`shardproxy serve --workers 4` on MariaDB, with unmodified Optuna clients in
processes of their own (one connection each, spread over the workers by
SO_REUSEPORT; see `test_worker_kill` for why processes and how the test learns
which worker serves which client).

- Watchdog: one worker is stopped with SIGSTOP, or has every request handler
  thread blocked (the test-only fault hook, SIGUSR2 with
  SHARDPROXY_TEST_FAULT_HOOKS=1). It is killed and replaced within the watchdog
  timeout (plus the supervisor's poll and a standby's start), the other workers
  are left alone, their clients see no error (their studies are owned elsewhere
  than the victim), the victim's clients reconnect, and nothing acknowledged is
  lost.
- Reload: SIGHUP while every client optimizes: each worker process and the standby
  are replaced, the supervisor's pid stays, not one client call fails, and nothing
  acknowledged is lost. (A replaced worker lets its clients leave at their maximum
  connection age before it stops, see `shardproxy.handover`: a short one here.)
"""

from __future__ import annotations

import collections
import os
import signal
import time

import optuna
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardproxy.child import STANDBY_PROCESS_NAME
from shardproxy.routing import owner_of
from tests.procfs import child_names, process_gone
from tests.proxies import free_port, proxy_client
from tests.servers import children_by_name, http_get, serve, standby_prepared, wait_until
from tests.test_worker_kill import (
    Client,
    ClientReport,
    acknowledged_between,
    assert_acknowledged_trials_stored,
    client_processes,
    find_workers,
    listens,
    receive,
)

pytestmark = pytest.mark.slow

WORKERS = 4
CLIENTS = 8
WATCHDOG_TIMEOUT = 4.0
# Beyond the timeout: the supervisor's poll (0.5 s), a standby taking the shard, and
# room for a busy machine.
REPLACEMENT_SLACK = 3.0
WARM_UP = 2.0
AFTER = 3.0


def restarts(admin: int) -> dict[str, float]:
    status, text = http_get(admin, "/metrics")
    assert status == 200, text
    return {
        sample.labels["cause"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shardproxy_worker_restarts_total"
    }


def start_clients(start_one: object, clients: list[Client], port: int, server: int) -> None:
    for _ in range(CLIENTS):
        start_one()  # type: ignore[operator]
    for client in clients:
        ports = receive(client, 60)
        assert isinstance(ports, list) and len(ports) == 1, ports
        client.port = ports[0]
    find_workers(clients, port, server)


def hand_out_studies(clients: list[Client], port: int, not_owned_by: int | None) -> None:
    """A new study per client, none of them owned by shard `not_owned_by`."""
    with proxy_client(port) as setup:
        number = 0
        for client in clients:
            while True:
                name = f"load-{number}"
                number += 1
                optuna.create_study(study_name=name, storage=setup)
                owner = owner_of(setup.get_study_id_from_name(name), WORKERS)
                if owner != not_owned_by:
                    break
            client.study, client.owner = name, f"shardproxy-w{owner}"
            client.conn.send(name)


def collect_reports(clients: list[Client]) -> None:
    for client in clients:
        report = receive(client, 60)
        assert isinstance(report, ClientReport), report
        client.report = report


@pytest.mark.parametrize("fault", ["sigstop", "blocked-handlers"])
def test_watchdog_replaces_a_stuck_worker_and_spares_the_others(
    mariadb_url: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fault == "blocked-handlers":
        monkeypatch.setenv("SHARDPROXY_TEST_FAULT_HOOKS", "1")
    admin = free_port()
    options = ("--watchdog-timeout", str(WATCHDOG_TIMEOUT), "--admin-port", str(admin),
               "--threads", "8")
    with serve(mariadb_url, workers=WORKERS, options=options) as (server, port), \
            client_processes(port) as (clients, stop, start_one):
        start_clients(start_one, clients, port, server.pid)
        served = collections.Counter(client.worker for client in clients)
        # The victim has clients of its own, the fewest, so that others have many.
        victim = min(sorted(served), key=lambda name: served[name])
        hand_out_studies(clients, port, not_owned_by=int(victim.removeprefix("shardproxy-w")))
        time.sleep(WARM_UP)
        assert wait_until(lambda: standby_prepared(server.pid), 60), "no standby"
        workers = children_by_name(server.pid)
        os.kill(workers[victim], signal.SIGSTOP if fault == "sigstop" else signal.SIGUSR2)
        stuck_at = time.monotonic()
        replaced = wait_until(
            lambda: children_by_name(server.pid).get(victim) not in (None, workers[victim]),
            WATCHDOG_TIMEOUT + 60, interval=0.01,
        )
        replaced_after = time.monotonic() - stuck_at
        assert replaced, f"{victim} was not replaced"
        replacement = children_by_name(server.pid)[victim]
        assert wait_until(lambda: listens(replacement, port), 30), "the replacement listens"
        serving_again = time.monotonic()
        time.sleep(AFTER)
        stop.set()
        collect_reports(clients)
        after = children_by_name(server.pid)
        counted = restarts(admin)

    print(f"\n{fault}: {victim} replaced after {replaced_after:.2f} s")
    assert replaced_after < WATCHDOG_TIMEOUT + REPLACEMENT_SLACK
    assert counted == {"crash": 0, "watchdog": 1, "reload": 0}
    assert all(after[name] == pid for name, pid in workers.items() if name != victim), (
        "a worker that was not stuck was replaced"
    )
    assert_acknowledged_trials_stored(mariadb_url, clients)
    for client in clients:
        report = client.outcome()
        assert acknowledged_between(client, 0, stuck_at), f"{client} idle before the fault"
        if client.worker == victim:  # its connection died with the worker
            assert all(f.code == "UNAVAILABLE" for f in report.failures), report.failures
            assert acknowledged_between(client, serving_again, float("inf")), (
                f"{client} made no progress once the replacement served"
            )
        else:
            assert not report.failures, f"{client}: {report.failures}"
            assert report.ports_at_end == report.ports_at_start, f"{client} lost its connection"
            assert acknowledged_between(client, stuck_at, serving_again), (
                f"{client} waited for a worker it does not need"
            )


def test_sighup_replaces_every_worker_under_load_without_a_failed_call(mariadb_url: str) -> None:
    admin = free_port()
    # Replaced workers wait for their clients to leave at the connection age: short here.
    options = ("--admin-port", str(admin), "--max-connection-age", "3",
               "--max-connection-age-grace", "3")
    with serve(mariadb_url, workers=WORKERS, options=options) as (server, port), \
            client_processes(port) as (clients, stop, start_one):
        start_clients(start_one, clients, port, server.pid)
        hand_out_studies(clients, port, not_owned_by=None)
        time.sleep(WARM_UP)
        assert wait_until(lambda: standby_prepared(server.pid), 60), "no standby"
        before = child_names(server.pid)
        old = {pid for pid, name in before.items()
               if name.startswith("shardproxy-w") or name == STANDBY_PROCESS_NAME}
        assert len(old) == WORKERS + 1
        server.send_signal(signal.SIGHUP)
        hup_at = time.monotonic()

        def all_replaced() -> bool:
            names = children_by_name(server.pid)
            return (len(names) == WORKERS and not old & set(names.values())
                    and all(process_gone(pid) for pid in old))

        assert wait_until(all_replaced, 180, interval=0.05), "not every worker was replaced"
        replaced_at = time.monotonic()
        assert wait_until(lambda: standby_prepared(server.pid), 60), "no new standby"
        time.sleep(AFTER)
        stop.set()
        collect_reports(clients)
        assert server.poll() is None, "the supervisor exited"
        new = {pid for pid, name in child_names(server.pid).items()
               if name.startswith("shardproxy-w") or name == STANDBY_PROCESS_NAME}
        counted = restarts(admin)

    print(f"\nreload took {replaced_at - hup_at:.1f} s")
    assert not new & old and len(new) == WORKERS + 1
    assert counted == {"crash": 0, "watchdog": 0, "reload": WORKERS}
    assert_acknowledged_trials_stored(mariadb_url, clients)
    for client in clients:
        report = client.outcome()
        assert not report.failures, f"{client}: {report.failures}"
        assert acknowledged_between(client, hup_at, replaced_at), f"{client} stalled"
        assert acknowledged_between(client, replaced_at, float("inf")), f"{client} stalled"
