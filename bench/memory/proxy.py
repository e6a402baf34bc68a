"""The proxy under measurement, and the calls this bench makes to it.

`serve` starts `shardproxy serve` as a real process tree (optionally under a given
soft open-file limit, with more flags) and yields it once every worker listens;
`warm_up` grows the workers' handler threads before a baseline is read;
`get_all_trials` is the full read a new client makes; `stderr_summary` turns the
proxy's log into distinct lines with counts.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import resource
import subprocess
import tempfile
import time
from collections.abc import Iterator

import grpc

from bench import systems
from bench.loadgen import wire
from bench.memory.proctree import LISTEN, tcp_sockets, workers

GET_ALL_STUDIES = wire.method_path("GetAllStudies")
GET_TRIALS = wire.method_path("GetTrials")
# Each channel its own TCP connection: gRPC otherwise shares one among the channels
# of a process to the same target.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
# A full read's reply is as large as the study: a channel for it takes any size.
FULL_READ_OPTIONS = [OWN_CONNECTION, ("grpc.max_receive_message_length", -1)]
SETTLE = 2.0  # seconds for the proxy's memory to settle before RSS is read
LATENCY_CHANNELS = 8  # new connections a fresh client's calls (and the warm-up) go over
WARM_UP_CALLS = 512  # concurrent GetAllStudies to grow the worker thread pools first


@contextlib.contextmanager
def serve(url: str, worker_count: int, server_nofile: int | None,
          serve_flags: tuple[str, ...] = ()) -> Iterator[tuple[
        systems.RunningProxy, dict[str, int]]]:
    """`shardproxy serve` (plus `serve_flags`) with every worker listening.

    Yields the proxy and a dict that, once the proxy has stopped, holds its stderr
    (`stderr_summary`).
    """
    port = systems.free_port()
    argv = systems.command("shardproxy", url, port, systems.ProxyOptions(
        workers=worker_count, serve_flags=serve_flags))

    def limit() -> None:  # runs in the child before exec: the limit the proxy inherits
        if server_nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (server_nofile, hard))

    with tempfile.NamedTemporaryFile(prefix="bench-memory-", suffix=".log",
                                     delete=False) as log:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True, preexec_fn=limit)
    proxy = systems.RunningProxy("shardproxy", port, process)
    stderr: dict[str, int] = {}
    try:
        systems._wait_ready(proxy, log.name)
        # One ready worker answers; a baseline needs all of them listening.
        deadline = time.monotonic() + systems.READY_LIMIT
        while len(tcp_sockets(port, LISTEN)) < worker_count or len(workers(proxy.pid)) < \
                worker_count:
            if time.monotonic() > deadline:
                raise systems.Unavailable(f"not all {worker_count} workers listen")
            time.sleep(0.1)
        yield proxy, stderr
    finally:
        systems.stop(process)
        stderr.update(stderr_summary(log.name))
        with contextlib.suppress(OSError):
            os.unlink(log.name)


# gRPC's own log prefix ("E1128 17:40:09.050066    5845 ") and Python logging's.
_LOG_PREFIX = re.compile(r"^([EWI]\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:,]+ \d+ )")


def stderr_summary(path: str, most: int = 8) -> dict[str, int]:
    """The proxy's distinct stderr lines (timestamps and pids dropped), with counts."""
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        lines = collections.Counter(_LOG_PREFIX.sub("", line.strip()) for line in f)
        return dict(lines.most_common(most))
    return {}


def warm_up(target: str) -> None:
    """Concurrent requests, so each worker's handler threads exist before the baseline."""
    channels = [grpc.insecure_channel(target, options=[OWN_CONNECTION])
                for _ in range(LATENCY_CHANNELS)]
    try:
        calls = [channels[i % len(channels)].unary_unary(GET_ALL_STUDIES).future(
            b"", timeout=60, wait_for_ready=True) for i in range(WARM_UP_CALLS)]
        for call in calls:
            call.result()
    finally:
        for channel in channels:
            channel.close()


def get_all_trials(channel: grpc.Channel, study_id: int) -> bytes:
    """Every trial of a study, raw GetTrials with trial_id_greater_than = -1: what a
    new `GrpcStorageProxy` sends first. `channel` needs FULL_READ_OPTIONS."""
    return channel.unary_unary(GET_TRIALS)(wire.get_trials(study_id, (), -1), timeout=600,
                                           wait_for_ready=True)
