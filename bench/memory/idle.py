"""Idle client connections: the proxy tree's memory and CPU per connection held.

Spawned client processes open and hold the connections (`hold_connections`,
`client_processes`); `measure_idle_connections` runs the rounds on one proxy and
reads what the server side holds, its RSS, its idle CPU and what a fresh client
sees meanwhile. The parts `idle` and `limit` (the same, under a low open-file
limit) are both this measurement.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import resource
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench import databases, systems
from bench.memory.proctree import (
    connections_by_worker,
    established_in_kernel,
    nofile_limit,
    tree_rss,
    workers,
)
from bench.memory.proxy import GET_ALL_STUDIES, OWN_CONNECTION, SETTLE, serve, warm_up
from bench.memory.responsiveness import idle_cpu, responsiveness

# Channels a client process connects (or calls) at once: about the warm-up's
# concurrency, so that what stays behind is the connections, not a burst of calls.
WAVE = 50
CONNECT_LIMIT = 20.0  # seconds one wave of channels may take to connect and answer
HOLD_LIMIT = 600.0  # a client process gives up holding if never told to close


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
