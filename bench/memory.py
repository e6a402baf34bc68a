"""Memory of the proxy tree: per idle client connection and per cached trial.

    python -m bench.memory [--db mariadb|sqlite] [--connections 5000] [--trials 20000,100000]

`shardproxy serve --workers N` runs as a real process tree (a supervisor, its
workers and multiprocessing's resource tracker); its memory is the sum of VmRSS
over the tree, read from /proc.

Idle connections (part `idle`). Client processes (spawned, their soft
RLIMIT_NOFILE raised to the hard limit) open `--connections` gRPC channels in all,
each its own TCP connection: the option `grpc.use_local_subchannel_pool` stops gRPC
from sharing one connection among channels with the same target, and every channel
sends one GetAllStudies (an empty request), so the server has accepted and served
it. The count held is checked on the server side: established TCP sockets with the
proxy's port as local port in /proc/net/tcp, matched to the workers' socket fds
(which also gives the split across workers). Figures: tree RSS before, with the
connections held and after they closed; RSS per connection (delta / connections);
the tree's CPU while they sit idle (/proc, over `--idle-seconds`, against the same
window before they were opened); responsiveness from a fresh client, before and
while they are held (GetAllStudies latency on raw bytes over 8 new connections, and
the wall time per trial of a short RandomSampler study through Optuna's
`GrpcStorageProxy`); and whether every held connection still answers a call after
the idle window. Further `--rounds` open and close the same number again on the same
proxy: memory that is retained and reused stays flat, memory that grows with every
connection ever opened does not.

Cached trials (part `trials`). For each size, a study of that many COMPLETE trials
(one float parameter, one value: the seed scenario's trials) is bulk-inserted
(`bench.databases.prefill`), a fresh proxy is started, a 100-trial study owned by the
same worker is read first (one-off costs fall before the baseline), then the big
study is read once in full: a raw GetTrials with trial_id_greater_than = -1, what a
new `GrpcStorageProxy` sends first. Figure: the owner worker's RSS delta / trials;
the other worker's delta (the front, when the connection landed there) is reported
beside it. A second full read shows whether the growth repeats.

At the open-file limit (part `limit`). The idle-connection measurement again, with
the proxy started under a soft RLIMIT_NOFILE of `--limit-nofile` (1024 is the usual
default on Linux). `shardproxy serve` raises its soft limit to the hard one before
it starts workers; this part checks that the workers got it and hold every
connection (before it did, a worker stopped accepting at about a thousand).

Bounded: every wait has a limit, a client process stops opening at its first wave
that fails, and the proxy (its own process group) and the client processes are
stopped in `finally` blocks. All traffic is to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from bench import counters, databases, systems
from bench.loadgen import wire
from bench.stats import percentile

GET_ALL_STUDIES = wire.method_path("GetAllStudies")
GET_TRIALS = wire.method_path("GetTrials")
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
# Channels a client process connects (or calls) at once: about the warm-up's
# concurrency, so that what stays behind is the connections, not a burst of calls.
WAVE = 50
CONNECT_LIMIT = 20.0  # seconds one wave of channels may take to connect and answer
HOLD_LIMIT = 600.0  # a client process gives up holding if never told to close
SETTLE = 2.0  # seconds for the proxy's memory to settle before RSS is read
LATENCY_CHANNELS = 8
LATENCY_TIMEOUT = 10.0  # seconds a fresh client's call may take before it counts as failed
WARM_UP_CALLS = 512  # concurrent GetAllStudies to grow the worker thread pools first


# -- the proxy tree in /proc -------------------------------------------------------


def workers(root: int) -> dict[int, int]:
    """Worker shard index -> pid (workers name themselves `shardproxy-w<index>`)."""
    return {int(name[len("shardproxy-w"):]): pid for pid, name in counters.tree_names(root).items()
            if name.startswith("shardproxy-w")}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def label(pid: int, name: str, root: int) -> str:
    """A readable name: the supervisor, a worker, or multiprocessing's resource tracker."""
    if pid == root:
        return f"supervisor[{pid}]"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"resource_tracker" in f.read():
            return f"resource_tracker[{pid}]"
    return f"{name}[{pid}]"


def tree_rss(root: int) -> dict[str, Any]:
    per_process = {}
    for pid, name in counters.tree_names(root).items():
        with contextlib.suppress(OSError):
            per_process[label(pid, name, root)] = rss_kib(pid)
    return {"total_kib": sum(per_process.values()), "processes": per_process}


def nofile_limit(pid: int) -> tuple[int, int]:
    """The (soft, hard) open-file limit of a process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise ValueError(f"no open-file limit for {pid}")


ESTABLISHED, LISTEN = "01", "0A"  # socket states as /proc/net/tcp writes them


def tcp_sockets(port: int, state: str) -> list[int]:
    """Inodes of the TCP sockets in `state` whose local port is `port`.

    A connection still in a listener's accept queue is established but has no file
    yet: its inode is 0.
    """
    inodes = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.append(int(fields[9]))
    return inodes


def established_in_kernel(port: int) -> int:
    """Established connections to `port`, accepted by a worker or still queued."""
    return len(tcp_sockets(port, ESTABLISHED))


def connections_by_worker(root: int, port: int) -> dict[str, int]:
    """Established client connections held open by each worker (its socket fds)."""
    inodes = set(tcp_sockets(port, ESTABLISHED))
    split = {}
    for index, pid in sorted(workers(root).items()):
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    held += link.startswith("socket:[") and int(link[8:-1]) in inodes
        split[f"w{index}"] = held
    return split


# -- the proxy ---------------------------------------------------------------------


@contextlib.contextmanager
def serve(url: str, worker_count: int, server_nofile: int | None) -> Iterator[tuple[
        systems.RunningProxy, dict[str, int]]]:
    """`shardproxy serve` with every worker listening.

    Yields the proxy and a dict that, once the proxy has stopped, holds its stderr
    (`stderr_summary`).
    """
    port = systems.free_port()
    argv = systems.command("shardproxy", url, port, systems.ProxyOptions(workers=worker_count))

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


# -- responsiveness from a fresh client --------------------------------------------


def small_request_latency(target: str, samples: int) -> dict[str, float]:
    """GetAllStudies one at a time over new connections (both workers, likely)."""
    channels = [grpc.insecure_channel(target, options=[OWN_CONNECTION])
                for _ in range(LATENCY_CHANNELS)]
    try:
        calls = [channel.unary_unary(GET_ALL_STUDIES) for channel in channels]
        for call in calls:  # connecting is not what is timed
            call(b"", timeout=LATENCY_TIMEOUT, wait_for_ready=True)
        times = []
        for i in range(samples):
            start = time.perf_counter()
            calls[i % len(calls)](b"", timeout=LATENCY_TIMEOUT)
            times.append(time.perf_counter() - start)
    finally:
        for channel in channels:
            channel.close()
    return summary_ms(times)


def optuna_trial_latency(target: str, study_name: str, trials: int) -> dict[str, float]:
    """Wall time per trial of RandomSampler on x**2 through a new GrpcStorageProxy."""
    import optuna

    host, _, port = target.rpartition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        storage.wait_server_ready(timeout=LATENCY_TIMEOUT)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            study.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2, n_trials=1)
            times.append(time.perf_counter() - start)
    finally:
        storage.close()
    return summary_ms(times)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(seconds, 50) * 1000, "p99_ms": percentile(seconds, 99) * 1000,
            "max_ms": max(seconds) * 1000, "samples": len(seconds)}


def responsiveness(target: str, study_name: str, args: argparse.Namespace) -> dict[str, Any]:
    # An unresponsive proxy is a result, not a crash.
    result: dict[str, Any] = {}
    try:
        result["get_all_studies"] = small_request_latency(target, args.latency_samples)
    except grpc.RpcError as exc:
        result["get_all_studies"] = {"error": f"{exc.code().name} ({exc.details()})"}
    try:
        result["optuna_trial"] = optuna_trial_latency(target, study_name, args.optuna_trials)
    except Exception as exc:
        result["optuna_trial"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return result


def idle_cpu(root: int, seconds: float) -> dict[str, float]:
    start = counters.tree_cpu_seconds([root])
    time.sleep(seconds)
    used = counters.tree_cpu_seconds([root]) - start
    return {"seconds": seconds, "cpu_s": used, "cpu_percent_of_one_core": 100 * used / seconds}


# -- idle client connections -------------------------------------------------------


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one (this process's own); returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def call_each(channels: list[grpc.Channel], wait_for_ready: bool) -> tuple[
        list[grpc.Channel], collections.Counter[str]]:
    """One GetAllStudies on every channel at once: (channels that answered, errors)."""
    calls = [channel.unary_unary(GET_ALL_STUDIES).future(
        b"", timeout=CONNECT_LIMIT, wait_for_ready=wait_for_ready) for channel in channels]
    answered, errors = [], collections.Counter[str]()
    for channel, call in zip(channels, calls, strict=True):
        try:
            call.result()
            answered.append(channel)
        except grpc.RpcError as exc:
            errors[f"{exc.code().name}: {exc.details()}"[:200]] += 1
    return answered, errors


def hold_connections(target: str, count: int, pipe: Connection) -> None:
    """A client process: opens `count` connections, reports, holds them until told.

    While held, "ping" sends one more call on every connection (are they all still
    served?); "close", or the parent's end of the pipe closing, ends the process.
    """
    nofile = raise_nofile()
    channels: list[grpc.Channel] = []
    errors: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    try:
        # Waves of connections; the first wave with a failure ends the opening (a
        # limit was hit, and is reported), so that this stays bounded.
        while len(channels) < count and not errors:
            wave = [grpc.insecure_channel(target, options=[OWN_CONNECTION])
                    for _ in range(min(WAVE, count - len(channels)))]
            answered, errors = call_each(wave, wait_for_ready=True)
            channels += answered
            for channel in set(wave) - set(answered):
                channel.close()
        pipe.send({"opened": len(channels), "errors": dict(errors), "nofile": nofile,
                   "seconds": time.monotonic() - started})
        while pipe.poll(HOLD_LIMIT) and pipe.recv() == "ping":
            answered_count, errors = 0, collections.Counter()
            for start in range(0, len(channels), WAVE):
                answered, wave_errors = call_each(channels[start:start + WAVE],
                                                  wait_for_ready=False)
                answered_count += len(answered)
                errors.update(wave_errors)
            pipe.send({"answered": answered_count, "errors": dict(errors)})
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        for channel in channels:
            channel.close()


class Clients:
    """The spawned client processes holding the connections."""

    def __init__(self, pipes: list[Connection], reports: list[dict], wave_limit: float) -> None:
        self._pipes = pipes
        self.reports = reports
        self._wave_limit = wave_limit  # seconds all waves of the largest share may take

    def ping(self) -> dict[str, Any]:
        """One call on every held connection: how many answered."""
        answered, errors = 0, collections.Counter[str]()
        for pipe in self._pipes:
            pipe.send("ping")
        for pipe in self._pipes:
            try:
                if not pipe.poll(self._wave_limit + 30):
                    raise EOFError
                reply = pipe.recv()
            except (EOFError, OSError):
                errors["no answer from a client process"] += 1
                continue
            answered += reply["answered"]
            errors.update(reply["errors"])
        return {"answered": answered, "errors": dict(errors)}


@contextlib.contextmanager
def client_processes(target: str, total: int, processes: int) -> Iterator[Clients]:
    """`total` connections over `processes` spawned clients, once they are open."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    shares = [total // processes + (i < total % processes) for i in range(processes)]
    pipes, children = [], []
    try:
        for share in shares:
            mine, theirs = context.Pipe()
            child = context.Process(target=hold_connections, args=(target, share, theirs),
                                    daemon=True)
            child.start()
            pipes.append(mine)
            children.append(child)
        wave_limit = CONNECT_LIMIT * (max(shares) // WAVE + 1)
        deadline = time.monotonic() + 120 + wave_limit
        reports = []
        for pipe, child in zip(pipes, children, strict=True):
            try:
                if pipe.poll(max(0.0, deadline - time.monotonic())):
                    reports.append(pipe.recv())
                    continue
            except (EOFError, OSError):
                pass  # the process died: reported below
            reports.append({"opened": 0, "errors": {"client process did not report": 1},
                            "exit_code": child.exitcode})
        yield Clients(pipes, reports, wave_limit)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("close")
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join(timeout=5)


def held_figures(proxy: systems.RunningProxy, clients: Clients) -> dict[str, Any]:
    """What the server holds while the client processes hold their connections."""
    time.sleep(SETTLE)
    reports = clients.reports
    by_worker = connections_by_worker(proxy.pid, proxy.port)
    errors = sum((collections.Counter(r["errors"]) for r in reports), collections.Counter())
    return {"clients": reports, "opened_by_clients": sum(r["opened"] for r in reports),
            "errors": dict(errors), "held_by_workers": by_worker,
            "held": sum(by_worker.values()),
            "established_in_kernel": established_in_kernel(proxy.port),
            "rss": tree_rss(proxy.pid)}


def measure_idle_connections(url: str, args: argparse.Namespace, server_nofile: int | None,
                             rounds: int, say: Any) -> dict[str, Any]:
    """Rounds of `args.connections` idle connections on one proxy; latency in round 1.

    A second round after the first closed tells retained memory (reused, flat) from
    memory that grows with every connection ever opened.
    """
    study = f"memory-{uuid.uuid4().hex[:6]}"
    databases.create_studies(url, [study])
    with serve(url, args.workers, server_nofile) as (proxy, stderr):
        root, target = proxy.pid, proxy.target
        result: dict[str, Any] = {
            "workers": args.workers, "connections_asked": args.connections,
            "client_processes": args.client_processes,
            "worker_nofile_limits": {f"w{i}": nofile_limit(pid)
                                     for i, pid in sorted(workers(root).items())},
            "rounds": [],
        }
        warm_up(target)
        say("responsiveness before ...")
        result["latency_before"] = responsiveness(target, study, args)
        time.sleep(SETTLE)
        result["rss_before"] = tree_rss(root)
        result["idle_cpu_before"] = idle_cpu(root, args.idle_seconds)
        for number in range(1, rounds + 1):
            say(f"round {number}: opening {args.connections} connections over "
                f"{args.client_processes} processes ...")
            opened_at = time.monotonic()
            with client_processes(target, args.connections, args.client_processes) as clients:
                opened_in = time.monotonic() - opened_at
                held = held_figures(proxy, clients)
                held["open_seconds"] = opened_in
                say(f"held: {held['held_by_workers']}, tree RSS "
                    f"{held['rss']['total_kib'] / 1024:.1f} MiB")
                if number == 1:
                    held["idle_cpu"] = idle_cpu(root, args.idle_seconds)
                    say("responsiveness while held ...")
                    result["latency_held"] = responsiveness(target, study, args)
                    # Still served after idling, every one of them?
                    held["ping_after_idle"] = clients.ping()
            time.sleep(SETTLE)
            held["rss_after_close"] = tree_rss(root)
            held["held_after_close"] = connections_by_worker(root, proxy.port)
            result["rounds"].append(held)
        result["proxy_alive"] = proxy.process.poll() is None
    # 0: it drained and exited on SIGTERM; -9: it had to be killed.
    result["proxy_exit_code"] = proxy.process.returncode
    result["proxy_stderr"] = stderr
    first = result["rounds"][0]
    result["rss_per_connection_kib"] = per_connection(result["rss_before"], first["rss"],
                                                      first["held"])
    result["rss_per_connection_by_worker_kib"] = {
        w: per_connection_of(w, result["rss_before"], first["rss"], n)
        for w, n in first["held_by_workers"].items()}
    return result


def per_connection(before: dict, after: dict, held: int) -> float | None:
    return (after["total_kib"] - before["total_kib"]) / held if held else None


def per_connection_of(worker: str, before: dict, after: dict, held: int) -> float | None:
    """The RSS delta of one worker (its processes entry is `shardproxy-<worker>[pid]`)."""
    def kib(rss: dict) -> int:
        return sum(v for k, v in rss["processes"].items() if k.startswith(f"shardproxy-{worker}["))
    return (kib(after) - kib(before)) / held if held else None


# -- cached trials -----------------------------------------------------------------


def study_owned_by(url: str, owner: int, shard_count: int, tag: str) -> int:
    """A new empty study whose id the shard `owner` owns."""
    from shardproxy.routing import owner_of

    for attempt in range(4 * shard_count):
        (study_id,) = databases.create_studies(url, [f"{tag}-{attempt}"])
        if owner_of(study_id, shard_count) == owner:
            return study_id
    raise RuntimeError(f"no study id for shard {owner}")


def full_read(proxy: systems.RunningProxy, study_id: int) -> tuple[float, int, str]:
    """One full GetTrials on a new connection: (seconds, reply bytes, front worker)."""
    options = [OWN_CONNECTION, ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(proxy.target, options=options) as channel:
        start = time.perf_counter()
        reply = channel.unary_unary(GET_TRIALS)(wire.get_trials(study_id, (), -1), timeout=600,
                                                wait_for_ready=True)
        seconds = time.perf_counter() - start
        # The only client connection open now: the worker holding it is the front.
        held = connections_by_worker(proxy.pid, proxy.port)
    return seconds, len(reply), ",".join(w for w, n in held.items() if n) or "?"


def measure_cached_trials(url: str, size: int, args: argparse.Namespace,
                          say: Any) -> dict[str, Any]:
    from shardproxy.routing import owner_of

    tag = f"memory-{uuid.uuid4().hex[:6]}"
    (big,) = databases.create_studies(url, [f"{tag}-{size}"])
    owner = owner_of(big, args.workers)
    small = study_owned_by(url, owner, args.workers, f"{tag}-small")
    started = time.monotonic()
    databases.prefill(url, big, size, ("x",))
    databases.prefill(url, small, 100, ("x",))
    prefill_s = time.monotonic() - started
    with serve(url, args.workers, args.server_nofile) as (proxy, _):
        pids = workers(proxy.pid)

        def settled_rss() -> dict[str, int]:
            time.sleep(SETTLE)
            return {f"w{index}": rss_kib(pid) for index, pid in pids.items()}

        warm_up(proxy.target)
        full_read(proxy, small)
        before = settled_rss()
        say(f"reading the {size}-trial study ...")
        first_s, reply_bytes, front = full_read(proxy, big)
        after = settled_rss()
        again_s, _, front_again = full_read(proxy, big)
        again = settled_rss()
    mine = f"w{owner}"
    return {
        "trials": size, "study_id": big, "owner": mine, "prefill_s": prefill_s,
        "front_first_read": front, "front_second_read": front_again,
        "first_read_s": first_s, "second_read_s": again_s, "reply_bytes": reply_bytes,
        "rss_kib": {"before": before, "after_first_read": after, "after_second_read": again},
        "owner_delta_kib": after[mine] - before[mine],
        "owner_per_trial_bytes": (after[mine] - before[mine]) * 1024 / size,
        "owner_second_read_delta_kib": again[mine] - after[mine],
        "other_workers_delta_kib": {w: after[w] - before[w] for w in after if w != mine},
    }


def cache_limit() -> dict[str, Any]:
    from shardproxy.config import Config

    return {"cache_max_trials_default": Config().cache_max_trials,
            "meaning": "trials cached per worker, summed over its studies; whole "
                       "least-recently-used studies are evicted beyond it"}


# -- report ------------------------------------------------------------------------


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _git_commit() -> str:
    """HEAD, and whether this file differs from it (the figures are this file's)."""
    commit = _git("rev-parse", "--short", "HEAD")
    changed = _git("status", "--porcelain", "--", Path(__file__).name)
    return f"{commit} (plus uncommitted bench/memory.py)" if changed else commit


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _latency_cells(latency: dict[str, Any]) -> list[str]:
    cells = []
    for key, digits in (("get_all_studies", 2), ("optuna_trial", 1)):
        figures = latency[key]
        cells.append(f"failed: {figures['error']}" if "error" in figures
                     else f"{figures['p50_ms']:.{digits}f} / {figures['p99_ms']:.{digits}f}")
    return cells


def _split(counts: dict[str, Any]) -> str:
    return ", ".join(f"{w} {n}" for w, n in counts.items())


def _idle_lines(idle: dict[str, Any]) -> list[str]:
    asked = idle["connections_asked"]
    first = idle["rounds"][0]
    held = first["held"]
    nofile = ", ".join(f"{w} {soft}" for w, (soft, _) in idle["worker_nofile_limits"].items())
    by_worker = _split({w: _num(v) for w, v in idle["rss_per_connection_by_worker_kib"].items()})
    samples = idle["latency_before"].get("get_all_studies", {}).get("samples", 0)
    lines = [
        f"`shardproxy serve --workers {idle['workers']}`; {asked} channels asked over "
        f"{idle['client_processes']} client processes, each its own TCP connection that "
        f"served one GetAllStudies; opened in {first['open_seconds']:.1f} s. Workers' soft "
        f"open-file limit: {nofile}.", "",
        "| figure | value |", "|---|---:|",
        f"| connections held (server side: workers' sockets) | {held} of {asked} |",
        f"| split across workers | {_split(first['held_by_workers'])} |",
        f"| established in the kernel, accepted or not | {first['established_in_kernel']} |",
        f"| tree RSS before, MiB | {_mib(idle['rss_before']['total_kib'])} |",
        f"| tree RSS with them held, MiB | {_mib(first['rss']['total_kib'])} |",
        f"| **RSS per idle connection, KiB** | **{_num(idle['rss_per_connection_kib'])}** |",
        f"| per worker (its delta ÷ its connections), KiB | {by_worker} |",
        f"| tree RSS after they closed, MiB | {_mib(first['rss_after_close']['total_kib'])} |",
    ]
    rounds = idle["rounds"]
    for number, (previous, again) in enumerate(itertools.pairwise(rounds), 2):
        grown = again["rss"]["total_kib"] - previous["rss_after_close"]["total_kib"]
        lines += [
            f"| round {number} on the same proxy: held / tree RSS with them, MiB (growth "
            f"over the previous round's close) / after close, MiB "
            f"| {again['held']} / {_mib(again['rss']['total_kib'])} (+{_mib(grown)}) "
            f"/ {_mib(again['rss_after_close']['total_kib'])} |"]
    if "ping_after_idle" in first:
        ping = first["ping_after_idle"]
        lines.append(f"| held connections answering one more call after the idle window "
                     f"| {ping['answered']} of {held}"
                     f"{'; ' + str(ping['errors']) if ping['errors'] else ''} |")
    if "idle_cpu" in first:
        lines.append(f"| proxy CPU over {first['idle_cpu']['seconds']:.0f} s idle, without → "
                     f"with them, % of one core "
                     f"| {idle['idle_cpu_before']['cpu_percent_of_one_core']:.2f} → "
                     f"{first['idle_cpu']['cpu_percent_of_one_core']:.2f} |")
    lines += [
        f"| client errors | {first['errors'] or 'none'} |", "",
        "Responsiveness from a fresh client (p50 / p99, ms): GetAllStudies on raw bytes over "
        f"{LATENCY_CHANNELS} new connections ({samples} "
        "calls, one at a time; it reads the database), and one RandomSampler trial (`x**2`) "
        "through a new `GrpcStorageProxy` (`study.optimize(n_trials=1)`, wall time; the "
        "first includes loading the study).", "",
        "| when | GetAllStudies p50 / p99 | Optuna trial p50 / p99 |", "|---|---:|---:|",
        "| before the idle connections | " + " | ".join(_latency_cells(idle["latency_before"]))
        + " |",
        f"| with {held} idle connections held | "
        + " | ".join(_latency_cells(idle["latency_held"])) + " |", "",
    ]
    if held < asked:
        lines += [
            f"**Only {held} of {asked} connections were held.** A client process stops "
            f"opening at its first wave of {WAVE} with a failure; the errors were "
            f"{first['errors']}. Established in the kernel but never accepted by a worker: "
            f"{first['established_in_kernel'] - held}. The proxy's stderr (distinct lines, "
            "times seen):", "", "```",
            *(f"{n:5d}  {line}" for line, n in idle["proxy_stderr"].items()),
            *([] if idle["proxy_stderr"] else ["(nothing)"]), "```", ""]
    return lines


def _trial_lines(trials: list[dict[str, Any]], limit: int) -> list[str]:
    lines = [
        "A study of N COMPLETE trials (one float parameter, one value), read once in full "
        "(raw GetTrials, `trial_id_greater_than` = -1) through a freshly started proxy; RSS "
        "delta of the worker that owns the study. The front is the worker the read's "
        "connection landed on (it forwards to the owner when they differ).", "",
        "| trials | owner | front | first full read, s | reply MiB | owner RSS delta, MiB "
        "| **bytes per cached trial** | owner delta on a 2nd full read, MiB "
        "| other worker delta, MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in trials:
        others = _split({w: _mib(d) for w, d in t["other_workers_delta_kib"].items()})
        lines.append(
            f"| {t['trials']:,} | {t['owner']} | {t['front_first_read']} "
            f"| {t['first_read_s']:.2f} | {t['reply_bytes'] / 2**20:.1f} "
            f"| {_mib(t['owner_delta_kib'])} | **{t['owner_per_trial_bytes']:,.0f}** "
            f"| {_mib(t['owner_second_read_delta_kib'])} | {others} |")
    per_trial = max(t["owner_per_trial_bytes"] for t in trials)
    reply_per_trial = max(t["reply_bytes"] / t["trials"] for t in trials)
    lines += [
        "", "A full read also leaves about the reply's size resident in the worker that sent "
        "the reply (freed, not returned to the system): see the other worker's column when "
        "it was the front, the owner's second read when the owner was. So a figure above "
        f"can include up to the reply's {reply_per_trial:,.0f} bytes per trial besides the "
        "cache itself.",
        "", f"Cache limit: `--cache-max-trials` defaults to {limit:,} trials per worker "
        f"(`shardproxy/config.py`: summed over the worker's studies, whole least-recently-used "
        f"studies evicted beyond it). At {per_trial:,.0f} bytes per trial of this shape (the "
        f"largest figure above), a full cache is about {limit * per_trial / 2**30:.1f} GiB "
        "per worker, times the worker count for the instance. Trials with more parameters, "
        "values or attributes cost more each.", ""]
    return lines


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Memory: per idle client connection and per cached trial", "",
        f"`{meta['command']}` — commit {meta['git']}, {meta['date']}, {meta['machine']}, "
        f"database {meta['db']}, run time {meta['elapsed_s']:.0f} s. Load average "
        f"{meta['load_before']} before, {meta['load_after']} after (this bench's own client "
        "processes included; the machine may also be shared with other work): the memory "
        "figures do not depend on it, the latencies do.", "",
        "How it is measured: the docstring of `bench/memory.py`. RSS is the sum of VmRSS over "
        "the proxy's process tree (supervisor, workers, multiprocessing's resource tracker), "
        "read from /proc; per-process figures are in `memory.json`.", "",
    ]
    if "idle" in data:
        lines += ["## Idle client connections", "", *_idle_lines(data["idle"])]
    if "cached_trials" in data:
        limit = data["cache_limit"]["cache_max_trials_default"]
        lines += ["## Cached trials", "", *_trial_lines(data["cached_trials"], limit)]
    if "limit" in data:
        soft = data["meta"]["limit_nofile"]
        lines += [
            f"## At a soft open-file limit of {soft}", "",
            f"The same idle-connection measurement with the proxy started under a soft "
            f"RLIMIT_NOFILE of {soft} (1024 is the usual default soft limit on Linux): "
            "`shardproxy serve` raises it to the hard limit for its workers.",
            "", *_idle_lines(data["limit"])]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="mariadb", type=databases.backend_name,
                        help="mariadb or sqlite (a fresh database, dropped after) "
                        "[default: %(default)s]")
    parser.add_argument("--db-url", help="server URL without database part "
                        "[default: the local server of --db]")
    parser.add_argument("--parts", default="idle,trials,limit",
                        help="idle (connections), trials (cache), limit (idle connections at "
                        "--limit-nofile) [default: %(default)s]")
    parser.add_argument("--workers", type=int, default=2,
                        help="shardproxy worker processes [default: %(default)s]")
    parser.add_argument("--connections", type=int, default=5000,
                        help="idle client connections to hold [default: %(default)s]")
    parser.add_argument("--client-processes", type=int, default=10,
                        help="processes the connections are spread over [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times the connections are opened and closed on one proxy "
                        "[default: %(default)s]")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="window of the idle CPU samples [default: %(default)s]")
    parser.add_argument("--latency-samples", type=int, default=200,
                        help="GetAllStudies calls per latency figure [default: %(default)s]")
    parser.add_argument("--optuna-trials", type=int, default=30,
                        help="trials per Optuna latency figure [default: %(default)s]")
    parser.add_argument("--trials", default="20000,100000",
                        help="study sizes for the cached-trial figure [default: %(default)s]")
    parser.add_argument("--server-nofile", type=int,
                        help="soft RLIMIT_NOFILE the proxy is started with for the idle and "
                        "trials parts [default: inherited]")
    parser.add_argument("--limit-nofile", type=int, default=1024,
                        help="soft RLIMIT_NOFILE of the proxy in the limit part "
                        "[default: %(default)s]")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the Markdown again from --out's JSON")
    parser.add_argument("--out", default="bench/results/memory",
                        help="results path without extension [default: %(default)s]")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts = set(args.parts.split(","))

    def say(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    started = time.monotonic()
    data: dict[str, Any] = {"meta": {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(), "db": args.db,
        "machine": f"{os.cpu_count()} cores {platform.machine()}, Python "
                   f"{platform.python_version()}, grpcio {grpc.__version__}, "
                   f"Optuna {optuna.__version__}",
        "bench_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "server_nofile": args.server_nofile, "limit_nofile": args.limit_nofile,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }, "cache_limit": cache_limit()}
    with databases.fresh_database(args.db, args.db_url) as db:
        if "idle" in parts:
            print("idle connections", file=sys.stderr, flush=True)
            data["idle"] = measure_idle_connections(db.url, args, args.server_nofile,
                                                    args.rounds, say)
        if "trials" in parts:
            data["cached_trials"] = []
            for size in (int(s) for s in args.trials.split(",")):
                print(f"cached trials: {size}", file=sys.stderr, flush=True)
                data["cached_trials"].append(measure_cached_trials(db.url, size, args, say))
        if "limit" in parts:
            print(f"idle connections at a soft open-file limit of {args.limit_nofile}",
                  file=sys.stderr, flush=True)
            data["limit"] = measure_idle_connections(db.url, args, args.limit_nofile, 1, say)
    data["meta"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data["meta"]["elapsed_s"] = time.monotonic() - started
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.render:  # the tables again from the results already measured
        data = json.loads(out.with_suffix(".json").read_text())
    else:
        data = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(data)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    # The limit part is expected to fall short; the main one must hold them all.
    idle = data.get("idle")
    return 1 if idle and idle["rounds"][0]["held"] < idle["connections_asked"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
