"""shardproxy.client decodes GetTrial(s) replies into the FrozenTrials Optuna's client builds."""

from __future__ import annotations

import math
from datetime import datetime

import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages._grpc import servicer
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import FrozenTrial, TrialState

from shardproxy.client.decoding import AVAILABLE, TrialDecoder

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="the compiled codec is not built")


def trials() -> list[FrozenTrial]:
    distributions = {
        "x": FloatDistribution(-10, 10),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "n": IntDistribution(1, 9, step=2),
        "kind": CategoricalDistribution(["a", None, 3, 2.5, True]),
    }
    params = {"x": -3.25, "lr": 0.001, "n": 7, "kind": None}
    started = datetime(2026, 12, 1, 3, 4, 5, 678901)
    return [
        FrozenTrial(number=0, state=TrialState.COMPLETE, value=None, values=[1.5, -math.inf],
                    datetime_start=started, datetime_complete=started, params=params,
                    distributions=distributions, user_attrs={"a": [1, {"b": None}], "é": "ü"},
                    system_attrs={"failed_trial": 3, "retry_history": [1, 2]},
                    intermediate_values={0: 1.0, 5: math.inf, 7: -2.0}, trial_id=11),
        FrozenTrial(number=1, state=TrialState.RUNNING, value=None, values=None,
                    datetime_start=started, datetime_complete=None, params={}, distributions={},
                    user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=12),
        FrozenTrial(number=2, state=TrialState.WAITING, value=None, values=None,
                    datetime_start=None, datetime_complete=None, params={"x": 0.0},
                    distributions={"x": distributions["x"]}, user_attrs={}, system_attrs={},
                    intermediate_values={}, trial_id=13),
        FrozenTrial(number=3, state=TrialState.PRUNED, value=None, values=None,
                    datetime_start=started, datetime_complete=started, params={},
                    distributions={}, user_attrs={}, system_attrs={},
                    intermediate_values={2: 0.5}, trial_id=2**40),
        FrozenTrial(number=4, state=TrialState.FAIL, value=None, values=None,
                    datetime_start=started, datetime_complete=started, params={},
                    distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
                    trial_id=15),
    ]


def test_trials_reply_decodes_to_optunas_trials() -> None:
    reply = api_pb2.GetTrialsReply(trials=[servicer._to_proto_trial(t) for t in trials()])
    theirs = [servicer._from_proto_trial(t) for t in reply.trials]
    ours = TrialDecoder().trials_reply(reply.SerializeToString())
    assert ours == theirs
    assert [t.params for t in ours] == [t.params for t in trials()]
    assert TrialDecoder().trials_reply(b"") == []


def test_trial_reply_decodes_to_optunas_trial() -> None:
    decoder = TrialDecoder()
    for trial in trials():
        reply = api_pb2.GetTrialReply(trial=servicer._to_proto_trial(trial))
        assert decoder.trial_reply(reply.SerializeToString()) == servicer._from_proto_trial(
            reply.trial
        )


def test_nan_intermediate_values_are_kept() -> None:
    trial = trials()[0]
    trial.intermediate_values = {1: math.nan}
    reply = api_pb2.GetTrialsReply(trials=[servicer._to_proto_trial(trial)])
    (ours,) = TrialDecoder().trials_reply(reply.SerializeToString())
    assert math.isnan(ours.intermediate_values[1])
