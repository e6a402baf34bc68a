"""Forwarding channel against a second gRPC call: the cost a front pays to reach an owner.

Run:
    pytest bench/test_bench_forwarding.py --benchmark-only \
        --benchmark-json bench/results/forwarding.json

Each case makes round trips of a 100-byte request answered by a canned 2 kB reply,
from one client thread and from four, to a server in its own spawned process (as a
peer worker is): `routing.ForwardServer` over a Unix socket, and the reference, a
gRPC server on the generic-handler stack the workers use, over TCP on 127.0.0.1.
Wall time per call comes from pytest-benchmark (mean of a round ÷ calls per round);
CPU per call (both ends: this process plus the server process, each read with
`time.process_time`) is put in `extra_info`. The test of one client thread prints
the forwarding / gRPC ratio once both ran.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import grpc
import pytest

from shardproxy.forwarding import ForwardClient, ForwardServer

REQUEST = bytes(range(100))
REPLY = b"r" * 2048
CALLS_PER_THREAD = 200
ROUNDS = 15
METHOD = "/bench.Echo/Call"
CPU_PER_CALL: dict[str, float] = {}


# -- servers, each in its own process --------------------------------------------------


def answer(method_index: int, request: bytes) -> tuple[int, bytes]:
    return 0, REPLY


def serve_forwarding(path: str, control: Connection) -> None:
    server = ForwardServer(path, answer)
    _obey(control)
    server.close(timeout=10)


def serve_grpc(control: Connection) -> None:
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: REPLY)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        handlers=[grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    control.send(port)
    _obey(control)
    server.stop(grace=5).wait()


def _obey(control: Connection) -> None:
    control.send("ready")
    while (command := control.recv()) != "stop":
        assert command == "cpu"
        control.send(time.process_time())


class ServerProcess:
    def __init__(self, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child_end = context.Pipe()
        self._process = context.Process(target=target, args=(*args, child_end), daemon=True)
        self._process.start()

    def receive(self) -> Any:
        assert self._control.poll(60), "the server did not start"
        return self._control.recv()

    def cpu(self) -> float:
        self._control.send("cpu")
        return float(self._control.recv())

    def stop(self) -> None:
        self._control.send("stop")
        self._process.join(30)


# A server process, and one round trip to it.
Client = tuple[ServerProcess, Callable[[], tuple[int, bytes]]]


@pytest.fixture(scope="module")
def forward_client() -> Iterator[Client]:
    directory = tempfile.mkdtemp(prefix="sp-bench-")
    path = os.path.join(directory, "peer.sock")
    server = ServerProcess(serve_forwarding, path)
    assert server.receive() == "ready"
    client = ForwardClient(path)
    try:
        yield server, lambda: client.call(1, REQUEST, 30.0)
    finally:
        client.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def grpc_client() -> Iterator[Client]:
    server = ServerProcess(serve_grpc)
    port = server.receive()
    assert server.receive() == "ready"
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary(METHOD)

    def call() -> tuple[int, bytes]:
        return 0, stub(REQUEST, timeout=30.0)

    try:
        yield server, call
    finally:
        channel.close()
        server.stop()


# -- measuring ---------------------------------------------------------------------------


def measure(benchmark: Any, client: Client, threads: int) -> float:
    """Benchmarks rounds of `threads` × CALLS_PER_THREAD calls; returns CPU µs per call."""
    server, call = client
    assert call() == (0, REPLY)
    calls_per_round = threads * CALLS_PER_THREAD

    def calls() -> None:
        for _ in range(CALLS_PER_THREAD):
            call()

    with ThreadPoolExecutor(max_workers=threads) as pool:

        def one_round() -> None:
            if threads == 1:
                calls()
            else:
                for future in [pool.submit(calls) for _ in range(threads)]:
                    future.result()

        client_cpu, server_cpu = time.process_time(), server.cpu()
        benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1)
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu() - server_cpu
    total_calls = (ROUNDS + 1) * calls_per_round
    cpu_per_call = (client_cpu + server_cpu) / total_calls * 1e6
    benchmark.extra_info.update(
        calls_per_round=calls_per_round,
        wall_us_per_call=benchmark.stats.stats.mean / calls_per_round * 1e6,
        cpu_us_per_call=cpu_per_call,
        client_cpu_us_per_call=client_cpu / total_calls * 1e6,
        server_cpu_us_per_call=server_cpu / total_calls * 1e6,
    )
    return cpu_per_call


def test_bench_grpc_unary_1_thread(benchmark: Any, grpc_client: Client) -> None:
    CPU_PER_CALL["grpc"] = measure(benchmark, grpc_client, threads=1)


def test_bench_grpc_unary_4_threads(benchmark: Any, grpc_client: Client) -> None:
    measure(benchmark, grpc_client, threads=4)


def test_bench_forward_4_threads(benchmark: Any, forward_client: Client) -> None:
    measure(benchmark, forward_client, threads=4)


def test_bench_forward_1_thread(benchmark: Any, forward_client: Client) -> None:
    CPU_PER_CALL["forward"] = measure(benchmark, forward_client, threads=1)
    if "grpc" in CPU_PER_CALL:
        ratio = CPU_PER_CALL["forward"] / CPU_PER_CALL["grpc"]
        benchmark.extra_info["cpu_ratio_forward_to_grpc"] = ratio
        print(
            f"\nCPU per call, both ends: forwarding {CPU_PER_CALL['forward']:.1f} µs, "
            f"gRPC {CPU_PER_CALL['grpc']:.1f} µs, ratio {ratio:.3f}"
        )
