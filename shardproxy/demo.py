"""`shardproxy demo`: a proxy on an embedded database, Optuna workers through it.

It shows the whole path a user takes: start `shardproxy serve`, point unmodified
Optuna workers (`GrpcStorageProxy`) at it, watch the trials land, read the result.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import subprocess
import sys
import time
import warnings

STUDY_NAME = "shardproxy-demo"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def _objective(trial: object) -> float:
    x = trial.suggest_float("x", -10.0, 10.0)  # type: ignore[attr-defined]
    y = trial.suggest_float("y", -10.0, 10.0)  # type: ignore[attr-defined]
    return float((x - 2.0) ** 2 + (y + 1.0) ** 2)


def _client(port: int, trials: int) -> None:
    import optuna
    from optuna.storages import GrpcStorageProxy

    _quiet_optuna()
    storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    study = optuna.load_study(
        study_name=STUDY_NAME, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    study.optimize(_objective, n_trials=trials)
    storage.close()


def run_demo(storage_url: str, *, clients: int, trials: int, workers: int) -> int:
    import optuna
    from optuna.storages import GrpcStorageProxy

    _quiet_optuna()
    port = _free_port()
    command = [sys.executable, "-m", "shardproxy", "serve", "--storage", storage_url,
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
               "--log-level", "WARNING"]
    print(f"starting shardproxy on 127.0.0.1:{port} with {workers} worker(s), "
          f"database {storage_url}")
    proxy = subprocess.Popen(command)
    try:
        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
        storage.wait_server_ready(timeout=60)
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage,
                                    load_if_exists=True)
        already = len(study.trials)
        per_client = [trials // clients + (i < trials % clients) for i in range(clients)]
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_client, args=(port, n)) for n in per_client if n]
        print(f"running {trials} trials in {len(processes)} Optuna worker processes")
        started = time.perf_counter()
        for process in processes:
            process.start()
        while any(process.is_alive() for process in processes):
            time.sleep(0.5)
            done = len(study.get_trials(deepcopy=False)) - already
            elapsed = time.perf_counter() - started
            print(f"\r  {done:5d}/{trials} trials  {done / elapsed:7.1f} trials/s",
                  end="", flush=True)
        elapsed = time.perf_counter() - started
        failed = [p for p in processes if p.exitcode != 0]
        done = len(study.get_trials(deepcopy=False)) - already
        print(f"\r  {done:5d}/{trials} trials  {done / elapsed:7.1f} trials/s")
        best = study.best_trial
        print(f"best trial #{best.number}: value {best.value:.6f}, params {best.params}")
        storage.close()
        if failed:
            print(f"{len(failed)} worker process(es) failed", file=sys.stderr)
            return 1
        return 0
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proxy.kill()
