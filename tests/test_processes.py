"""shardproxy as it runs in production: `shardproxy serve` with a supervisor and worker processes.

Faults are real: SIGKILL of a worker under load, SIGTERM with an RPC in flight,
the supervisor's own death. Traffic goes to 127.0.0.1 only and every loop is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import optuna
import pytest
import sqlalchemy
from optuna.storages import GrpcStorageProxy, RDBStorage
from optuna.trial import TrialState

from tests.proxies import proxy_client
from tests.servers import children_by_name, serve, standby_prepared, wait_until

pytestmark = pytest.mark.slow


def test_occupied_port_is_refused_with_a_clear_message(sqlite_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for workers in ("1", "2"):
            result = subprocess.run(
                [sys.executable, "-m", "shardproxy", "serve", "--storage", sqlite_url,
                 "--host", "127.0.0.1", "--port", str(port), "--workers", workers],
                capture_output=True, text=True, timeout=60,
            )
            assert result.returncode != 0
            assert str(port) in result.stderr and "in use" in result.stderr


def test_killed_worker_is_replaced_and_no_acknowledged_write_is_lost(mariadb_url: str) -> None:
    with serve(mariadb_url, workers=2) as (process, port):
        names = [f"study-{i}" for i in range(8)]
        with proxy_client(port) as setup:
            for name in names:
                optuna.create_study(study_name=name, storage=setup)
        acknowledged: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
        errors: dict[str, list[grpc.StatusCode]] = {name: [] for name in names}
        stop = threading.Event()
        victim_killed = threading.Event()
        after_kill = dict.fromkeys(names, 0)

        def client(name: str) -> None:
            storage: GrpcStorageProxy | None = None
            for _ in range(400):  # bounded; the test stops it much earlier
                if stop.is_set():
                    break
                try:
                    if storage is None:
                        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
                        study = optuna.load_study(study_name=name, storage=storage)
                    trial = study.ask()
                    value = trial.suggest_float("x", 0, 1)
                    study.tell(trial, value)
                    acknowledged[name].append((trial.number, value))
                    if victim_killed.is_set():
                        after_kill[name] += 1
                except grpc.RpcError as exc:
                    # A client whose connection died reconnects, as a worker would.
                    errors[name].append(exc.code())
                    if storage is not None:
                        storage.close()
                    storage = None
                    time.sleep(0.05)
            if storage is not None:
                storage.close()

        threads = [threading.Thread(target=client, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        assert wait_until(lambda: standby_prepared(process.pid), 60), "no standby"
        victim = children_by_name(process.pid)["shardproxy-w1"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        victim_killed.set()
        # A standby (booted, connected) takes over shard 1.
        replacement = wait_until(
            lambda: children_by_name(process.pid).get("shardproxy-w1") not in (None, victim), 30
        )
        restart_seconds = time.monotonic() - killed_at
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

        assert replacement, "the killed worker was not replaced"
        assert restart_seconds < 1.0
        assert children_by_name(process.pid)["shardproxy-w0"] != victim
        # Errors are limited to the requests that were in flight on the killed worker.
        assert all(code == grpc.StatusCode.UNAVAILABLE for codes in errors.values()
                   for code in codes), errors
        # gRPC shares one connection among the channels of a process, so these
        # clients all sit on one worker: each may lose the call in flight when a
        # worker dies, and no more than that.
        assert all(len(codes) <= 2 for codes in errors.values()), errors
        assert all(after_kill.values()), f"a client stopped making progress: {after_kill}"
        # Every acknowledged trial is in the database, finished with its value.
        direct = RDBStorage(mariadb_url)
        for name in names:
            trials = {t.number: t for t in
                      optuna.load_study(study_name=name, storage=direct).get_trials()}
            assert acknowledged[name], f"{name} made no progress"
            for number, value in acknowledged[name]:
                assert trials[number].state == TrialState.COMPLETE
                assert trials[number].value == value
        direct.engine.dispose()


def test_sigterm_lets_an_rpc_in_flight_complete(mariadb_url: str) -> None:
    with serve(mariadb_url, workers=2) as (process, port):
        with proxy_client(port) as client:
            study_id = client.create_new_study([optuna.study.StudyDirection.MINIMIZE], "held")
            # Hold the study row so that creating a trial must wait for it.
            engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
            holder = engine.connect()
            transaction = holder.begin()
            holder.execute(sqlalchemy.text(
                "SELECT * FROM studies WHERE study_id = :s FOR UPDATE"), {"s": study_id})
            result: dict[str, object] = {}

            def create() -> None:
                try:
                    result["trial_id"] = client.create_new_trial(study_id)
                except Exception as exc:  # reported by the assertion below
                    result["error"] = exc

            caller = threading.Thread(target=create)
            caller.start()
            time.sleep(1.0)
            assert caller.is_alive(), "the RPC was not held by the row lock"
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            transaction.rollback()
            holder.close()
            engine.dispose()
            caller.join(timeout=60)
        assert "error" not in result, result
        assert process.wait(timeout=60) == 0
        direct = RDBStorage(mariadb_url)
        assert direct.get_trial(result["trial_id"]).number == 0  # type: ignore[arg-type]
        direct.engine.dispose()


def test_supervisor_death_takes_its_workers(sqlite_url: str) -> None:
    with serve(sqlite_url, workers=2) as (process, port):
        workers = list(children_by_name(process.pid).values())
        process.kill()
        process.wait()
        gone = wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and
                                          "zombie" not in Path(f"/proc/{pid}/status").read_text()
                                          for pid in workers), 10)
        assert gone, "workers outlived their supervisor"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # nobody holds the port any more
