"""Running shardproxy inside the test process, with one or several workers.

Several workers in one process share the port through SO_REUSEPORT and forward to
each other over Unix sockets exactly as worker processes do, so the routing is
tested without paying a process start per test. The supervisor and real worker
processes have tests of their own.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from optuna.storages import GrpcStorageProxy

from shardproxy.config import Config
from shardproxy.worker import Shard, Worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_workers(
    url: str, workers: int = 1, host: str = "127.0.0.1", **options: object
) -> Iterator[list[Worker]]:
    """Starts `workers` shardproxy workers on one port of `host` (as given on the
    command line); stops them afterwards."""
    # No load balancer to tell, unless a test says.
    options = {"drain_delay": 0.0, "threads": 32, "drain_timeout": 5.0, **options}
    config = Config(storage_url=url, host=host, port=free_port(), workers=workers,
                    **options)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="shardproxy-test-") as sockets:
        paths = [str(Path(sockets) / f"shard-{i}.sock") for i in range(workers)]
        started: list[Worker] = []
        try:
            for index in range(workers):
                worker = Worker(config, Shard(index, workers, paths if workers > 1 else []))
                worker.start()
                started.append(worker)
            yield started
        finally:
            for worker in started:
                worker.stop(grace=5.0)


@contextlib.contextmanager
def proxy_client(port: int) -> Iterator[GrpcStorageProxy]:
    storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    storage.wait_server_ready(timeout=30)
    try:
        yield storage
    finally:
        storage.close()
