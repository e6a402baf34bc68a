"""Database statements per heartbeat: many beating trials through shardproxy, and RDBStorage.

    python -m bench.heartbeats [--trials 1000] [--clients 4] [--interval 1]
        [--seconds 20] [--workers 2]

`--trials` RUNNING trials beat, as `study.optimize`'s heartbeat thread does: one
thread per trial calls `record_heartbeat` every `--interval` seconds, spread over
`--clients` processes using `shardproxy.client.GrpcStorageProxy` against
`shardproxy serve --workers N` on a fresh MariaDB database; then the same beats
through Optuna's RDBStorage directly, for reference, on a database of its own.

Per beat, over the measured window (after a warm-up of one interval):
- proxy: statements the proxy's store sent (its `/metrics` db_statements_total)
  and group commits (commit_batch_size_count);
- server: MariaDB `SHOW GLOBAL STATUS` deltas of Questions and Com_commit. These
  are server-wide: other sessions on the server during the window are counted
  too (the machine is shared; `uptime` is printed beside).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import optuna
import sqlalchemy

from bench.databases import fresh_database
from shardproxy.client import GrpcStorageProxy

COUNTERS = ("Questions", "Com_commit")


def beat_forever(storage: object, trial_ids: list[int], interval: float, stop: Event,
                 counts: list[int]) -> None:
    """One thread per trial: beat, wait the interval, until stopped."""

    def beat(slot: int, trial_id: int) -> None:
        time.sleep(interval * slot / max(1, len(trial_ids)))  # spread the first beats
        while not stop.is_set():
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            counts[slot] += 1
            stop.wait(interval)

    threads = [threading.Thread(target=beat, args=(i, t), daemon=True)
               for i, t in enumerate(trial_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def client_process(kind: str, target: str, trial_ids: list[int], interval: float,
                   stop: Event, report: Connection) -> None:
    warnings.simplefilter("ignore")
    if kind == "proxy":
        host, port = target.rsplit(":", 1)
        storage: object = GrpcStorageProxy(host=host, port=int(port), heartbeat_interval=60)
    else:
        storage = optuna.storages.RDBStorage(target, heartbeat_interval=60)
    counts = [0] * len(trial_ids)
    window = threading.Event()
    started: list[int] = []

    def mark() -> None:  # counts at the window's start, when told
        window.wait()
        started.append(sum(counts))

    marker = threading.Thread(target=mark)
    marker.start()
    runner = threading.Thread(target=beat_forever,
                              args=(storage, trial_ids, interval, stop, counts))
    runner.start()
    report.send("ready")
    report.recv()  # the window starts
    window.set()
    marker.join()
    runner.join()
    report.send(sum(counts) - started[0])


def status(admin: sqlalchemy.Engine) -> dict[str, int]:
    with admin.connect() as conn:
        rows = conn.exec_driver_sql("SHOW GLOBAL STATUS WHERE Variable_name IN "
                                    "('Questions', 'Com_commit')")
        return {name: int(value) for name, value in rows}


def scrape(admin_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read()
    found = {}
    for name in ("shardproxy_db_statements_total", "shardproxy_commit_batch_size_count"):
        match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text.decode(), re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def make_trials(storage: optuna.storages.BaseStorage, count: int) -> list[int]:
    study = optuna.create_study(storage=storage)
    return [storage.create_new_trial(study._study_id) for _ in range(count)]


def run(kind: str, target: str, trial_ids: list[int], args: argparse.Namespace,
        admin: sqlalchemy.Engine, admin_port: int | None) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pipes, processes = [], []
    for part in range(args.clients):
        mine, theirs = context.Pipe()
        process = context.Process(target=client_process, args=(
            kind, target, trial_ids[part::args.clients], args.interval, stop, theirs))
        process.start()
        pipes.append(mine)
        processes.append(process)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    time.sleep(args.interval * 2)  # warm-up: every trial has beaten
    before, proxy_before = status(admin), scrape(admin_port) if admin_port else {}
    started = time.monotonic()
    for pipe in pipes:
        pipe.send("go")
    time.sleep(args.seconds)
    after, proxy_after = status(admin), scrape(admin_port) if admin_port else {}
    elapsed = time.monotonic() - started
    stop.set()
    beats = sum(pipe.recv() for pipe in pipes)
    for process in processes:
        process.join(60)
    result = {"beats": beats, "beats_per_s": beats / elapsed}
    for name in COUNTERS:
        result[f"{name}_per_beat"] = (after[name] - before[name]) / beats
    for name, value in proxy_after.items():
        result[f"{name}_per_beat"] = (value - proxy_before[name]) / beats
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    results = {}
    with fresh_database("mariadb") as db:
        admin = sqlalchemy.create_engine(db.admin_url, poolclass=sqlalchemy.pool.NullPool)
        port, admin_port = 13700 + os.getpid() % 200, 13950 + os.getpid() % 40
        server = subprocess.Popen([sys.executable, "-m", "shardproxy", "serve", "--storage",
                                   db.url, "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", str(args.workers), "--admin-port",
                                   str(admin_port), "--log-level", "WARNING"])
        try:
            client = GrpcStorageProxy(host="127.0.0.1", port=port)
            client.wait_server_ready(60)
            trial_ids = make_trials(client, args.trials)
            client.close()
            results["shardproxy"] = run("proxy", f"127.0.0.1:{port}", trial_ids, args, admin,
                                        admin_port)
        finally:
            server.terminate()
            server.wait(60)
    with fresh_database("mariadb") as db:
        storage = optuna.storages.RDBStorage(db.url)
        trial_ids = make_trials(storage, args.trials)
        storage.engine.dispose()
        results["RDBStorage"] = run("rdb", db.url, trial_ids, args, admin, None)
    load = os.getloadavg()
    lines = [f"{name}: {', '.join(f'{k} {v:.3f}' for k, v in r.items())}"
             for name, r in results.items()]
    lines.append(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
