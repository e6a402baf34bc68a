"""SIGKILL of one worker under load, seen by clients on every side of it.

What is proven, with `shardproxy serve --workers 4` on MariaDB and client
processes connected to every worker, once with the default standby and once with
none (`--standbys 0`, every restart a cold start):

- the supervisor restarts the killed worker under the same shard index (its
  process name `shardproxy-wN`), and the replacement serves again; from a standby
  it serves again within a second;
- every trial a client saw acknowledged (`study.tell` returned) is in the database,
  complete, with the value the client told, and trial numbers stay unique and
  gap-free in every study;
- clients connected to the surviving workers whose studies a survivor owns (their
  own worker or another) see no error at all and keep their connection; on a cold
  start, whose outage lasts long enough for trials to finish inside it, they also
  finish trials while the victim is down (a standby's outage is too short to show
  that);
- clients connected to a survivor whose studies the killed worker owned lose at
  most the one call that was being forwarded at the moment of the kill (a write
  the owner may already have applied cannot be retried), then make progress again;
- clients connected to the killed worker lose their connection, reconnect, and make
  progress again; whatever fails for them fails as UNAVAILABLE.

Why client *processes*: gRPC shares one TCP connection among all channels of a
process, so clients running as threads of one process all reach the same worker
and nothing can be said about "the other workers' clients". Each client process
here has its own connection, SO_REUSEPORT spreads those over the workers, and the
test finds out from /proc which worker holds the server end of each one before it
hands out the studies.

Timestamps are `time.monotonic()` in every process: on Linux that is the
system-wide CLOCK_MONOTONIC, so the clients' timestamps compare with the kill's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import NamedTuple

import grpc
import optuna
import pytest
from optuna.samplers import RandomSampler
from optuna.storages import GrpcStorageProxy, RDBStorage
from optuna.trial import TrialState

from shardproxy.routing import owner_of
from tests.proxies import proxy_client
from tests.servers import children_by_name, serve, standby_prepared, wait_until

pytestmark = pytest.mark.slow

WORKERS = 4
FIRST_CLIENTS = 10  # the kernel spreads them; more start until every worker has one
MAX_CLIENTS = 24
WARM_UP = 2.0  # load before the kill
AFTER_RESTART = 3.0  # load after the replacement listens again
CLIENT_LIFETIME = 60.0  # a client stops by itself after this, whatever happens
RESTART_DEADLINE = 1.0  # the requirement

ESTABLISHED, LISTEN = "01", "0A"  # socket states in /proc/net/tcp


# -- which process holds which end of a TCP connection (/proc) ----------------------


class TcpSocket(NamedTuple):
    local_port: int
    remote_port: int
    state: str


def socket_inodes(pid: int | str) -> set[int]:
    """Inodes of the sockets open in process `pid` (its fds read `socket:[inode]`)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def tcp_sockets(pid: int | str) -> list[TcpSocket]:
    """The TCP sockets (IPv4 and IPv6) open in process `pid`."""
    owned = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = line.split()
            if int(fields[9]) in owned:
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                found.append(TcpSocket(local, remote, fields[3]))
    return found


def ports_towards(server_port: int, pid: int | str = "self") -> list[int]:
    """Client side: local ports of the process's connections to `server_port`."""
    # A set: /proc/net/tcp can list a socket twice when the table changes while it
    # is read.
    return sorted({s.local_port for s in tcp_sockets(pid)
                   if s.remote_port == server_port and s.state == ESTABLISHED})


def client_ports_served(server_port: int, pid: int) -> set[int]:
    """Server side: the clients' ports of the connections a worker accepted."""
    return {s.remote_port for s in tcp_sockets(pid)
            if s.local_port == server_port and s.state == ESTABLISHED}


def listens(pid: int, port: int) -> bool:
    return any(s.local_port == port and s.state == LISTEN for s in tcp_sockets(pid))


# -- a client process ----------------------------------------------------------------


class Ack(NamedTuple):
    """A trial whose `tell` returned: the client was told it is stored."""

    number: int
    value: float
    at: float


class Failure(NamedTuple):
    at: float
    code: str  # a gRPC status name, or the exception's type for anything else
    details: str


def failure(exc: Exception) -> Failure:
    if isinstance(exc, grpc.RpcError):
        return Failure(time.monotonic(), exc.code().name, exc.details() or "")
    return Failure(time.monotonic(), type(exc).__name__, str(exc))


@dataclass
class ClientReport:
    ports_at_start: list[int]
    ports_at_end: list[int] = field(default_factory=list)
    acknowledged: list[Ack] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def run_client(conn: Connection, port: int, stop: Event) -> None:
    """A client process: reports its connection, gets a study, runs trials until told.

    Failures are recorded and the loop carries on with the same storage: gRPC
    reconnects the channel by itself. Stops when told, or after CLIENT_LIFETIME.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    storage.get_all_studies()  # opens this process's one connection
    report = ClientReport(ports_at_start=ports_towards(port))
    conn.send(report.ports_at_start)
    try:
        study_name = conn.recv()
    except EOFError:  # the test gave up before handing out the studies
        return
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=RandomSampler())
    give_up = time.monotonic() + CLIENT_LIFETIME
    while not stop.is_set() and time.monotonic() < give_up:
        try:
            trial = study.ask()
            value = trial.suggest_float("x", 0, 1)
            study.tell(trial, value)
        except Exception as exc:
            report.failures.append(failure(exc))
            time.sleep(0.05)  # no spinning while the channel reconnects
            continue
        report.acknowledged.append(Ack(trial.number, value, time.monotonic()))
    report.ports_at_end = ports_towards(port)
    storage.close()
    conn.send(report)


@dataclass
class Client:
    process: SpawnProcess = field(repr=False)
    conn: Connection = field(repr=False)  # the test's end of the pipe to the client
    port: int = 0  # the client's end of its connection
    worker: str = ""  # the name of the worker that accepted the connection
    study: str = ""
    owner: str = ""  # the name of the worker that owns the study
    report: ClientReport | None = field(default=None, repr=False)

    def outcome(self) -> ClientReport:
        assert self.report is not None, f"{self} sent no report"
        return self.report


@contextlib.contextmanager
def client_processes(port: int) -> Iterator[tuple[list[Client], Event, Callable[[], Client]]]:
    """Yields (the clients so far, their stop event, a function starting one more).

    On the way out every client is told to stop, and whatever is still running a
    few seconds later is killed: no process outlives the test.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    clients: list[Client] = []

    def start_one() -> Client:
        ours, theirs = context.Pipe()
        process = context.Process(target=run_client, args=(theirs, port, stop), daemon=True)
        process.start()
        theirs.close()
        clients.append(Client(process, ours))
        return clients[-1]

    try:
        yield clients, stop, start_one
    finally:
        stop.set()
        for client in clients:
            client.conn.close()  # a client still waiting for its study gets EOF and ends
        deadline = time.monotonic() + 10
        for client in clients:
            client.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if client.process.is_alive():
                client.process.kill()
                client.process.join()


def receive(client: Client, timeout: float) -> object:
    assert client.conn.poll(timeout), "a client process did not answer in time"
    return client.conn.recv()


def find_workers(clients: list[Client], port: int, supervisor: int) -> None:
    """Notes in each client which worker accepted its connection."""
    workers = children_by_name(supervisor)

    def all_found() -> bool:
        served = {p: name for name, pid in workers.items()
                  for p in client_ports_served(port, pid)}
        for client in clients:
            client.worker = served.get(client.port, "")
        return all(client.worker for client in clients)

    assert wait_until(all_found, 10), "a client's connection is held by no worker"


def connect_clients(
    start_one: Callable[[], Client], clients: list[Client], port: int, supervisor: int
) -> None:
    """Starts clients until every worker has at least one connection."""
    for _ in range(FIRST_CLIENTS):
        start_one()
    while True:
        for client in clients:
            if not client.port:
                ports = receive(client, 60)
                assert isinstance(ports, list) and len(ports) == 1, (
                    f"a client process should have one connection, not {ports}"
                )
                client.port = ports[0]
        find_workers(clients, port, supervisor)
        if len({c.worker for c in clients}) == WORKERS:
            return
        assert len(clients) < MAX_CLIENTS, "every connection went to one worker"
        start_one()


# -- studies ---------------------------------------------------------------------------


def create_studies(port: int, per_shard: int) -> dict[str, list[str]]:
    """At least `per_shard` new studies owned by each worker, by worker name."""
    owned: dict[str, list[str]] = {f"shardproxy-w{i}": [] for i in range(WORKERS)}
    with proxy_client(port) as setup:
        while min(len(names) for names in owned.values()) < per_shard:
            name = f"kill-{sum(len(names) for names in owned.values())}"
            study_id = setup.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            owned[f"shardproxy-w{owner_of(study_id, WORKERS)}"].append(name)
    return owned


def hand_out_studies(clients: list[Client], victim: str, port: int) -> None:
    """One study per client, owners taken in turn on each worker.

    A survivor's clients get, in turn, a study their own worker owns, one the victim
    owns (forwarded across the kill) and one another survivor owns (forwarded
    between two survivors); the victim's clients too.
    """
    available = create_studies(port, per_shard=len(clients))
    workers = sorted(available)
    for side in workers:
        others = [w for w in workers if w not in (side, victim)]
        owners = [side, victim, others[0]] if side != victim else [victim, others[0]]
        for i, client in enumerate(c for c in clients if c.worker == side):
            client.owner = owners[i % len(owners)]
            client.study = available[client.owner].pop()
            client.conn.send(client.study)


# -- the kill --------------------------------------------------------------------------


@dataclass
class Kill:
    at: float
    named_after: float  # seconds until a new process carried the victim's shard name
    listening_after: float  # seconds until that process listened on the shared port

    @property
    def serving_again(self) -> float:
        return self.at + self.listening_after


def kill_and_wait_for_replacement(supervisor: int, victim: str, port: int) -> Kill:
    victim_pid = children_by_name(supervisor)[victim]
    os.kill(victim_pid, signal.SIGKILL)
    at = time.monotonic()
    # The killed process stays a child (a zombie, still named) until it is reaped.
    replaced = wait_until(
        lambda: children_by_name(supervisor).get(victim) not in (None, victim_pid),
        10, interval=0.005,
    )
    named_after = time.monotonic() - at
    assert replaced, f"{victim} was not replaced"
    replacement_pid = children_by_name(supervisor)[victim]
    assert wait_until(lambda: listens(replacement_pid, port), 30, interval=0.005), (
        f"the replacement {victim} never listened on the port"
    )
    return Kill(at, named_after, time.monotonic() - at)


# -- what must hold ----------------------------------------------------------------------


def assert_acknowledged_trials_stored(url: str, clients: list[Client]) -> None:
    """Every acknowledged trial is stored, complete, with its value; numbers have no gap."""
    direct = RDBStorage(url)
    try:
        for client in clients:
            trials = optuna.load_study(study_name=client.study, storage=direct).get_trials()
            numbers = sorted(t.number for t in trials)
            assert numbers == list(range(len(trials))), f"{client.study}: numbers {numbers}"
            stored = {t.number: t for t in trials}
            acknowledged = client.outcome().acknowledged
            assert len({a.number for a in acknowledged}) == len(acknowledged), (
                f"{client.study}: a trial number was handed out twice"
            )
            for ack in acknowledged:
                trial = stored.get(ack.number)
                assert trial is not None, f"{client.study}: trial {ack.number} lost"
                assert trial.state == TrialState.COMPLETE, (client.study, trial)
                assert trial.value == ack.value, (client.study, trial, ack)
    finally:
        direct.engine.dispose()


def acknowledged_between(client: Client, start: float, end: float) -> int:
    return sum(start < ack.at < end for ack in client.outcome().acknowledged)


def assert_untouched(client: Client, kill: Kill, outage_is_long: bool) -> None:
    """A survivor's client of a survivor's study: no error, and no waiting either."""
    report = client.outcome()
    assert not report.failures, f"{client} failed: {report.failures}"
    assert report.ports_at_end == report.ports_at_start, f"{client} lost its connection"
    if outage_is_long:
        assert acknowledged_between(client, kill.at, kill.serving_again), (
            f"{client} waited for a worker that does not own its study"
        )


def assert_lost_at_most_the_forwarded_call(client: Client, kill: Kill) -> None:
    """A survivor's client of the victim's study: one call at most, then progress."""
    report = client.outcome()
    assert report.ports_at_end == report.ports_at_start, f"{client} lost its connection"
    assert len(report.failures) <= 1, f"{client}: {report.failures}"
    # That call was in flight at the kill; later ones waited for the restart instead.
    assert all(f.code == "UNAVAILABLE" and f.at < kill.serving_again
               for f in report.failures), f"{client}: {report.failures}"
    assert acknowledged_between(client, kill.serving_again, float("inf")), (
        f"{client} made no progress once the replacement served"
    )


def assert_reconnected(client: Client, kill: Kill) -> None:
    """The victim's client: its connection died with the worker; it comes back."""
    report = client.outcome()
    assert all(f.code == "UNAVAILABLE" for f in report.failures), (
        f"{client}: {report.failures}"
    )
    assert acknowledged_between(client, kill.serving_again, float("inf")), (
        f"{client} made no progress once the replacement served"
    )


def print_timeline(kill: Kill, clients: list[Client]) -> None:
    """What happened, for the reader of a failure (pytest shows it then) or of `-s`."""
    print(f"\nreplacement named after {kill.named_after:.3f} s, "
          f"listening after {kill.listening_after:.3f} s")
    for client in clients:
        failures = [(round(f.at - kill.at, 3), f.code, f.details)
                    for f in client.outcome().failures]
        print(f"on {client.worker}, study of {client.owner}: trials "
              f"{acknowledged_between(client, 0, kill.at)} before the kill, "
              f"{acknowledged_between(client, kill.at, kill.serving_again)} while down, "
              f"{acknowledged_between(client, kill.serving_again, float('inf'))} after; "
              f"failures {failures}")


# -- the test ----------------------------------------------------------------------------


@pytest.mark.parametrize("standbys", [1, 0], ids=["standby", "cold-start"])
def test_sigkill_under_load_spares_the_other_workers_clients(
    mariadb_url: str, standbys: int
) -> None:
    options = ("--standbys", str(standbys))
    with serve(mariadb_url, workers=WORKERS, options=options) as (server, port), \
            client_processes(port) as (clients, stop, start_one):
        connect_clients(start_one, clients, port, server.pid)
        # The worker with the fewest clients dies, so that the survivors have several:
        # some on studies their own worker owns, some on studies the victim owns.
        workers = children_by_name(server.pid)
        victim = min(sorted(workers), key=lambda name: sum(c.worker == name for c in clients))
        survivors = [name for name in workers if name != victim]
        hand_out_studies(clients, victim, port)
        survivors_clients = [c for c in clients if c.worker != victim]
        assert {c.owner for c in survivors_clients} >= {victim}, "no client forwards"
        assert any(c.owner != victim for c in survivors_clients), "no client is spared"

        time.sleep(WARM_UP)
        if standbys:  # the claim is about a prepared standby, not one still booting
            assert wait_until(lambda: standby_prepared(server.pid), 60), "no standby"
        kill = kill_and_wait_for_replacement(server.pid, victim, port)
        time.sleep(AFTER_RESTART)
        stop.set()
        for client in clients:
            report = receive(client, 60)
            assert isinstance(report, ClientReport), report
            client.report = report
        after = children_by_name(server.pid)
        assert all(after[name] == workers[name] for name in survivors), "a survivor died"
    print_timeline(kill, clients)

    if standbys:
        assert kill.listening_after < RESTART_DEADLINE, (
            f"{victim} served again only after {kill.listening_after} s"
        )
    assert_acknowledged_trials_stored(mariadb_url, clients)
    for client in clients:
        assert acknowledged_between(client, 0, kill.at), f"{client} was idle before the kill"
        assert all(f.at > kill.at for f in client.outcome().failures), (
            f"{client} failed before the kill: {client.outcome().failures}"
        )
        if client.worker == victim:
            assert_reconnected(client, kill)
        elif client.owner != victim:
            assert_untouched(client, kill, outage_is_long=not standbys)
        else:
            assert_lost_at_most_the_forwarded_call(client, kill)
