"""A study deleted while its trials are being written to.

Clients keep writing to a study's running trials (intermediate values, attributes,
params) while another client deletes the study. The delete must succeed (or find
the study gone) and leave nothing of the study behind; every write must be
answered as RDBStorage would (OK before the delete, NOT_FOUND after), never with
INTERNAL because a write slipped a row in between the delete's statements.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.storages._grpc.auto_generated import api_pb2 as pb
from optuna.study import StudyDirection

from tests.databases import fresh_database
from tests.faults.harness import call_all, raw_channels, serve
from tests.proxies import proxy_client

STUDIES = 12
TRIALS = 4
WRITERS = 6
DISTRIBUTION = distribution_to_json(FloatDistribution(0.0, 1.0))


@pytest.fixture(params=["mariadb", "postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def writes_to(trial_id: int, step: int) -> list[tuple[str, bytes]]:
    return [
        ("SetTrialIntermediateValue", pb.SetTrialIntermediateValueRequest(
            trial_id=trial_id, step=step, intermediate_value=0.5).SerializeToString()),
        ("SetTrialUserAttribute", pb.SetTrialUserAttributeRequest(
            trial_id=trial_id, key=f"k{step}", value="1").SerializeToString()),
        ("SetTrialParameter", pb.SetTrialParameterRequest(
            trial_id=trial_id, param_name=f"p{step}", param_value_internal=0.5,
            distribution=DISTRIBUTION).SerializeToString()),
    ]


def test_study_deleted_under_trial_writes(database: str) -> None:
    with serve(database, workers=2) as (_, port), proxy_client(port) as client, \
            raw_channels(port, WRITERS + 1) as channels:
        deletes: Counter[str] = Counter()
        writes: Counter[str] = Counter()
        for n in range(STUDIES):
            study_id = client.create_new_study([StudyDirection.MINIMIZE], f"doomed-{n}")
            trial_ids = [client.create_new_trial(study_id) for _ in range(TRIALS)]
            stop = threading.Event()

            def write(channel: grpc.Channel, trial_ids: list[int] = trial_ids,
                      stop: threading.Event = stop) -> None:
                step = 0
                while not stop.is_set() and step < 2000:
                    step += 1
                    requests = [r for t in trial_ids for r in writes_to(t, step)]
                    for outcome in call_all([channel], requests):
                        writes[outcome.code.name] += 1
                        if outcome.code.name == "NOT_FOUND":
                            return  # the study is gone

            writers = [threading.Thread(target=write, args=(c,)) for c in channels[1:]]
            for writer in writers:
                writer.start()
            try:
                while writes["OK"] < (n + 1) * 50 and any(w.is_alive() for w in writers):
                    stop.wait(0.01)  # let the writes get going
                delete = pb.DeleteStudyRequest(study_id=study_id).SerializeToString()
                outcome = call_all(channels[:1], [("DeleteStudy", delete)])[0]
            finally:
                stop.set()
                for writer in writers:
                    writer.join(timeout=120)
            deletes[outcome.code.name] += 1
            assert outcome.code == grpc.StatusCode.OK, outcome
    assert deletes == {"OK": STUDIES}
    assert set(writes) <= {"OK", "NOT_FOUND"}, writes
    assert writes["OK"] >= STUDIES * 50
    engine = sqlalchemy.create_engine(database, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            for table in ("studies", "trials", "trial_intermediate_values",
                          "trial_user_attributes", "trial_params"):
                rows = conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {table}")).scalar()
                assert rows == 0, f"{table} keeps {rows} rows of deleted studies"
    finally:
        engine.dispose()
