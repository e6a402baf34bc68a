"""After a failed COMMIT, the witness counts a created trial only if it is the batch's own.

On a Galera cluster an id that a transaction took before it failed certification
can be handed out again to another trial once the membership changes (each node's
auto_increment_offset is reassigned). The witness therefore checks the study and
number the batch gave the trial, not only that a row with its id exists.
"""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy

from shardproxy.store.witness import Witness, witness_present


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_a_trial_of_the_same_id_but_another_number_or_study_is_not_the_batchs(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    storage.create_new_trial(study_id)
    trial_id = storage.create_new_trial(study_id)  # number 1
    storage.engine.dispose()
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            assert witness_present(conn, Witness([trial_id], {}, (study_id, 1)))
            assert witness_present(conn, Witness([trial_id], {}))  # nothing more known
            assert not witness_present(conn, Witness([trial_id], {}, (study_id, 0)))
            assert not witness_present(conn, Witness([trial_id], {}, (study_id + 1, 1)))
            assert not witness_present(conn, Witness([trial_id + 100], {}, (study_id, 1)))
    finally:
        engine.dispose()
