"""Connection hygiene: request size limit, IPv6 and wildcard hosts, connection age, a
burst of calls.

Real workers (in this process, sharing a port as worker processes do), real gRPC
clients, unmodified Optuna clients where the behaviour is theirs to see.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import grpc
import optuna
import pytest

from shardproxy.config import Config
from shardproxy.health import check_health
from shardproxy.ports import grpc_address
from shardproxy.wire import SERVICE
from shardproxy.worker import Worker, server_options
from tests.proxies import free_port, proxy_client, running_workers

BOUND = 60.0  # every wait here ends; none of them is a speed claim


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


def call_raw(port: int, method: str, request: bytes) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            channel.unary_unary(f"/{SERVICE}/{method}")(request, timeout=BOUND)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


# -- request size ------------------------------------------------------------------------


def test_an_oversized_request_is_refused_and_the_worker_serves_on(sqlite_url: str) -> None:
    limit = 64 * 1024
    with running_workers(sqlite_url, workers=2, max_request_bytes=limit) as workers:
        port = workers[0].port
        # GetStudyIdFromName with a 100 KiB name: a well-formed request, too large.
        name = b"n" * (100 * 1024)
        request = b"\x0a" + _varint(len(name)) + name
        assert call_raw(port, "GetStudyIdFromName", request) == grpc.StatusCode.RESOURCE_EXHAUSTED
        with proxy_client(port) as client:
            # Requests just under the limit, on studies owned by both workers: those
            # owned by the other worker cross the forwarding channel, whose limit is
            # the same. The replies are larger than the limit: replies are not limited.
            value = "v" * (limit - 1024)
            study_ids = [
                client.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"s{i}")
                for i in range(4)
            ]
            for study_id in study_ids:
                for key in ("a", "b", "c"):
                    client.set_study_user_attr(study_id, key, value)
            for study_id in study_ids:
                assert client.get_study_user_attrs(study_id) == dict.fromkeys("abc", value)
        forwarded = sum(
            count
            for worker in workers
            for key, count in worker.metrics.snapshot().items()
            if key.startswith("forwarded.")
        )
        assert forwarded > 0, "no request crossed the forwarding channel"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_the_request_limit_is_a_flag_with_a_finite_default() -> None:
    from shardproxy.cli import build_parser, byte_size

    assert Config().max_request_bytes == 64 << 20
    assert byte_size("64MiB") == byte_size("64M") == byte_size("64m") == 64 << 20
    assert byte_size("1G") == 1 << 30 and byte_size("1500") == 1500
    args = build_parser().parse_args(["serve", "--max-request-bytes", "2MiB"])
    assert args.max_request_bytes == 2 << 20
    options = dict(server_options(Config(max_request_bytes=2 << 20)))
    assert options["grpc.max_receive_message_length"] == 2 << 20
    assert options["grpc.max_send_message_length"] == -1
    with pytest.raises(ValueError, match="max-request-bytes must be at most"):
        Config(max_request_bytes=1 << 31)


# -- hosts ---------------------------------------------------------------------------------


def test_grpc_addresses_put_ipv6_literals_in_brackets() -> None:
    assert grpc_address("::", 13000) == "[::]:13000"
    assert grpc_address("[::]", 13000) == "[::]:13000"
    assert grpc_address("::1", 1) == "[::1]:1"
    assert grpc_address("0.0.0.0", 13000) == "0.0.0.0:13000"
    assert grpc_address("localhost", 13000) == "localhost:13000"


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_a_worker_serves_on_the_ipv6_loopback(sqlite_url: str, host: str) -> None:
    with running_workers(sqlite_url, host=host, threads=8) as (worker,):
        assert check_health("::1", worker.port, timeout=10) == (
            True, f"[::1]:{worker.port} (overall): SERVING"
        )
        serving, line = check_health("127.0.0.1", worker.port, timeout=2)
        assert not serving  # only the IPv6 loopback was asked for


@needs_ipv6
@pytest.mark.parametrize("host", ["::", "[::]", "0.0.0.0"])
def test_workers_serve_on_every_address_of_a_wildcard(sqlite_url: str, host: str) -> None:
    with running_workers(sqlite_url, 2, host=host, threads=8) as workers:
        port = workers[0].port
        assert check_health("127.0.0.1", port, timeout=10)[0]
        if host != "0.0.0.0":  # the IPv6 wildcard takes IPv4 too (dual stack)
            assert check_health("::1", port, timeout=10)[0]
        with proxy_client(port) as client:
            assert client.get_all_studies() == []


@needs_ipv6
def test_shardproxy_serve_on_the_ipv6_wildcard(sqlite_url: str) -> None:
    """`serve --host ::` once failed in every worker ("address lookup failed for :::P")."""
    port = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "shardproxy", "serve", "--storage", sqlite_url, "--host", "::",
         "--port", port, "--workers", "2", "--standbys", "0", "--drain-delay", "0"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        with proxy_client(int(port)) as client:  # 127.0.0.1, through the dual stack
            assert client.get_all_studies() == []
        for host in ("::1", "::", "127.0.0.1"):
            result = subprocess.run(
                [sys.executable, "-m", "shardproxy", "check", "--host", host, "--port", port],
                capture_output=True, text=True, timeout=BOUND,
            )
            assert result.returncode == 0, result.stdout
            assert result.stdout.strip().endswith("(overall): SERVING")
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=BOUND)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors and "address lookup failed" not in errors


# -- keepalive and connection age ---------------------------------------------------------


def test_server_options_carry_the_connection_policy() -> None:
    options = dict(server_options(Config(keepalive_time=30, keepalive_timeout=5,
                                         min_ping_interval=2, max_connection_age=120,
                                         max_connection_age_grace=9)))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 2_000
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 9_000
    unlimited = dict(server_options(Config(max_connection_age=0, keepalive_time=0)))
    assert "grpc.max_connection_age_ms" not in unlimited
    assert unlimited["grpc.keepalive_time_ms"] == (1 << 31) - 1


def test_a_client_that_pings_often_keeps_its_connection(sqlite_url: str) -> None:
    """Client keepalive pings down to --min-ping-interval are no offence.

    gRPC's own server default (one ping per five minutes) would answer a client
    pinging every 100 ms with GOAWAY "too_many_pings" after a few pings, and the
    next call would meet a closed connection.
    """
    with running_workers(sqlite_url, min_ping_interval=0.05) as (worker,):
        options = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.http2.max_pings_without_data", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{worker.port}", options=options) as channel:
            call = channel.unary_unary(f"/{SERVICE}/GetAllStudies")
            call(b"", timeout=BOUND)
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append, try_to_connect=False)
            time.sleep(2.0)  # some twenty pings, no data
            call(b"", timeout=BOUND)
            channel.unsubscribe(states.append)
        # The connection stayed READY throughout: no GOAWAY, no reconnect.
        assert states == [grpc.ChannelConnectivity.READY], states


def test_aged_connections_spread_over_workers_that_joined_later(sqlite_url: str) -> None:
    """After a worker (re)starts, a long-lived client reaches it within a connection age.

    The unmodified Optuna client is asked to reconnect (GOAWAY) once its connection
    is older than --max-connection-age, and no call fails for it.
    """
    config = Config(storage_url=sqlite_url, host="127.0.0.1", port=free_port(), workers=2,
                    threads=8, drain_delay=0.0, max_connection_age=0.3,
                    max_connection_age_grace=5.0)
    first = Worker(config.replace(workers=1))
    first.start()
    second: Worker | None = None
    try:
        with proxy_client(first.port) as client:
            client.get_all_studies()
            # A worker joins the port, as a restarted one does; the client's
            # connection still ends on the first.
            second = Worker(config.replace(workers=1))
            second.start()
            errors = []
            deadline = time.monotonic() + BOUND
            while second.front_requests() == 0 and time.monotonic() < deadline:
                try:
                    client.get_all_studies()
                except grpc.RpcError as exc:
                    errors.append(exc.code())  # type: ignore[attr-defined]
                time.sleep(0.02)
            for _ in range(50):  # and on, across more connection ages
                try:
                    client.get_all_studies()
                except grpc.RpcError as exc:
                    errors.append(exc.code())  # type: ignore[attr-defined]
                time.sleep(0.02)
        assert second.front_requests() > 0, "the client never reached the new worker"
        assert errors == []
    finally:
        first.stop(grace=5.0)
        if second is not None:
            second.stop(grace=5.0)


# -- a burst of calls ------------------------------------------------------------------------

BURST_CLIENT = """
import asyncio, collections, json, sys
import grpc

async def main(target, method, calls):
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        await call(b"")
        print("connected", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        replies = await asyncio.gather(*(call(b"") for _ in range(calls)),
                                       return_exceptions=True)
    codes = collections.Counter(
        "OK" if isinstance(reply, bytes) else reply.code().name for reply in replies)
    print(json.dumps(codes), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_a_burst_of_calls_the_worker_cannot_take_yet_waits_rather_than_fails(
    sqlite_url: str,
) -> None:
    """Calls a worker has not taken yet queue in gRPC; past gRPC's default of 1 000
    such calls in one process, it would drop some at random with CANCELLED.

    The test holds the interpreter's lock while a client sends 2 000 calls at once,
    so that the worker's serving thread takes none of them until all have arrived,
    as a worker busy with the calls before them would.
    """
    with running_workers(sqlite_url) as (worker,), subprocess.Popen(
        [sys.executable, "-c", BURST_CLIENT, f"127.0.0.1:{worker.port}",
         f"/{SERVICE}/GetAllStudies", "2000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as client:
        try:
            assert client.stdin is not None and client.stdout is not None
            assert client.stdout.readline().strip() == "connected"
            switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(BOUND)  # no other thread of this process runs...
            try:
                client.stdin.write("go\n")
                client.stdin.flush()
                held_until = time.monotonic() + 3.0
                while time.monotonic() < held_until:  # ...while this loop holds the lock
                    pass
            finally:
                sys.setswitchinterval(switch_interval)
            codes = json.loads(client.stdout.readline())
        finally:
            client.kill()
    assert codes == {"OK": 2000}
