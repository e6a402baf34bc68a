"""Every worker serves gRPC's standard health service, and says what a balancer must know.

Real gRPC health clients (`grpc_health.v1` stubs and `shardproxy check`) against
real workers: in this process for the service itself, a `shardproxy serve`
process for draining on SIGTERM and for a worker whose every request handler is
blocked, and the local MariaDB server stopped and started again for a database
outage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardproxy.health import STUCK_AFTER, Answer, ask_health
from shardproxy.ports import grpc_address
from shardproxy.wire import SERVICE
from tests.faults.dbserver import server_down
from tests.proxies import free_port, proxy_client, running_workers
from tests.servers import children_by_name, serve, server_log

BOUND = 60.0  # every wait here ends; none of them is a speed claim
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(
    port: int, service: str = "", host: str = "127.0.0.1", timeout: float = 10
) -> str:
    """The status name a fresh connection gets, or the gRPC code it failed with."""
    return ask_health(grpc_address(host, port), timeout, service).name


def wait_for_status(port: int, wanted: str, timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(port) == wanted:
            return True
        time.sleep(0.1)
    return health_status(port) == wanted


def test_every_worker_answers_for_itself_and_for_optunas_service(sqlite_url: str) -> None:
    with running_workers(sqlite_url, workers=2) as workers:
        port = workers[0].port
        assert health_status(port, "") == "SERVING"
        assert health_status(port, SERVICE) == "SERVING"
        assert SERVICE == "optuna.StorageService"
        assert health_status(port, "no.such.Service") == "NOT_FOUND"
        # Each worker's own service, whichever worker a connection lands on.
        for worker in workers:
            assert worker.health.servicer.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), None
            ).status == SERVING


def test_an_answer_keeps_a_serving_status_apart_from_a_failed_calls_code(
    sqlite_url: str,
) -> None:
    with running_workers(sqlite_url, workers=1) as (worker,):
        answered = ask_health(f"127.0.0.1:{worker.port}", timeout=10)
        assert (answered.status, answered.code, answered.serving) == (SERVING, None, True)
    nobody = ask_health(f"127.0.0.1:{free_port()}", timeout=10)
    assert (nobody.status, nobody.code, nobody.serving) == (
        None, grpc.StatusCode.UNAVAILABLE, False
    )
    assert nobody.name == "UNAVAILABLE" and nobody.details
    # UNKNOWN names a serving status (the health service's own) and a gRPC code.
    unknown_status = Answer(status=health_pb2.HealthCheckResponse.UNKNOWN)
    unknown_code = Answer(code=grpc.StatusCode.UNKNOWN)
    assert unknown_status.name == unknown_code.name == "UNKNOWN"
    assert (unknown_status.code, unknown_code.code) == (None, grpc.StatusCode.UNKNOWN)


def test_a_draining_worker_says_not_serving_and_keeps_answering_meanwhile(
    sqlite_url: str,
) -> None:
    with running_workers(sqlite_url, workers=1) as (worker,):
        with proxy_client(worker.port) as client:
            worker.health.drain()
            assert health_status(worker.port, "") == "NOT_SERVING"
            assert health_status(worker.port, SERVICE) == "NOT_SERVING"
            # Clients still in flight are served until the port closes.
            assert client.get_all_studies() == []
            # A drained worker stays NOT_SERVING whatever its probe finds.
            time.sleep(worker.config.db_check_interval * 3)
            assert health_status(worker.port) == "NOT_SERVING"


def test_a_watch_hears_the_worker_turn_not_serving(sqlite_url: str) -> None:
    with running_workers(sqlite_url, workers=1) as (worker,), \
            grpc.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=BOUND)
        try:
            assert next(watch).status == SERVING
            worker.health.drain()
            assert next(watch).status == NOT_SERVING
        finally:
            watch.cancel()


def test_check_command_exit_codes(sqlite_url: str) -> None:
    def check(*flags: str) -> tuple[int, str]:
        result = subprocess.run(
            [sys.executable, "-m", "shardproxy", "check", *flags],
            capture_output=True, text=True, timeout=BOUND,
        )
        return result.returncode, result.stdout.strip()

    with running_workers(sqlite_url, workers=1) as (worker,):
        port = str(worker.port)
        assert check("--host", "127.0.0.1", "--port", port) == (
            0, f"127.0.0.1:{port} (overall): SERVING"
        )
        code, line = check("--port", port, "--service", SERVICE)
        assert code == 0 and line.endswith(f"{SERVICE}: SERVING")
        code, line = check("--port", port, "--service", "no.such.Service")
        assert code == 1 and "unknown service" in line
        worker.health.drain()
        code, line = check("--host", "127.0.0.1", "--port", port)
        assert (code, line) == (1, f"127.0.0.1:{port} (overall): NOT_SERVING")
    code, line = check("--host", "127.0.0.1", "--port", port)  # nothing listens now
    assert code == 1 and "unreachable" in line and "\n" not in line
    # A peer that accepts the connection and never speaks HTTP/2.
    with socket_that_never_answers() as silent_port:
        code, line = check("--host", "127.0.0.1", "--port", str(silent_port), "--timeout", "1")
    assert code == 1 and "no answer within 1 s" in line


@contextlib.contextmanager
def socket_that_never_answers() -> Iterator[int]:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes handshakes; nobody reads
        yield listener.getsockname()[1]


def test_sigterm_turns_health_not_serving_before_the_port_closes(sqlite_url: str) -> None:
    """What a load balancer sees while `shardproxy serve` drains."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "shardproxy", "serve", "--storage", sqlite_url, "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1", "--standbys", "0",
         "--drain-delay", "3", "--log-level", "WARNING"],
        stderr=log, text=True,
    )
    try:
        assert wait_for_status(port, "SERVING"), "the worker never served"
        with proxy_client(port) as client:
            process.send_signal(signal.SIGTERM)
            seen: list[str] = []
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:
                status = health_status(port)
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == "NOT_SERVING" and "answered while draining" not in seen:
                    # Still answering Optuna's clients while the balancer is told.
                    client.get_all_studies()
                    seen.append("answered while draining")
                if status == "UNAVAILABLE":
                    break
                time.sleep(0.05)
        assert process.wait(timeout=BOUND) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    # SERVING (the signal may beat the first poll), then NOT_SERVING while the port
    # is still open, then the port closed; never SERVING again.
    assert seen[-1] == "UNAVAILABLE", seen
    assert "NOT_SERVING" in seen, seen
    assert "answered while draining" in seen, seen
    after = seen[seen.index("NOT_SERVING"):]
    assert "SERVING" not in after, seen


def test_a_worker_whose_handlers_are_all_blocked_answers_checks_and_says_not_serving(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks are answered ahead of the clients' calls, by a thread of their own: here
    the calls never begin (every handler thread blocked by the test-only fault hook,
    SIGUSR2), and the checks are still answered, in time, and turn NOT_SERVING; a
    Watch opened then starts with NOT_SERVING."""
    monkeypatch.setenv("SHARDPROXY_TEST_FAULT_HOOKS", "1")
    options = ("--threads", "2", "--watchdog-timeout", "0", "--drain-timeout", "2")
    with serve(sqlite_url, workers=1, options=options) as (process, port):
        assert health_status(port) == "SERVING"
        (worker,) = children_by_name(process.pid).values()
        os.kill(worker, signal.SIGUSR2)
        blocked_at = time.monotonic()
        seen: list[tuple[float, str]] = []
        while time.monotonic() - blocked_at < STUCK_AFTER + 10:
            started = time.monotonic()
            status = health_status(port, timeout=2)
            seen.append((round(started - blocked_at, 1), status))
            if status == "NOT_SERVING":
                break
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # A Watch, as gRPC clients' own health checking opens, starts there too.
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=2)
            watched = health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status)
            watch.cancel()
            with pytest.raises(grpc.RpcError) as call:
                channel.unary_unary(f"/{SERVICE}/GetAllStudies")(b"", timeout=1)
        log = server_log(process)
    assert watched == "NOT_SERVING"
    assert call.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # a client's call waits
    # Every check answered (none DEADLINE_EXCEEDED), SERVING until the stall counts.
    assert {status for _, status in seen} <= {"SERVING", "NOT_SERVING"}, seen
    assert seen[-1][1] == "NOT_SERVING", seen
    assert seen[-1][0] >= STUCK_AFTER - 1, seen
    assert "have begun no call" in log, log


# -- the database goes away and comes back ----------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("start-stop-daemon") is None or
                    shutil.which("mysqladmin") is None, reason="needs MariaDB's tools")
def test_health_follows_the_database_down_and_up_again(mariadb_url: str) -> None:
    with running_workers(mariadb_url, workers=1, db_check_interval=0.2,
                         db_down_after=1.0) as (worker,):
        port = worker.port
        with proxy_client(port) as client:
            assert health_status(port) == "SERVING"
            # Started again and answering when the block ends, whatever happened in it
            # (by its pid file, once the stopped server's process has exited).
            with server_down("mariadb"):
                went_down = wait_for_status(port, "NOT_SERVING")
                assert health_status(port, SERVICE) == "NOT_SERVING"
            came_back = wait_for_status(port, "SERVING")
            assert went_down, "health stayed SERVING with the database down"
            assert came_back, "health did not return to SERVING with the database back"
            assert health_status(port, SERVICE) == "SERVING"
            assert client.get_all_studies() == []  # and it serves again
