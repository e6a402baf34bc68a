"""The supervisor with real worker processes running small line-protocol servers.

The worker targets are module-level functions here, so spawned children can import
them. Most tests run `Supervisor.run()` in a thread and inject signals with
`enqueue_signal`; the ones about real signals and the supervisor's own death run it
in a subprocess.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardproxy.child import EXIT_BOOT_FAILURE, STANDBY_PROCESS_NAME, WorkerSpec
from shardproxy.ports import PortInUseError, ensure_port_free
from shardproxy.supervisor import Supervisor
from tests.procfs import child_names, process_gone
from tests.servers import http_get

ROOT = Path(__file__).resolve().parent.parent
BOUND = 60.0  # every wait in these tests ends; none of them is a speed claim

# -- worker targets (run in the spawned children) ------------------------------------


def line_server(spec: WorkerSpec) -> None:
    """Serves the shared port until told to stop, then finishes what is in flight.

    Lines: `whoami` → "<shard> <pid> <socket path> <peer count> <prepared>"; `work S`
    → "started", S seconds later "done"; `database up|down` → what the worker reports
    of its database; `count N` → N added to a counter in the supervisor's metrics.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((spec.host, spec.port))
    listener.listen()
    spec.notify_ready()
    in_flight: list[threading.Thread] = []
    while not spec.stop_requested:
        readable, _, _ = select.select([listener], [], [], 0.05)
        if readable:
            conn, _ = listener.accept()
            thread = threading.Thread(target=_answer_lines, args=(spec, conn))
            thread.start()
            in_flight.append(thread)
        spec.heartbeat()
    listener.close()
    for thread in in_flight:
        thread.join(BOUND)


def _answer_lines(spec: WorkerSpec, conn: socket.socket) -> None:
    with conn, conn.makefile("rw") as stream:
        for line in stream:
            command, *args = line.split()
            if command == "whoami":
                paths = spec.peer_socket_paths
                stream.write(
                    f"{spec.shard_index} {os.getpid()} {spec.socket_path} {len(paths)} "
                    f"{spec.prepared}\n"
                )
            elif command == "work":
                stream.write("started\n")
                stream.flush()
                time.sleep(float(args[0]))
                stream.write("done\n")
            elif command == "database":
                spec.report_database(args[0] == "up")
                stream.write(f"{spec.shard_index}\n")
            elif command == "count":
                counter, histogram = _instruments(spec)
                counter.inc(float(args[0]))
                histogram.observe(float(args[0]))
                stream.write(f"{os.getpid()}\n")
            stream.flush()


_instruments_made: list[Any] = []


def _instruments(spec: WorkerSpec) -> Any:
    """A counter and a histogram of this worker process, in the supervisor's metrics."""
    if not _instruments_made:
        from prometheus_client import Counter, Histogram, values

        # prometheus_client's own instruments, in its multiprocess mode: the directory
        # is the supervisor's.
        assert spec.metrics_dir is not None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = spec.metrics_dir
        values.ValueClass = values.MultiProcessValue()
        _instruments_made.append(Counter("test_counted", "what was counted", registry=None))
        _instruments_made.append(
            Histogram("test_seen", "what was seen", buckets=(4, 16), registry=None)
        )
    return _instruments_made


def note_pid_and_time(directory: Path) -> str:
    """A `prepare`: which process ran it, and when (CLOCK_MONOTONIC is machine-wide).

    Also leaves a file named after the pid in `directory`, for the test to see it done.
    """
    note = f"{os.getpid()}@{time.monotonic()}"
    (directory / str(os.getpid())).write_text(note)
    return note


def fails_to_prepare() -> None:
    raise RuntimeError("cannot reach the database")


def prepare_unless(marker: Path, fail: bool) -> str:
    """Prepares at once, unless `marker` exists: then fails, or takes a while."""
    if marker.exists():
        if fail:
            raise RuntimeError("the new version cannot start")
        time.sleep(2.0)
    return "prepared"


def fails_to_boot(spec: WorkerSpec) -> None:
    raise RuntimeError("cannot reach the database")


def ignores_stop(spec: WorkerSpec) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spec.notify_ready()
    time.sleep(BOUND * 2)


def shard_zero_stalls(spec: WorkerSpec) -> None:
    """Shard 0 hangs after it is ready (no heartbeat); the others stay healthy."""
    spec.notify_ready()
    if spec.shard_index == 0:
        spec.wait_for_stop()
        return
    assert spec.heartbeat_interval is not None
    while not spec.wait_for_stop(spec.heartbeat_interval):
        spec.heartbeat()


# -- helpers -----------------------------------------------------------------------


def ask(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as conn:
        conn.sendall(line.encode() + b"\n")
        with conn.makefile() as stream:
            return stream.readline().strip()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def admin_answers(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:  # not listening yet
        return False


def scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The admin endpoint's /metrics: (sample name, sorted labels) -> value."""
    status, text = http_get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        # Even a listener that allows port sharing must be refused.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


class Running:
    """A supervisor run in a thread."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.exit_codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.exit_codes.append(supervisor.run()))

    def wait_ready(self) -> dict[int, int]:
        assert self.supervisor.wait_ready(BOUND), "workers did not become ready"
        return self.supervisor.worker_pids()

    def exit_code(self) -> int:
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), "supervisor did not return"
        return self.exit_codes[0]


@pytest.fixture
def supervise() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(target: Callable[[WorkerSpec], None], **options: object) -> Running:
        settings: dict[str, object] = {
            "workers": 2,
            "host": "127.0.0.1",
            "port": 0,
            "drain_timeout": 10.0,
        }
        settings.update(options)
        running = Running(Supervisor(target, **settings))  # type: ignore[arg-type]
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:  # a failed test must not leave workers behind
        if running.thread.is_alive():
            running.supervisor.enqueue_signal(signal.SIGINT)
            running.supervisor.enqueue_signal(signal.SIGINT)
            running.thread.join(BOUND)


# -- the port ----------------------------------------------------------------------


def test_ensure_port_free_gives_a_concrete_port_for_zero() -> None:
    port = ensure_port_free("127.0.0.1", 0)
    assert port > 0
    assert ensure_port_free("127.0.0.1", port) == port


def test_ensure_port_free_refuses_a_port_in_use_naming_it() -> None:
    with busy_port() as port:
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is already in use"):
            ensure_port_free("127.0.0.1", port)


def test_supervisor_refuses_an_occupied_port(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    with busy_port() as port:
        running = supervise(line_server, port=port)
        assert running.exit_code() == 1
        assert running.supervisor.worker_pids() == {}
        assert f"127.0.0.1:{port} is already in use" in caplog.text


# -- running ---------------------------------------------------------------------


def test_all_workers_serve_the_shared_port(supervise: Callable[..., Running]) -> None:
    running = supervise(line_server, workers=3)
    pids = running.wait_ready()
    assert sorted(pids) == [0, 1, 2]
    port = running.supervisor.port
    answers: dict[int, list[str]] = {}
    for _ in range(300):  # the kernel spreads connections over the workers
        shard, pid, path, peers, _ = ask(port, "whoami").split()
        answers[int(shard)] = [pid, path, peers]
        if len(answers) == 3:
            break
    assert {shard: int(pid) for shard, (pid, _, _) in answers.items()} == pids
    paths = [Path(path) for _, path, _ in answers.values()]
    assert len(set(paths)) == 3 and len({path.parent for path in paths}) == 1
    assert {peers for _, _, peers in answers.values()} == {"3"}
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0
    assert not paths[0].parent.exists()  # the private socket directory is removed


@pytest.mark.parametrize("standbys", [1, 0])
def test_killed_worker_comes_back_with_its_shard_and_the_others_are_untouched(
    supervise: Callable[..., Running], standbys: int
) -> None:
    running = supervise(line_server, workers=3, standbys=standbys)
    before = running.wait_ready()
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: running.supervisor.worker_pids().get(1) not in (None, before[1]), "respawn")
    after = running.supervisor.worker_pids()
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1]
    port = running.supervisor.port
    wait_until(
        lambda: ask(port, "whoami").split()[:2] == ["1", str(after[1])], "the new shard 1 answers"
    )
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


# -- standbys -----------------------------------------------------------------------


def wait_for_standby(running: Running, other_than: int = 0) -> int:
    wait_until(
        lambda: [p for p in running.supervisor.standby_pids() if p != other_than], "a standby"
    )
    return running.supervisor.standby_pids()[0]


def test_a_standby_prepared_ahead_takes_the_place_of_a_killed_worker(
    supervise: Callable[..., Running], tmp_path: Path
) -> None:
    running = supervise(line_server, prepare=functools.partial(note_pid_and_time, tmp_path))
    before = running.wait_ready()
    standby = wait_for_standby(running)
    assert standby not in before.values()
    wait_until((tmp_path / str(standby)).exists, "the standby prepared")
    killed_at = time.monotonic()
    os.kill(before[1], signal.SIGKILL)
    wait_until(lambda: running.supervisor.worker_pids().get(1) == standby, "standby takes over")
    assert running.supervisor.worker_pids()[0] == before[0]
    port = running.supervisor.port
    answers: list[list[str]] = []
    wait_until(lambda: answers.append(ask(port, "whoami").split()) or answers[-1][0] == "1",
               "shard 1 answers")
    shard, pid, path, peers, prepared = answers[-1]
    # The standby had prepared in its own process before the worker it replaces died,
    # and the worker got the shard's own socket path and peer count.
    prepared_pid, prepared_at = prepared.split("@")
    assert int(pid) == int(prepared_pid) == standby
    assert float(prepared_at) < killed_at
    assert path.endswith("shard-1.sock") and peers == "2"
    # A new standby waits behind it.
    assert wait_for_standby(running, other_than=standby) not in (standby, before[0])
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_standbys_start_after_the_workers_and_stop_with_them(
    supervise: Callable[..., Running],
) -> None:
    running = supervise(line_server, standbys=2)
    workers = running.wait_ready()
    wait_until(lambda: len(running.supervisor.standby_pids()) == 2, "two standbys")
    standbys = running.supervisor.standby_pids()
    assert not set(standbys) & set(workers.values())
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0
    assert all(process_gone(pid) for pid in [*standbys, *workers.values()])


def test_a_standby_that_dies_unused_is_replaced_after_a_pause(
    supervise: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shardproxy.standbys.RETRY_PAUSE", 0.5)
    running = supervise(line_server)
    workers = running.wait_ready()
    standby = wait_for_standby(running)
    os.kill(standby, signal.SIGKILL)
    assert wait_for_standby(running, other_than=standby) != standby
    assert "before it was needed" in caplog.text
    assert running.supervisor.worker_pids() == workers  # the workers never noticed
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_a_failing_prepare_is_a_boot_failure(
    supervise: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    running = supervise(line_server, prepare=fails_to_prepare)
    assert running.exit_code() == EXIT_BOOT_FAILURE
    assert "failed to start" in caplog.text
    assert "cannot reach the database" in capfd.readouterr().err  # the worker's own log


def prepare_without_a_database() -> object:
    """The real worker's prepare, against a database server that is not there."""
    from shardproxy.config import Config
    from shardproxy.worker import prepare

    url = f"mysql+pymysql://root:secret@127.0.0.1:{ensure_port_free('127.0.0.1', 0)}/test"
    return prepare(Config(storage_url=url, retry_deadline=0.5))


def test_a_database_gone_at_boot_is_one_line_per_worker_without_a_traceback(
    supervise: Callable[..., Running],
    capfd: pytest.CaptureFixture[str],
) -> None:
    running = supervise(line_server, prepare=prepare_without_a_database)
    assert running.exit_code() == EXIT_BOOT_FAILURE
    logged = capfd.readouterr().err
    assert "failed to start: cannot reach the database server of mysql+pymysql://root:***@" in (
        logged
    )
    assert "Traceback" not in logged
    assert "secret" not in logged


def test_sigterm_lets_a_request_in_flight_finish_then_exits_zero(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    running = supervise(line_server)
    pids = running.wait_ready()
    with socket.create_connection(("127.0.0.1", running.supervisor.port), timeout=BOUND) as conn:
        conn.sendall(b"work 1.0\n")
        with conn.makefile() as reply:
            assert reply.readline() == "started\n"
            running.supervisor.enqueue_signal(signal.SIGTERM)
            assert reply.readline() == "done\n"
    assert running.exit_code() == 0
    assert all(process_gone(pid) for pid in pids.values())
    assert "still draining" not in caplog.text  # they finished, nobody was killed


def test_worker_that_does_not_drain_is_killed_at_the_drain_timeout(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    running = supervise(ignores_stop, drain_timeout=0.5)
    pids = running.wait_ready()
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0
    assert "killing 2 workers still draining" in caplog.text
    assert all(process_gone(pid) for pid in pids.values())


def test_second_sigint_kills_without_waiting_for_the_drain(
    supervise: Callable[..., Running],
) -> None:
    running = supervise(ignores_stop, drain_timeout=BOUND * 10)
    pids = running.wait_ready()
    running.supervisor.enqueue_signal(signal.SIGINT)
    running.supervisor.enqueue_signal(signal.SIGINT)
    assert running.exit_code() == 0  # long before the ten-minute drain
    assert all(process_gone(pid) for pid in pids.values())


def test_boot_failure_stops_everything_instead_of_restarting(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardproxy.supervisor")
    running = supervise(fails_to_boot)
    assert running.exit_code() == EXIT_BOOT_FAILURE
    assert not running.supervisor.ready.is_set()
    assert "failed to start" in caplog.text
    assert "restarting" not in caplog.text


def test_worker_with_a_stale_heartbeat_is_killed_and_restarted(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    running = supervise(shard_zero_stalls, heartbeat_timeout=1.0)
    before = running.wait_ready()
    wait_until(lambda: running.supervisor.worker_pids().get(0) not in (None, before[0]), "restart")
    assert running.supervisor.worker_pids()[1] == before[1]
    assert "answered no watchdog beat" in caplog.text
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_ready_callback_runs_once_all_workers_are_ready(
    supervise: Callable[..., Running],
) -> None:
    seen: list[dict[int, int]] = []
    running: Running | None = None

    def on_ready() -> None:
        assert running is not None
        seen.append(running.supervisor.worker_pids())

    running = supervise(line_server, ready_callback=on_ready)
    pids = running.wait_ready()
    assert seen == [pids]
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0



# -- rolling restart (SIGHUP) ------------------------------------------------------------


def replacement_order(caplog: pytest.LogCaptureFixture) -> list[str]:
    """`started N` / `replaced N` in the supervisor's log, in order."""
    events = []
    for record in caplog.records:
        words = record.getMessage().split()
        if record.name == "shardproxy.supervisor" and words[0] == "worker":
            if words[2] in ("started", "replaced"):
                events.append(f"{words[2]} {words[1]}")
    return events


def test_sighup_replaces_every_worker_one_at_a_time_and_the_standby_too(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardproxy.supervisor")
    running = supervise(line_server, workers=3)
    before = running.wait_ready()
    standby = wait_for_standby(running)
    caplog.clear()
    running.supervisor.enqueue_signal(signal.SIGHUP)
    wait_until(lambda: not running.supervisor.reloading and "reload done" in caplog.text,
               "the reload ends")
    after = running.supervisor.worker_pids()
    assert sorted(after) == [0, 1, 2]
    assert not set(after.values()) & {*before.values(), standby}
    # Replaced in turn: each new worker took over before the next one started.
    assert replacement_order(caplog) == [
        "started 0", "replaced 0", "started 1", "replaced 1", "started 2", "replaced 2"
    ]
    assert running.supervisor.restarts == {"reload": 3}
    wait_until(lambda: all(process_gone(pid) for pid in [*before.values(), standby]),
               "the old workers and the old standby exit")
    assert wait_for_standby(running) not in (standby, *after.values())
    port = running.supervisor.port
    wait_until(lambda: int(ask(port, "whoami").split()[1]) in after.values(), "new ones serve")
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_the_old_worker_serves_until_its_replacement_is_ready(
    supervise: Callable[..., Running], tmp_path: Path
) -> None:
    marker = tmp_path / "slow"
    running = supervise(line_server, workers=1, standbys=0,
                        prepare=functools.partial(prepare_unless, marker, False))
    (old,) = running.wait_ready().values()
    port = running.supervisor.port
    marker.touch()  # the replacement takes two seconds to prepare
    running.supervisor.enqueue_signal(signal.SIGHUP)
    wait_until(lambda: running.supervisor.worker_pids()[0] != old, "a replacement starts")
    # Meanwhile the shard is served, by the old process, and the instance is ready.
    assert ask(port, "whoami").split()[1] == str(old)
    assert running.supervisor.readiness() == []
    assert not process_gone(old)
    wait_until(lambda: not running.supervisor.reloading, "the replacement takes over")
    wait_until(lambda: process_gone(old), "the old worker drains and exits")
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_a_replacement_that_cannot_start_ends_the_reload_and_the_old_workers_stay(
    supervise: Callable[..., Running], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "broken"
    running = supervise(line_server, prepare=functools.partial(prepare_unless, marker, True))
    before = running.wait_ready()
    marker.touch()  # the version on disk is broken from now on
    running.supervisor.enqueue_signal(signal.SIGHUP)
    wait_until(lambda: "reload stopped" in caplog.text, "the reload gives up")
    assert running.supervisor.worker_pids() == before
    assert not running.supervisor.reloading
    assert running.thread.is_alive()  # no boot failure: the instance goes on serving
    assert int(ask(running.supervisor.port, "whoami").split()[1]) in before.values()
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


# -- admin endpoint --------------------------------------------------------------------


def test_admin_endpoint_health_readiness_and_a_database_that_does_not_answer(
    supervise: Callable[..., Running],
) -> None:
    admin = free_port()
    running = supervise(line_server, admin_port=admin)
    wait_until(lambda: admin_answers(admin), "the endpoint")
    assert http_get(admin, "/healthz") == (200, "ok\n")
    running.wait_ready()
    assert http_get(admin, "/readyz") == (200, "ready\n")
    shard = ask(running.supervisor.port, "database down")
    status, body = http_get(admin, "/readyz")
    assert status == 503
    assert body == f"worker {shard}: its database does not answer\n"
    assert scraped(admin)[("shardproxy_shard_ready", (("shard", shard),))] == 0.0
    # Each connection reaches some worker: until the one that was down says up.
    wait_until(lambda: ask(running.supervisor.port, "database up") == shard, "that worker")
    assert http_get(admin, "/readyz") == (200, "ready\n")
    assert http_get(admin, "/nothing")[0] == 404
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0
    with pytest.raises(OSError):  # the endpoint closed with the supervisor
        http_get(admin, "/healthz")


def test_metrics_add_up_over_workers_and_outlive_a_dead_one(
    supervise: Callable[..., Running],
) -> None:
    admin = free_port()
    running = supervise(line_server, workers=2, admin_port=admin)
    pids = running.wait_ready()
    wait_until(lambda: admin_answers(admin), "the endpoint")
    port = running.supervisor.port
    counted: dict[int, float] = {}
    for amount in (1, 2, 4, 8, 16, 32):  # whichever worker each connection reaches
        pid = int(ask(port, f"count {amount}"))
        counted[pid] = counted.get(pid, 0) + amount
    total = ("test_counted_total", ())
    seen = {
        "count": ("test_seen_count", ()), "sum": ("test_seen_sum", ()),
        "4": ("test_seen_bucket", (("le", "4.0"),)), "16": ("test_seen_bucket", (("le", "16.0"),)),
    }  # fmt: skip
    before = scraped(admin)
    assert before[total] == 63
    assert [before[seen[k]] for k in ("count", "sum", "4", "16")] == [6, 63, 3, 5]
    victim = next(iter(counted))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in running.supervisor.worker_pids().values(), "a restart")
    wait_until(lambda: not (Path(running.supervisor._socket_dir) / "metrics" /
                            f"counter_{victim}.db").exists(), "the dead worker's file folded")
    metrics = scraped(admin)
    assert metrics[total] == 63  # a counter never goes back
    assert {name: metrics[key] for name, key in seen.items()} == {
        name: before[key] for name, key in seen.items()
    }
    assert metrics[("shardproxy_worker_restarts_total", (("cause", "crash"),))] == 1
    assert metrics[("shardproxy_worker_restarts_total", (("cause", "watchdog"),))] == 0
    assert {pid for pid in counted} <= {victim, *pids.values()}
    running.supervisor.enqueue_signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_readiness_says_stopping_once_told_to_stop(supervise: Callable[..., Running]) -> None:
    running = supervise(ignores_stop, drain_timeout=1.0)
    running.wait_ready()
    assert running.supervisor.readiness() == []
    running.supervisor.enqueue_signal(signal.SIGTERM)
    wait_until(lambda: running.supervisor.readiness() == ["stopping"], "stopping")
    assert running.exit_code() == 0


def test_an_admin_port_in_use_is_refused_before_any_worker_starts(
    supervise: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    with busy_port() as admin:
        running = supervise(line_server, admin_port=admin)
        assert running.exit_code() == 1
    assert running.supervisor.worker_pids() == {}
    assert "cannot serve the admin endpoint" in caplog.text


# -- real signals, in a subprocess ------------------------------------------------------

SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from shardproxy.supervisor import Supervisor
    from tests.test_supervisor import line_server

    logging.basicConfig(level=logging.INFO)

    def announce():
        pids = sorted(supervisor.worker_pids().values())
        print("READY", supervisor.port, *pids, flush=True)

    supervisor = Supervisor(line_server, workers=2, host="127.0.0.1", port=0,
                            drain_timeout=10, ready_callback=announce)
    sys.exit(supervisor.run())
    """
)


@contextlib.contextmanager
def supervisor_process() -> Iterator[tuple[subprocess.Popen[str], int, list[int]]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_SCRIPT],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], BOUND)
        assert readable, "supervisor did not report ready"
        _, port, *pids = process.stdout.readline().split()
        yield process, int(port), [int(pid) for pid in pids]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=BOUND)


def test_real_sigterm_drains_and_exits_zero() -> None:
    with supervisor_process() as (process, port, pids):
        assert ask(port, "whoami").split()[1] in {str(pid) for pid in pids}
        process.send_signal(signal.SIGTERM)
        assert process.wait(BOUND) == 0
        assert all(process_gone(pid) for pid in pids)


def test_killing_the_supervisor_takes_its_workers_down() -> None:
    with supervisor_process() as (process, port, pids):
        assert len(pids) == 2
        wait_until(lambda: STANDBY_PROCESS_NAME in child_names(process.pid).values(), "a standby")
        pids = list(child_names(process.pid))  # the standby must go too
        process.kill()
        process.wait(BOUND)
        wait_until(lambda: all(process_gone(pid) for pid in pids), "orphaned workers exit")
    assert ensure_port_free("127.0.0.1", port) == port


def test_the_supervisor_side_imports_neither_grpc_nor_a_database_library() -> None:
    # gRPC must not be initialised in a process before it forks; the supervisor side
    # reaches the workers' code only through `Entry`s the workers import.
    code = (
        "import sys, shardproxy.server, shardproxy.supervisor, shardproxy.admin; "
        "print(sorted(m for m in ('grpc', 'sqlalchemy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=BOUND
    )
    assert result.stdout.strip() == "[]", result.stderr
