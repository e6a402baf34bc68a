"""Fault cases under load, shared by the fault tests and `python -m bench.faults`.

A case runs a proxy (shardproxy serve with 4 workers, or Optuna's stock proxy),
8 Optuna client processes on 4 studies (`trials.py`), and one fault while they
run; then it audits the database against what the clients were told. The tests
assert on the outcome; the benchmark tabulates it for both proxies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import optuna
from optuna.storages import GrpcStorageProxy

from tests.faults import dbserver
from tests.faults.harness import serve, worker_pids
from tests.faults.relay import cutting, relay_for, relayed_url
from tests.faults.trials import (
    Audit,
    Report,
    acknowledged_after,
    audit,
    client_processes,
    first_ack_after,
    stored_trials,
    wait_for_progress,
)
from tests.proxies import proxy_client
from tests.servers import server_log

WORKERS = 4
CLIENTS = 8
STUDIES = [f"fault-{i}" for i in range(4)]
WARM_UP = 2.0  # load before the fault
AFTER = 4.0  # load after it ended


@dataclass
class Running:
    """A proxy under test: its port, its processes by name, and its log so far."""

    port: int
    processes: Callable[[], dict[str, int]]
    log: Callable[[], str] = lambda: ""


# A proxy on a database URL, running inside the block.
Proxy = Callable[[str], contextlib.AbstractContextManager[Running]]


def shardproxy(options: tuple[str, ...] = (), workers: int = WORKERS) -> Proxy:
    @contextlib.contextmanager
    def run(url: str) -> Iterator[Running]:
        with serve(url, workers=workers, options=options) as (server, port):
            yield Running(port, lambda: worker_pids(server), lambda: server_log(server))
    return run


def stock() -> Proxy:
    """Optuna's own proxy, `run_grpc_proxy_server(get_storage(url))`, one process."""
    from bench.systems import ProxyOptions, running_proxy

    @contextlib.contextmanager
    def run(url: str) -> Iterator[Running]:
        with running_proxy("stock", url, ProxyOptions()) as proxy:
            yield Running(proxy.port, lambda: {"stock": proxy.pid})
    return run


@dataclass
class CaseRun:
    audit: Audit
    reports: list[Report]
    fault_at: float  # when the fault began (monotonic)
    over_at: float  # when it ended: the database answers again, the cuts stop, the kill
    processes_before: dict[str, int]
    processes_after: dict[str, int]
    log: str = ""
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def recovered_after(self) -> float | None:
        """Seconds from the end of the fault to the first trial acknowledged after it."""
        return first_ack_after(self.reports, self.over_at)

    def stalled_clients(self) -> list[str]:
        """Clients that acknowledged no trial after the fault ended."""
        return [name for name, count in acknowledged_after(self.reports, self.over_at).items()
                if not count]

    def failures_text(self, limit: int = 20) -> str:
        failures = [(r.name, round(f.at - self.fault_at, 2), f.step, f.code, f.details)
                    for r in self.reports for f in r.failures]
        return f"failures (s after the fault began): {failures[:limit]}"


def run_case(
    proxy: Proxy, proxy_url: str, audit_url: str, fault: Callable[[Running], tuple[float, float]]
) -> CaseRun:
    """The proxy on `proxy_url`, the clients, `fault(running)` -> (began, ended); audited
    on `audit_url`."""
    with proxy(proxy_url) as running:
        with proxy_client(running.port) as setup:
            for name in STUDIES:
                optuna.create_study(study_name=name, storage=setup)
        before = running.processes()
        with client_processes(running.port, STUDIES, CLIENTS) as collect:
            wait_for_progress(lambda: stored_trials(audit_url) - CLIENTS)
            time.sleep(WARM_UP)
            began, ended = fault(running)
            time.sleep(AFTER)
            reports = collect()
        after = running.processes()
        log = running.log()
    return CaseRun(audit(audit_url, reports), reports, began, ended, before, after, log)


def unavailable_probe(running: Running) -> int:
    """1 if a read sent while the database is down is answered UNAVAILABLE, else 0.

    The clients' own calls may all be writes whose COMMIT was cut by the outage, and
    those wait until their outcome is known: a read shows what a call gets."""
    storage = GrpcStorageProxy(host="127.0.0.1", port=running.port)
    try:
        storage.get_all_studies()
        return 0
    except grpc.RpcError as exc:
        return int(exc.code() == grpc.StatusCode.UNAVAILABLE)
    finally:
        storage.close()


def run_outage(
    proxy: Proxy, url: str, backend: str, seconds: float, probe: bool = False
) -> CaseRun:
    """The database server stopped for `seconds` (its restart included) under load;
    with `probe`, a read is sent once it is down (`notes["probe_unavailable"]`)."""
    probed: list[int] = []

    def fault(running: Running) -> tuple[float, float]:
        with dbserver.server_down(backend) as down:
            if probe:
                probed.append(unavailable_probe(running))
            remaining = seconds - (time.monotonic() - down.down_at)
            if remaining > 0:
                time.sleep(remaining)
        return down.down_at, down.up_at

    run = run_case(proxy, url, url, fault)
    if probed:
        run.notes["probe_unavailable"] = probed[0]
    return run


def run_cuts(proxy: Proxy, url: str, seconds: float, seed: int = 13) -> CaseRun:
    """Every proxy-to-database connection reset at random moments for `seconds`."""
    with relay_for(url) as relay:
        moments: list[float] = []

        def fault(_: Running) -> tuple[float, float]:
            began = time.monotonic()
            with cutting(relay, seed=seed) as cut_at:
                time.sleep(seconds)
            moments.extend(cut_at)
            return began, time.monotonic()

        run = run_case(proxy, relayed_url(url, relay), url, fault)
        run.notes.update(cuts=len(moments), connections_cut=relay.cuts)
    return run


def run_worker_kill(proxy: Proxy, url: str, victim: str = "shardproxy-w1") -> CaseRun:
    """One worker SIGKILLed under load (the supervisor replaces it)."""
    def fault(running: Running) -> tuple[float, float]:
        pid = running.processes()[victim]
        os.kill(pid, signal.SIGKILL)
        at = time.monotonic()
        return at, at

    return run_case(proxy, url, url, fault)
