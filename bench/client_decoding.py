"""A first full read of a large study: Optuna's client against shardproxy.client.

    python -m bench.client_decoding [--trials 100000] [--rounds 3] [--db mariadb]

One study of `--trials` COMPLETE trials (two float params, one value) is bulk
loaded, `shardproxy serve --workers 2` serves it, and its proxy cache is warmed by
one read. Then, alternating, a fresh process with Optuna's `GrpcStorageProxy` and
one with `shardproxy.client.GrpcStorageProxy` each read every trial once
(`get_all_trials(deepcopy=False)`, what a sampler's first call costs), `--rounds`
times; the wall time and the client process's CPU time of that read are printed,
and the trials each client built are checked equal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import warnings
from multiprocessing.connection import Connection

import optuna

from bench.databases import backend_name, create_studies, fresh_database, prefill


def read_once(kind: str, port: int, study_id: int, report: Connection) -> None:
    warnings.simplefilter("ignore")
    if kind == "optuna":
        storage = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
    else:
        from shardproxy.client import GrpcStorageProxy

        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    storage.wait_server_ready(60)
    storage.get_study_name_from_id(study_id)  # the connection is up
    wall, cpu = time.perf_counter(), time.process_time()
    trials = storage.get_all_trials(study_id, deepcopy=False)
    report.send((time.perf_counter() - wall, time.process_time() - cpu, len(trials)))
    storage.close()


def same_trials(port: int, study_id: int, report: Connection) -> None:
    warnings.simplefilter("ignore")
    from shardproxy.client import GrpcStorageProxy

    theirs = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
    ours = GrpcStorageProxy(host="127.0.0.1", port=port)
    report.send(theirs.get_all_trials(study_id) == ours.get_all_trials(study_id))


def in_process(target: object, *args: object) -> object:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, sender))
    process.start()
    result = receiver.recv()
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default="mariadb")
    args = parser.parse_args()
    with fresh_database(backend_name(args.db)) as db:
        (study_id,) = create_studies(db.url, ["big"])
        prefill(db.url, study_id, args.trials, ["x", "y"])
        port = 13600 + os.getpid() % 100
        server = subprocess.Popen([sys.executable, "-m", "shardproxy", "serve", "--storage",
                                   db.url, "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "2", "--log-level", "WARNING"])
        try:
            in_process(read_once, "optuna", port, study_id)  # warms the proxy's cache
            results: dict[str, list[tuple[float, float, int]]] = {"optuna": [], "shardproxy": []}
            for _ in range(args.rounds):
                for kind in results:
                    results[kind].append(in_process(read_once, kind, port, study_id))  # type: ignore[arg-type]
            equal = in_process(same_trials, port, study_id)
        finally:
            server.terminate()
            server.wait(60)
    for kind, runs in results.items():
        walls = [w for w, _, _ in runs]
        cpus = [c for _, c, _ in runs]
        print(f"{kind:10} trials {runs[0][2]}  wall s {statistics.median(walls):.2f} "
              f"({', '.join(f'{w:.2f}' for w in walls)})  client CPU s "
              f"{statistics.median(cpus):.2f} ({', '.join(f'{c:.2f}' for c in cpus)})")
    ratio = (statistics.median(c for _, c, _ in results["optuna"])
             / statistics.median(c for _, c, _ in results["shardproxy"]))
    print(f"client CPU, Optuna's / shardproxy.client's: x{ratio:.2f}; same trials: {equal}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
