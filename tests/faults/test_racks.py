"""Several racks on one database: two proxies and direct RDBStorage workers, same studies.

Two `shardproxy serve` instances (two workers each) and direct `RDBStorage`
workers optimize the same studies with TPE (which reads every trial of the study
for each new one), each worker a process of its own. Afterwards:

- every client's final view of every study (`study.get_trials()` through its own
  storage) is the database's (read fresh by `RDBStorage`): numbers, states, params,
  values;
- trial numbers are unique and dense;
- every trial a client was told had finished is stored so;
- no client saw an exception;

and, while they run, a trial finished through one proxy is seen finished, with its
value, by a long-lived client of the other proxy on its very next read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tests.databases import fresh_database
from tests.faults.harness import serve
from tests.faults.racks import ClientProcesses, ClientSpec, view_of
from tests.proxies import proxy_client

STUDIES = ("racks-minimize", "racks-maximize")


@pytest.fixture(params=["mariadb", "postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def finished_across_proxies(first_port: int, second_port: int, rounds: int) -> int:
    """Trials finished through the first proxy and read next through the second.

    The reader is one long-lived client that has read the study before each trial
    is created, sees it running, and must see it finished on its next read.
    """
    seen = 0
    with proxy_client(first_port) as writer_storage, proxy_client(second_port) as reader_storage:
        writer = optuna.load_study(study_name=STUDIES[0], storage=writer_storage)
        reader = optuna.load_study(study_name=STUDIES[0], storage=reader_storage)
        reader.get_trials(deepcopy=False)
        for _ in range(rounds):
            trial = writer.ask()
            value = trial.suggest_float("x", -10, 10) ** 2
            running = {t.number: t for t in reader.get_trials(deepcopy=False)}
            assert running[trial.number].state == TrialState.RUNNING
            writer.tell(trial, value)
            after = {t.number: t for t in reader.get_trials(deepcopy=False)}
            assert after[trial.number].state == TrialState.COMPLETE
            assert after[trial.number].value == value
            seen += 1
    return seen


def run_racks(url: str, trials_per_study: int, rounds: int) -> None:
    direct = RDBStorage(url)
    try:
        for name, direction in zip(STUDIES, ("minimize", "maximize"), strict=True):
            optuna.create_study(study_name=name, storage=direct, direction=direction)
    finally:
        direct.engine.dispose()
    with serve(url, workers=2) as (_, first), serve(url, workers=2) as (_, second):
        storages = {"proxy1": f"grpc://127.0.0.1:{first}", "proxy2": f"grpc://127.0.0.1:{second}",
                    "direct": url}
        specs = [
            ClientSpec(f"{kind}-{i}", storage, STUDIES, trials_per_study, seed=17 * n + i)
            for n, (kind, storage) in enumerate(storages.items())
            for i in range(2)
        ]
        clients = ClientProcesses(specs)
        try:
            seen = finished_across_proxies(first, second, rounds)
        finally:
            reports = clients.collect()
    assert seen == rounds

    direct = RDBStorage(url)
    try:
        database = {
            name: view_of(optuna.load_study(study_name=name, storage=direct).get_trials())
            for name in STUDIES
        }
    finally:
        direct.engine.dispose()
    assert [r.errors for r in reports] == [[] for _ in reports], reports
    total = len(specs) * trials_per_study * len(STUDIES) + rounds
    assert sum(len(trials) for trials in database.values()) == total
    for name, trials in database.items():
        assert [number for number, *_ in trials] == list(range(len(trials))), name
        assert {state for _, state, *_ in trials} <= {"COMPLETE", "PRUNED", "FAIL"}, name
    stored = {(name, t[0]): t for name, trials in database.items() for t in trials}
    for report in reports:
        assert len(report.acknowledged) == trials_per_study * len(STUDIES), report.name
        for name, number, state, value in report.acknowledged:
            _, stored_state, _, values = stored[(name, number)]
            assert stored_state == state
            assert values == (None if value is None else (value,))
        for name in STUDIES:
            assert report.views[name] == database[name], (report.name, name)


def test_two_proxies_and_direct_workers_agree(database: str) -> None:
    run_racks(database, trials_per_study=8, rounds=3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_proxies_and_direct_workers_agree_at_length(database: str) -> None:
    run_racks(database, trials_per_study=40, rounds=20)
