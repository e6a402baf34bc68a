"""Optuna's own storage test suite, run through the unmodified GrpcStorageProxy client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from optuna.storages import BaseStorage
from optuna.testing.pytest_storages import StorageTestCase

from tests.proxies import proxy_client, running_workers


@pytest.fixture(params=[1, 4], ids=["1-worker", "4-workers"])
def storage(request: pytest.FixtureRequest, db_url: str) -> Iterator[BaseStorage]:
    with running_workers(db_url, workers=request.param) as workers:
        with proxy_client(workers[0].port) as client:
            yield client


class TestStorageThroughShardproxy(StorageTestCase):
    pass
