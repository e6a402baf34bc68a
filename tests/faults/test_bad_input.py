"""Hostile bytes on every RPC of a running multi-worker server.

`python -m shardproxy serve --workers 2` runs on a fresh database; a real
`GrpcStorageProxy` client sets up studies with trials of every state (on both
shards), and then damaged requests (tests/faults/hostile.py) go to all 19 methods
over several connections at once, in batches: first a sweep that puts every bad
value into every field of every request once, then damage drawn at random from a
seeded generator, then a few megabyte strings. For every answer:

- its status is one Optuna's client maps to what RDBStorage would raise (OK,
  INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, each only from
  the methods that can give it), never INTERNAL or UNKNOWN;
- a refused request changed nothing: every table's content is hashed before and
  after each batch. A batch of reads, or a batch whose every request was refused,
  must leave the hash as it was. Where some writes of a batch were accepted (a
  legitimate change), its refused requests are sent again on their own, between
  two more hashes, until a round is refused whole;
- after every batch of writes, every base study still reads whole (a value
  accepted once must not break the study for everyone after);
- no worker died (the same worker processes at the end), and the server still
  serves a real client.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import optuna
import pytest
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.storages import GrpcStorageProxy, RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2 as pb
from optuna.study import StudyDirection
from optuna.trial import TrialState

from shardproxy.routing import owner_of
from shardproxy.wire import METHODS
from tests.databases import fresh_database
from tests.faults.harness import (
    Outcome,
    TableChecksum,
    call_all,
    changed_tables,
    raw_channels,
    serve,
    worker_pids,
)
from tests.faults.hostile import (
    MEGABYTE_STRINGS,
    MUTATIONS,
    PARAM_DISTRIBUTIONS,
    READS,
    WRITES,
    Mutation,
    Targets,
    cases_of,
    hostile_request,
    valid_message,
)
from tests.proxies import proxy_client

WORKERS = 2
TRIAL_WRITES = tuple(m for m in WRITES if m.startswith("SetTrial"))
OK = grpc.StatusCode.OK
_REFUSALS = {
    "CreateNewStudy": ("INVALID_ARGUMENT", "ALREADY_EXISTS"),
    "DeleteStudy": ("INVALID_ARGUMENT", "NOT_FOUND"),
    "GetAllStudies": ("INVALID_ARGUMENT",),
    "CreateNewTrial": ("INVALID_ARGUMENT", "NOT_FOUND"),
}
_TRIAL_WRITE_REFUSALS = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION")


def allowed_codes(method: str) -> frozenset[grpc.StatusCode]:
    """The statuses a method may answer bad input with: what RDBStorage would raise."""
    if method in _REFUSALS:
        names = _REFUSALS[method]
    elif method.startswith("SetTrial"):
        names = _TRIAL_WRITE_REFUSALS
    else:  # the other study writes and every read but GetAllStudies
        names = ("INVALID_ARGUMENT", "NOT_FOUND")
    return frozenset({OK, *(grpc.StatusCode[name] for name in names)})


BACKENDS = ["mariadb", "postgres", "sqlite"]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@dataclass
class BaseStudy:
    study_id: int
    name: str
    finished_trial_id: int
    running_trial_id: int = 0
    waiting_trial_id: int = 0
    trials: int = 0


class Fixtures:
    """The rows valid messages name, made through a real client and renewed when used up.

    A batch may finish the running trial, start the waiting one or delete a study;
    before each batch the database is asked (directly) what is left.
    """

    def __init__(self, client: GrpcStorageProxy, url: str) -> None:
        self.client = client
        self._engine = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)
        self.studies: list[BaseStudy] = []
        self.victim_id = 0
        self.writes = 0  # how many times the fixtures wrote to the database
        self._serial = 0
        # One base study per shard at least, so that both workers own some.
        while {owner_of(s.study_id, WORKERS) for s in self.studies} != set(range(WORKERS)):
            self.studies.append(self._base_study())

    def close(self) -> None:
        self._engine.dispose()

    def _name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self._serial}"

    def _base_study(self) -> BaseStudy:
        self.writes += 1
        name = self._name("base")
        study = optuna.create_study(study_name=name, storage=self.client)
        study.set_user_attr("owner", "fuzz")
        client = self.client
        client.set_study_system_attr(study._study_id, "system", [1, 2])
        finished = 0
        for number in range(3):
            trial_id = client.create_new_trial(study._study_id)
            for param, value in (("x", 0.25), ("n", 3.0), ("c", 1.0)):
                distribution = json_to_distribution(PARAM_DISTRIBUTIONS[param])
                client.set_trial_param(trial_id, param, value, distribution)
            client.set_trial_intermediate_value(trial_id, 1, 0.5)
            client.set_trial_user_attr(trial_id, "a", {"n": number})
            client.set_trial_state_values(trial_id, TrialState.COMPLETE, [float(number)])
            finished = finished or trial_id
        return BaseStudy(study._study_id, name, finished, trials=3)

    def targets(self, rng: random.Random, own_trial: bool = False) -> Targets:
        """Targets in one base study: its running and waiting trials, renewed if used up
        (`own_trial`: a new running trial, whatever became of the last one)."""
        with self._engine.connect() as conn:
            studies = set(conn.execute(sqlalchemy.text("SELECT study_id FROM studies")).scalars())
            index = rng.randrange(len(self.studies))
            if self.studies[index].study_id not in studies:
                self.studies[index] = self._base_study()
            base = self.studies[index]
            states = dict(conn.execute(
                sqlalchemy.text("SELECT trial_id, state FROM trials WHERE trial_id IN (:r, :w)"),
                {"r": base.running_trial_id, "w": base.waiting_trial_id},
            ).all())
        if own_trial or states.get(base.running_trial_id) != "RUNNING":
            self.writes += 1
            base.running_trial_id = self.client.create_new_trial(base.study_id)
            base.trials += 1
        if states.get(base.waiting_trial_id) != "WAITING":
            self.writes += 1
            template = optuna.trial.create_trial(state=TrialState.WAITING)
            base.waiting_trial_id = self.client.create_new_trial(base.study_id, template)
            base.trials += 1
        if self.victim_id not in studies:
            self.writes += 1
            self.victim_id = self.client.create_new_study(
                [StudyDirection.MAXIMIZE], self._name("victim")
            )
            self.client.create_new_trial(self.victim_id)
        return Targets(
            study_id=base.study_id,
            study_name=base.name,
            trial_number=rng.randrange(base.trials + 2),
            running_trial_id=base.running_trial_id,
            waiting_trial_id=base.waiting_trial_id,
            finished_trial_id=base.finished_trial_id,
            victim_study_id=self.victim_id,
        )


@dataclass
class Tally:
    """What the server answered, and how much of it the checksums verified."""

    sent: int = 0
    refused: int = 0
    verified_refused: int = 0  # refused inside a round whose checksum stayed the same
    checked_batches: int = 0
    probes: int = 0  # reads of every base study after a write batch, all answered
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def record(self, requests: list[tuple[str, bytes]], outcomes: list[Outcome],
               mutation: str) -> None:
        for (method, request), outcome in zip(requests, outcomes, strict=True):
            self.codes[(method, outcome.code.name)] += 1
            if outcome.code not in allowed_codes(method) and len(self.wrong) < 20:
                self.wrong.append(f"{method} ({mutation}): {outcome.code.name} "
                                  f"{outcome.details[:200]!r} for {request[:120].hex()}")


class Fuzzer:
    def __init__(self, url: str, channels: list[grpc.Channel], client: GrpcStorageProxy,
                 seed: int) -> None:
        self.rng = random.Random(seed)
        self.channels = channels
        self.fixtures = Fixtures(client, url)
        self.checksum = TableChecksum(url)
        self.tally = Tally()
        # The last checksum, while nothing can have changed since: (fixture writes, sums).
        self._last: tuple[int, dict[str, tuple[int, str]]] | None = None

    def close(self) -> None:
        self.checksum.close()
        self.fixtures.close()

    def sweep(self) -> None:
        """Every bad value in every field of every request, once, each in the request
        that goes deepest (a trial write: to a running trial of its own)."""
        for method in METHODS:
            sample = valid_message(method, self.rng, self.fixtures.targets(self.rng))
            cases = cases_of(sample)
            for start in range(0, len(cases), 16):
                requests = []
                for _, setter in cases[start:start + 16]:
                    targets = self.fixtures.targets(self.rng, own_trial=method in TRIAL_WRITES)
                    message = valid_message(method, self.rng, targets, deep=True)
                    setter(message)
                    requests.append((method, message.SerializeToString()))
                self.send(requests, "value sweep", reads_only=method in READS)

    def run(self, messages: int, megabyte_messages: int) -> None:
        """`messages` damaged requests at random, then `megabyte_messages` huge ones."""
        rounds = [(methods, mutation) for mutation in MUTATIONS for methods in (READS, WRITES)]
        stop = self.tally.sent + messages
        while self.tally.sent < stop:
            methods, mutation = rounds[self.rng.randrange(len(rounds))]
            self.batch(methods, mutation, 64 if methods is READS else 24)
        # Last, and few: an accepted megabyte string makes every later checksum longer.
        for _ in range(0, megabyte_messages, 4):
            self.batch(READS + WRITES, MEGABYTE_STRINGS, 4)

    def batch(self, methods: tuple[str, ...], mutation: Mutation, size: int) -> None:
        targets = self.fixtures.targets(self.rng)
        requests = [hostile_request(methods, mutation, self.rng, targets) for _ in range(size)]
        self.send(requests, mutation.name, reads_only=methods is READS)

    def send(self, requests: list[tuple[str, bytes]], label: str, reads_only: bool) -> None:
        outcomes, checked = self._round(requests, label, reads_only)
        self.tally.sent += len(requests)
        refused = [r for r, o in zip(requests, outcomes, strict=True) if o.code != OK]
        self.tally.refused += len(refused)
        if not reads_only:
            self._probe(requests, outcomes, label)
        if not checked:
            # Accepted writes changed the tables: the refused ones go again, alone.
            for _ in range(3):
                if not refused:
                    break
                outcomes, checked = self._round(refused, label, False, replay=True)
                if checked:
                    break
                refused = [r for r, o in zip(refused, outcomes, strict=True) if o.code != OK]

    def _probe(self, requests: list[tuple[str, bytes]], outcomes: list[Outcome],
               label: str) -> None:
        """Every base study still reads whole after the batch, whatever it wrote."""
        probes = [("GetAllStudies", b"")] + [
            ("GetTrials", pb.GetTrialsRequest(study_id=s.study_id).SerializeToString())
            for s in self.fixtures.studies
        ]
        answers = call_all(self.channels, probes)
        self.tally.probes += len(probes)
        broken = [(m, a.code.name, a.details[:200]) for (m, _), a in zip(probes, answers,
                                                                           strict=True)
                  if a.code not in (OK, grpc.StatusCode.NOT_FOUND)]  # NOT_FOUND: deleted
        assert not broken, (
            f"after a batch of {label} writes, reads fail: {broken}; what it wrote: "
            + "; ".join(f"{m} {o.code.name} {r[:80].hex()}"
                        for (m, r), o in zip(requests, outcomes, strict=True) if o.code == OK)
        )

    def _round(self, requests: list[tuple[str, bytes]], label: str, reads_only: bool,
               replay: bool = False) -> tuple[list[Outcome], bool]:
        """Sends `requests` at once between two checksums; their outcomes, and whether
        the round was checked (reads only, or every request refused)."""
        writes = self.fixtures.writes
        if self._last is not None and self._last[0] == writes:
            before = self._last[1]
        else:
            before = self.checksum()
        outcomes = call_all(self.channels, requests)
        after = self.checksum()
        self._last = (writes, after)
        if not replay:
            self.tally.record(requests, outcomes, label)
        refused = sum(o.code != OK for o in outcomes)
        if not reads_only and refused < len(requests):
            return outcomes, False
        changed = changed_tables(before, after)
        assert not changed, (
            f"{label}: a round of {len(requests)} requests, {refused} refused and the "
            f"rest reads, changed {changed}: "
            + "; ".join(f"{m} {o.code.name} {r[:80].hex()}"
                        for (m, r), o in zip(requests, outcomes, strict=True))
        )
        self.tally.checked_batches += 1
        self.tally.verified_refused += refused
        return outcomes, True


def fuzz_server(url: str, messages: int, megabyte_messages: int, seed: int) -> None:
    with serve(url, workers=WORKERS) as (process, port):
        pids = worker_pids(process)
        assert len(pids) == WORKERS
        with proxy_client(port) as client, raw_channels(port, 4) as channels:
            fuzzer = Fuzzer(url, channels, client, seed)
            try:
                fuzzer.sweep()
                swept = fuzzer.tally.sent
                fuzzer.run(messages, megabyte_messages)
            finally:
                fuzzer.close()
        tally = fuzzer.tally
        assert not tally.wrong, "statuses no client should get:\n" + "\n".join(tally.wrong)
        assert swept >= 400 and tally.sent >= swept + messages + megabyte_messages
        methods = {method for method, _ in tally.codes}
        assert methods == set(METHODS)
        for method in methods:
            answered = {code for m, code in tally.codes if m == method}
            # Both sides reached: some damage still decodes to a request that is served.
            assert "OK" in answered and answered - {"OK"}, (method, answered)
        # Every refused request was checked against an unchanged checksum, but for a
        # few whose refusal depended on a row an accepted write of its batch changed.
        assert tally.refused > tally.sent // 3
        assert tally.verified_refused >= 0.95 * tally.refused, tally
        assert tally.probes > 0
        # No worker died or was replaced, and a real client is served as before.
        assert process.poll() is None
        assert worker_pids(process) == pids
        with proxy_client(port) as client:
            study = optuna.create_study(storage=client)
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
        direct = RDBStorage(url)
        try:
            trials = direct.get_all_trials(direct.get_study_id_from_name(study.study_name))
            assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
        finally:
            direct.engine.dispose()


@pytest.fixture(autouse=True)
def west_of_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs west of UTC, where the last wire datetime of year 9999 (local
    time) is past the end of the calendar in UTC."""
    monkeypatch.setenv("TZ", "America/New_York")


def test_hostile_requests_are_refused_cleanly(database: str) -> None:
    fuzz_server(database, messages=2000, megabyte_messages=8, seed=13)


# 100 000 messages over the three backends; MariaDB, the backend with the most ways
# to refuse a value, gets the most. The long run on SQLite is served by the
# pure-Python codec (the default run holds the compiled one to all three backends).
LONG_RUN = {"mariadb": 40_000, "postgres": 30_000, "sqlite": 30_000}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_hostile_requests_are_refused_cleanly_at_length(
    database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = request.node.callspec.params["database"]
    if backend == "sqlite":
        monkeypatch.setenv("SHARDPROXY_NO_EXTENSIONS", "1")
        version = subprocess.run([sys.executable, "-m", "shardproxy", "--version"],
                                 capture_output=True, text=True, check=True).stdout
        assert "codec pure-python" in version  # what the server will run
    fuzz_server(database, messages=LONG_RUN[backend], megabyte_messages=24, seed=1313)
