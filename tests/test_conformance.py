"""Optuna's own storage test suite, run through the unmodified GrpcStorageProxy client."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.study import StudyDirection
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from shardproxy import codec, wire
from tests.proxies import proxy_client, running_workers


@pytest.fixture(params=[1, 4], ids=["1-worker", "4-workers"])
def storage(request: pytest.FixtureRequest, db_url: str) -> Iterator[BaseStorage]:
    with running_workers(db_url, workers=request.param) as workers:
        with proxy_client(workers[0].port) as client:
            yield client


class TestStorageThroughShardproxy(StorageTestCase):
    @pytest.mark.parametrize("param_names", [["a", "b"], ["b", "a"]])
    def test_get_all_trials_params_order(
        self, storage: BaseStorage, param_names: list[str]
    ) -> None:
        """Params travel in the order they were set.

        Replaces the inherited test, which reads the order back through the client:
        the client builds `params` from a protobuf map, and the upb runtime iterates
        a map in an order seeded per process, so no server can make that order hold
        in the client (the stock proxy cannot either). What the server controls is
        the order on the wire, checked here on the raw reply.
        """
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id = storage.create_new_trial(
            study_id, optuna.trial.create_trial(state=TrialState.RUNNING)
        )
        for name in param_names:
            storage.set_trial_param(trial_id, name, 1.0, FloatDistribution(0.0, 2.0))

        assert set(storage.get_all_trials(study_id)[0].params) == set(param_names)
        with grpc.insecure_channel(f"127.0.0.1:{storage._port}") as channel:  # type: ignore[attr-defined]
            request = api_pb2.GetTrialRequest(trial_id=trial_id).SerializeToString()
            reply = channel.unary_unary(wire.method_path("GetTrial"))(request, timeout=30)
        assert reply[0] == wire.TRIAL_REPLY_TRIAL_TAG  # then the Trial's length and bytes
        length, shift, position = 0, 0, 1
        while True:
            byte = reply[position]
            length |= (byte & 0x7F) << shift
            position, shift = position + 1, shift + 7
            if byte < 0x80:
                break
        trial_bytes = reply[position : position + length]
        assert [name for name, _, _ in codec.decode_trial(trial_bytes).params] == param_names


def test_mariadb_keeps_whole_seconds_for_rdbstorage_too(mariadb_url: str) -> None:
    """Why some inherited tests are expected to fail on MariaDB (see conftest.py)."""
    direct = optuna.storages.RDBStorage(mariadb_url)
    study_id = direct.create_new_study([StudyDirection.MINIMIZE])
    trial_id = direct.create_new_trial(study_id)
    with running_workers(mariadb_url, workers=1) as workers, proxy_client(
        workers[0].port
    ) as client:
        ours = client.create_new_trial(study_id)
        for storage, trial in ((direct, trial_id), (client, ours)):
            start = storage.get_trial(trial).datetime_start
            assert start is not None and start.microsecond == 0
    direct.engine.dispose()
