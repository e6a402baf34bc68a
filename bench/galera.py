"""shardproxy on a two-node Galera cluster against one plain server, in one run.

    python -m bench.galera [--clients 16] [--trials-per-client 30] [--reads 2000]
        [--out bench/results/galera]

Setups, each with fresh servers and a fresh study, the same Optuna load (16 client
threads with RandomSampler through real `GrpcStorageProxy` clients):

- single: one plain MariaDB server (no Galera, the nodes' settings), one proxy,
  then two (each proxy syncs its own cache: the reads a second proxy adds anywhere);
- galera, one proxy: the cluster, one proxy on node 0 (every write through one node);
- galera, two proxies: one proxy per node, the clients split between them.

Per setup: trials/s (trials over the clients' wall clock), statements and commits
per trial as the servers count them (`Questions`, `Com_commit`, summed over the
nodes: statements a node applies for another node are not counted), certification
failures and brute-force aborts, and the duplicate numbers left (must be 0).

Then the cost of causal reads (`wsrep_sync_wait = 1`, which the store sets on
Galera): a study's delta read on node 1, alternately with and without it, while
idle and while the two proxies write.

Proxies run with one worker each: this machine has two cores for everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from tests.cluster.galera import GaleraCluster, Node, galera_cluster
from tests.cluster.load import (
    check,
    create_study,
    proxy,
    run_clients,
    shardproxy_serve,
    study_rows,
)

COUNTERS = ("Questions", "Com_commit", "wsrep_local_cert_failures", "wsrep_local_bf_aborts")


@dataclass
class Setup:
    name: str
    trials: int = 0
    seconds: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)  # per trial
    duplicate_numbers: int = 0
    missing_numbers: int = 0
    client_errors: int = 0

    @property
    def trials_per_second(self) -> float:
        return self.trials / self.seconds if self.seconds else 0.0


@dataclass
class ReadCost:
    when: str
    reads: int
    no_wait_us: float  # median per read
    sync_wait_us: float


def _counters(nodes: list[Node]) -> dict[str, int]:
    totals = dict.fromkeys(COUNTERS, 0)
    for node in nodes:
        for name in COUNTERS:
            totals[name] += int(node.status(name) or 0)
    return totals


def run_setup(name: str, cluster: GaleraCluster, proxies: int, clients: int,
              trials_per_client: int, logs: Path,
              during: Callable[[str, str], None] | None = None) -> Setup:
    database = f"bench_{uuid.uuid4().hex[:10]}"
    result = Setup(name)
    with cluster.database(database):
        urls = cluster.urls(database)
        study_name = create_study(urls[0])
        time.sleep(0.5)  # the study replicated everywhere before the first count
        with contextlib.ExitStack() as stack:
            ports = [stack.enter_context(shardproxy_serve(
                urls[i % len(urls)], logs / f"{uuid.uuid4().hex[:6]}-{i}.log", "--workers", "1"))
                for i in range(proxies)]
            before = _counters(cluster.nodes)
            side = None
            if during is not None:
                side = threading.Thread(target=lambda: during(urls[-1], study_name))
                side.start()
            started = time.monotonic()
            reports = run_clients([proxy(port) for port in ports] * (clients // proxies),
                                  study_name, trials_per_client)
            result.seconds = time.monotonic() - started
            after = _counters(cluster.nodes)
            if side is not None:
                side.join()
        findings = check(study_rows(urls[0], study_name), reports)
    result.trials = findings.trials
    result.duplicate_numbers = len(findings.duplicate_numbers)
    result.missing_numbers = len(findings.missing_numbers)
    result.client_errors = len(findings.errors)
    result.counters = {k: (after[k] - before[k]) / max(1, result.trials) for k in COUNTERS}
    return result


def read_costs(url: str, study_name: str, reads: int, when: str) -> ReadCost:
    """Median time of the delta read, with wsrep_sync_wait 0 and 1 alternated."""
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    timings: dict[int, list[float]] = {0: [], 1: []}
    try:
        with engine.connect() as conn:
            study_id = conn.exec_driver_sql(
                "SELECT study_id FROM studies WHERE study_name = %(n)s", {"n": study_name}
            ).scalar()
            for i in range(reads):
                wait = i % 2
                conn.exec_driver_sql(f"SET SESSION wsrep_sync_wait = {wait}")
                started = time.perf_counter()
                conn.exec_driver_sql(
                    "SELECT trial_id, number, state FROM trials WHERE study_id = %(s)s "
                    "AND trial_id > (SELECT COALESCE(MAX(trial_id), 0) - 40 FROM trials "
                    "WHERE study_id = %(s)s)", {"s": study_id}).all()
                timings[wait].append(time.perf_counter() - started)
    finally:
        engine.dispose()
    return ReadCost(when, reads, statistics.median(timings[0]) * 1e6,
                    statistics.median(timings[1]) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--trials-per-client", type=int, default=30)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--out", default="bench/results/galera")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logs = Path(tempfile.mkdtemp(prefix="bench-galera-"))  # the proxies' logs
    load_before = os.getloadavg()
    setups: list[Setup] = []
    costs: list[ReadCost] = []
    with galera_cluster(wsrep=False) as single:
        setups.append(run_setup("single server, one proxy", single, 1, args.clients,
                                args.trials_per_client, logs))
        setups.append(run_setup("single server, two proxies", single, 2, args.clients,
                                args.trials_per_client, logs))
    with galera_cluster() as cluster:
        setups.append(run_setup("galera, one proxy on node 0", cluster, 1, args.clients,
                                args.trials_per_client, logs))

        def reads_under_load(url: str, study_name: str) -> None:
            time.sleep(2.0)  # the clients are running
            costs.append(read_costs(url, study_name, args.reads // 4, "while two proxies write"))

        setups.append(run_setup("galera, two proxies (one per node)", cluster, 2, args.clients,
                                args.trials_per_client, logs, during=reads_under_load))
        with cluster.database(f"bench_{uuid.uuid4().hex[:10]}") as database:
            url = cluster.urls(database)[1]
            name = create_study(cluster.urls(database)[0])
            costs.insert(0, read_costs(url, name, args.reads, "idle"))
    load_after = os.getloadavg()
    report(setups, costs, args, load_before, load_after)
    print(f"proxy logs in {logs}")


def report(setups: list[Setup], costs: list[ReadCost], args: Any,
           load_before: tuple[float, float, float], load_after: tuple[float, float, float]
           ) -> None:
    base = setups[0]
    lines = [
        "| setup | trials | trials/s | × single | statements/trial | commits/trial "
        "| cert failures/trial | BF aborts/trial | duplicates | missing | client errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in setups:
        c = s.counters
        lines.append(
            f"| {s.name} | {s.trials} | {s.trials_per_second:.1f} | "
            f"{s.trials_per_second / base.trials_per_second:.2f} | {c['Questions']:.2f} | "
            f"{c['Com_commit']:.2f} | {c['wsrep_local_cert_failures']:.3f} | "
            f"{c['wsrep_local_bf_aborts']:.3f} | {s.duplicate_numbers} | {s.missing_numbers} "
            f"| {s.client_errors} |")
    lines += ["", "| causal reads | reads | median µs, wsrep_sync_wait=0 | median µs, =1 | "
              "extra µs |", "|---|---:|---:|---:|---:|"]
    for cost in costs:
        lines.append(f"| {cost.when} | {cost.reads} | {cost.no_wait_us:.0f} | "
                     f"{cost.sync_wait_us:.0f} | {cost.sync_wait_us - cost.no_wait_us:.0f} |")
    text = "\n".join(lines)
    print(text)
    print(f"load average before {load_before}, after {load_after}")
    Path(args.out + ".json").write_text(json.dumps({
        "setups": [asdict(s) | {"trials_per_second": s.trials_per_second} for s in setups],
        "read_costs": [asdict(c) for c in costs],
        "load_before": load_before, "load_after": load_after,
        "clients": args.clients, "trials_per_client": args.trials_per_client,
    }, indent=2))


if __name__ == "__main__":
    main()
