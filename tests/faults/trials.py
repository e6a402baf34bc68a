"""Optuna workers in processes of their own, running trials until told to stop.

Each client process opens an unmodified `GrpcStorageProxy` (one process, one
connection: gRPC shares a connection among a process's channels) and runs trials
on one study: create a trial, suggest `x`, tell `x * x`. Every step that fails is
recorded (when, which step, the gRPC status) and tried again after a pause, as an
Optuna worker that wants to finish its trial would; a trial is *acknowledged*
once its `tell` returned. The client's report says what it was told; what the
database holds afterwards is checked against it by `audit`.

A trial is created by `create_new_trial` itself, one RPC, rather than by
`study.ask()`, whose later read could fail after the trial exists: a failed
creation then means the proxy answered an error, and the proxy promises that such
an answer created nothing. Timestamps are `time.monotonic()`, system-wide on
Linux, so they compare with the test's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import queue
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import grpc
import optuna
from optuna.storages import GrpcStorageProxy, RDBStorage
from optuna.trial import TrialState

T = TypeVar("T")

RETRY_PAUSE = 0.2  # between attempts of a failed step: no spinning while the proxy waits
GIVE_UP_AFTER_STOP = 120.0  # a step still failing this long after the stop is abandoned


class Ack(NamedTuple):
    """A trial whose `tell` returned: the client was told it is stored."""

    study: str
    number: int
    x: float
    value: float
    at: float


class Failure(NamedTuple):
    at: float
    step: str  # create, read, suggest, tell
    code: str  # a gRPC status name, or the exception's type for anything else
    details: str


@dataclass
class Report:
    name: str
    study: str
    acknowledged: list[Ack] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    abandoned: int = 0  # trials left unfinished because a step never succeeded


class GaveUp(Exception):
    pass


def failure(step: str, exc: Exception) -> Failure:
    if isinstance(exc, grpc.RpcError):
        return Failure(time.monotonic(), step, exc.code().name, exc.details() or "")
    return Failure(time.monotonic(), step, type(exc).__name__, str(exc)[:300])


def run_client(
    name: str, port: int, study_name: str, stop: multiprocessing.synchronize.Event,
    reports: multiprocessing.Queue,
) -> None:
    """A client process (see the module's docstring); puts its Report on `reports`."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    report = Report(name, study_name)
    stopped_at: list[float] = []

    def persist(step: str, call: Callable[[], T]) -> T:
        while True:
            try:
                return call()
            except Exception as exc:
                report.failures.append(failure(step, exc))
                if stop.is_set():
                    stopped_at[:] = stopped_at or [time.monotonic()]
                    if time.monotonic() - stopped_at[0] > GIVE_UP_AFTER_STOP:
                        raise GaveUp() from exc
                time.sleep(RETRY_PAUSE)

    storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    try:
        study = persist("read", lambda: optuna.load_study(
            study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler()))
        while not stop.is_set():
            trial_id = persist("create", lambda: storage.create_new_trial(study._study_id))
            try:
                report.acknowledged.append(one_trial(study, trial_id, persist))
            except GaveUp:
                report.abandoned += 1
                break
    except GaveUp:
        pass
    finally:
        storage.close()
        reports.put(report)


def one_trial(study: optuna.Study, trial_id: int, persist: Callable[..., Any]) -> Ack:
    """Suggests `x` in a created trial and tells `x * x`, each step until it succeeds."""
    trial = persist("read", lambda: optuna.Trial(study, trial_id))
    x = persist("suggest", lambda: trial.suggest_float("x", -10, 10))
    persist("tell", lambda: study.tell(trial, x * x, skip_if_finished=True))
    return Ack(study.study_name, trial.number, x, x * x, time.monotonic())


@contextlib.contextmanager
def client_processes(
    port: int, studies: list[str], clients: int
) -> Iterator[Callable[[], list[Report]]]:
    """`clients` client processes on `studies` (round robin), running until collected.

    Yields `collect`: it tells every client to stop and returns their reports. On
    the way out whatever still runs is killed: no process outlives the test.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    reports: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(target=run_client, name=f"client-{i}", daemon=True,
                        args=(f"client-{i}", port, studies[i % len(studies)], stop, reports))
        for i in range(clients)
    ]
    for process in processes:
        process.start()

    def collect(timeout: float = GIVE_UP_AFTER_STOP + 60) -> list[Report]:
        stop.set()
        got: list[Report] = []
        deadline = time.monotonic() + timeout
        while len(got) < len(processes) and time.monotonic() < deadline:
            try:
                got.append(reports.get(timeout=1.0))
            except queue.Empty:
                if not any(p.is_alive() for p in processes):
                    break  # a client died without a report
        assert len(got) == len(processes), "a client process gave no report"
        return sorted(got, key=lambda r: r.name)

    try:
        yield collect
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()


def wait_for_progress(reports_so_far: Callable[[], int], timeout: float = 120) -> None:
    """Waits until `reports_so_far()` (say, trials in the database) is positive."""
    deadline = time.monotonic() + timeout
    while reports_so_far() <= 0:
        assert time.monotonic() < deadline, "the clients made no progress"
        time.sleep(0.2)


def stored_trials(url: str) -> int:
    """How many trials the database holds: a progress probe that needs no client."""
    direct = RDBStorage(url, skip_compatibility_check=True)
    try:
        return sum(len(direct.get_all_trials(s._study_id, deepcopy=False))
                   for s in direct.get_all_studies())
    finally:
        direct.engine.dispose()


@dataclass
class Audit:
    """What the database holds, against what the clients were told."""

    acknowledged: int = 0
    stored: int = 0
    # acknowledged, not stored as told: (ack, (state, value, params) stored or None)
    lost: list[tuple[Ack, tuple | None]] = field(default_factory=list)
    duplicate_numbers: dict[str, list[int]] = field(default_factory=dict)
    gaps: dict[str, list[int]] = field(default_factory=dict)
    running: list[tuple[str, int]] = field(default_factory=list)
    unacknowledged: list[tuple[str, int, str]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # by gRPC status
    abandoned: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged, "stored": self.stored, "lost": len(self.lost),
            "duplicate_numbers": sum(len(v) for v in self.duplicate_numbers.values()),
            "gaps": sum(len(v) for v in self.gaps.values()),
            "left_running": len(self.running),
            "unacknowledged_trials": len(self.unacknowledged),
            "client_exceptions": dict(self.failures), "abandoned": self.abandoned,
        }


def audit(url: str, reports: list[Report]) -> Audit:
    """Reads every study with RDBStorage and compares it with the clients' reports.

    - lost: an acknowledged trial not stored COMPLETE with its `x` and value;
    - duplicate_numbers, gaps: a study's numbers must be 0, 1, 2, ... once each;
    - running: no trial may stay RUNNING (every client finished its trials);
    - unacknowledged: a stored trial no client was told of, a write applied though
      its client was answered an error (or applied twice).
    """
    result = Audit()
    acks: dict[tuple[str, int], Ack] = {}
    for report in reports:
        result.failures.update(f.code for f in report.failures)
        result.abandoned += report.abandoned
        for ack in report.acknowledged:
            result.acknowledged += 1
            acks[(ack.study, ack.number)] = ack
    direct = RDBStorage(url, skip_compatibility_check=True)
    try:
        for summary in direct.get_all_studies():
            trials = direct.get_all_trials(summary._study_id, deepcopy=False)
            result.stored += len(trials)
            numbers = Counter(t.number for t in trials)
            repeated = sorted(n for n, count in numbers.items() if count > 1)
            if repeated:
                result.duplicate_numbers[summary.study_name] = repeated
            missing = sorted(set(range(len(numbers))) - set(numbers))
            if missing:
                result.gaps[summary.study_name] = missing
            by_number = {t.number: t for t in trials}
            for trial in trials:
                if trial.state == TrialState.RUNNING:
                    result.running.append((summary.study_name, trial.number))
                if (summary.study_name, trial.number) not in acks:
                    result.unacknowledged.append(
                        (summary.study_name, trial.number, trial.state.name))
            for (study, number), ack in acks.items():
                if study != summary.study_name:
                    continue
                stored = by_number.get(number)
                if (stored is None or stored.state != TrialState.COMPLETE
                        or stored.value != ack.value or stored.params.get("x") != ack.x):
                    found = None if stored is None else (
                        stored.state.name, stored.value, stored.params)
                    result.lost.append((ack, found))
    finally:
        direct.engine.dispose()
    return result


def assert_nothing_lost(found: Audit) -> None:
    """Every acknowledged trial stored as told, numbers dense, nothing else written."""
    assert found.acknowledged > 0, "no trial was acknowledged"
    assert found.lost == [], f"acknowledged but not stored as told: {found.lost}"
    assert found.duplicate_numbers == {}, found.duplicate_numbers
    assert found.gaps == {}, found.gaps
    assert found.running == [], f"left RUNNING: {found.running}"
    assert found.abandoned == 0, "a client gave up on a trial"
    assert found.unacknowledged == [], f"stored, never acknowledged: {found.unacknowledged}"
    assert found.stored == found.acknowledged


def acknowledged_after(reports: list[Report], moment: float) -> dict[str, int]:
    """Trials each client had acknowledged after `moment`."""
    return {r.name: sum(a.at > moment for a in r.acknowledged) for r in reports}


def first_ack_after(reports: list[Report], moment: float) -> float | None:
    """Seconds from `moment` to the first trial acknowledged after it, by any client."""
    times = [a.at for r in reports for a in r.acknowledged if a.at > moment]
    return min(times) - moment if times else None
