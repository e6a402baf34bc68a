from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.galera import GaleraCluster, galera_cluster, missing


@pytest.fixture(scope="session")
def galera() -> Iterator[GaleraCluster]:
    """A fresh two-node Galera cluster on 127.0.0.1, shared by this directory's tests
    (each test uses a database of its own on it); stopped at the end of the session."""
    why = missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"cannot start a Galera cluster: {why}", pytrace=False)
        pytest.skip(f"cannot start a Galera cluster: {why}")
    with galera_cluster() as cluster:
        yield cluster
