"""Codec micro benchmarks: Optuna's servicer path against both of our codecs.

Run:
    pytest bench/test_bench_codec.py --benchmark-only --benchmark-json bench/results/codec.json

Encode: a GetTrialsReply of 1 000 trials (10 params, 5 user attrs, 50 intermediate
values each), from FrozenTrials the way Optuna's servicer does it, and from row
values (shardproxy.rows.TrialRow) with each codec. Decode: three requests, with
Optuna's `FromString` plus reading the fields a handler needs, and with each codec.
Each case checks its output once before it is timed.
"""

from __future__ import annotations

import importlib
import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._grpc import servicer
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import FrozenTrial, TrialState

from shardproxy import _codec_py
from shardproxy.rows import COMPLETE, WIRE_DATETIME_FORMAT, TrialRow

_codec_c: ModuleType | None
try:
    _codec_c = importlib.import_module("shardproxy._codec")
except ImportError:  # a pure-Python build: the compiled cases skip
    _codec_c = None

pb: Any = api_pb2
TRIALS, PARAMS, USER_ATTRS, STEPS = 1_000, 10, 5, 50
INCLUDED_IDS = 1_000

CODECS = [
    pytest.param(_codec_py, id="py"),
    pytest.param(
        _codec_c,
        id="c",
        marks=pytest.mark.skipif(_codec_c is None, reason="the compiled codec is not built"),
    ),
]


def _distributions() -> list[BaseDistribution]:
    kinds: list[BaseDistribution] = [
        FloatDistribution(1e-5, 1e-1, log=True),
        FloatDistribution(0.0, 1.0),
        IntDistribution(1, 512),
        CategoricalDistribution(["adam", "sgd", "rmsprop"]),
    ]
    return [kinds[i % len(kinds)] for i in range(PARAMS)]


def _frozen_trial(trial_id: int, rng: random.Random) -> FrozenTrial:
    distributions = {f"param_{i}": d for i, d in enumerate(_distributions())}
    params: dict[str, Any] = {}
    for name, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            params[name] = rng.choice(distribution.choices)
        elif isinstance(distribution, IntDistribution):
            params[name] = rng.randint(distribution.low, distribution.high)
        else:
            assert isinstance(distribution, FloatDistribution)
            params[name] = rng.uniform(distribution.low, distribution.high)
    start = datetime(2025, 1, 1) + timedelta(seconds=trial_id)
    return FrozenTrial(
        number=trial_id - 1,
        state=TrialState.COMPLETE,
        value=rng.random(),
        values=None,
        datetime_start=start,
        datetime_complete=start + timedelta(seconds=5),
        params=params,
        distributions=distributions,
        user_attrs={f"attr_{i}": {"run": trial_id, "tag": f"t{i}"} for i in range(USER_ATTRS)},
        system_attrs={},
        intermediate_values={step: rng.random() for step in range(STEPS)},
        trial_id=trial_id,
    )


def _row(trial: FrozenTrial) -> TrialRow:
    """The row the store would hold for `trial`: internal values and JSON text."""
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return TrialRow(
        trial_id=trial._trial_id,
        number=trial.number,
        state=COMPLETE,
        values=list(trial.values),
        datetime_start=trial.datetime_start.strftime(WIRE_DATETIME_FORMAT),
        datetime_complete=trial.datetime_complete.strftime(WIRE_DATETIME_FORMAT),
        params=[
            (name, d.to_internal_repr(trial.params[name]), distribution_to_json(d))
            for name, d in trial.distributions.items()
        ],
        user_attrs=[(key, json.dumps(value)) for key, value in trial.user_attrs.items()],
        system_attrs=[],
        intermediate_values=list(trial.intermediate_values.items()),
    )


@pytest.fixture(scope="module")
def frozen_trials() -> list[FrozenTrial]:
    rng = random.Random(1)
    return [_frozen_trial(trial_id, rng) for trial_id in range(1, TRIALS + 1)]


@pytest.fixture(scope="module")
def rows(frozen_trials: list[FrozenTrial]) -> list[TrialRow]:
    return [_row(trial) for trial in frozen_trials]


def _optuna_get_trials_reply(trials: list[FrozenTrial]) -> bytes:
    """What Optuna's servicer does for GetTrials once it holds the trials."""
    return pb.GetTrialsReply(
        trials=[servicer._to_proto_trial(trial) for trial in trials]
    ).SerializeToString()


def _same_trials(reply: bytes, expected: bytes) -> bool:
    return pb.GetTrialsReply.FromString(reply) == pb.GetTrialsReply.FromString(expected)


# -- encode GetTrialsReply ----------------------------------------------------------


@pytest.mark.benchmark(group="encode GetTrialsReply, 1000 trials")
def test_encode_get_trials_reply_optuna(benchmark: Any, frozen_trials: list[FrozenTrial]) -> None:
    reply = benchmark(_optuna_get_trials_reply, frozen_trials)
    assert len(pb.GetTrialsReply.FromString(reply).trials) == TRIALS


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.benchmark(group="encode GetTrialsReply, 1000 trials")
def test_encode_get_trials_reply_from_rows(
    benchmark: Any, codec: ModuleType, rows: list[TrialRow], frozen_trials: list[FrozenTrial]
) -> None:
    def encode() -> bytes:
        return codec.encode_trials_reply([codec.encode_trial(row) for row in rows])

    assert _same_trials(encode(), _optuna_get_trials_reply(frozen_trials))
    benchmark(encode)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.benchmark(group="encode GetTrialsReply, 1000 trials")
def test_encode_get_trials_reply_from_cached_trials(
    benchmark: Any, codec: ModuleType, rows: list[TrialRow]
) -> None:
    # The owner's cache keeps each finished trial's bytes: a reply is one copy of them.
    cached = [codec.encode_trial(row) for row in rows]
    reply = benchmark(codec.encode_trials_reply, cached)
    assert len(reply) > sum(len(trial) for trial in cached)


# -- decode requests ------------------------------------------------------------------


def _set_trial_parameter_request() -> bytes:
    return pb.SetTrialParameterRequest(
        trial_id=123_456,
        param_name="learning_rate",
        param_value_internal=0.0031,
        distribution=distribution_to_json(FloatDistribution(1e-5, 1e-1, log=True)),
    ).SerializeToString()


def _set_trial_state_values_request() -> bytes:
    return pb.SetTrialStateValuesRequest(
        trial_id=123_456, state=pb.COMPLETE, values=[0.25]
    ).SerializeToString()


def _get_trials_request() -> bytes:
    return pb.GetTrialsRequest(
        study_id=7,
        included_trial_ids=list(range(100_000, 100_000 + INCLUDED_IDS)),
        trial_id_greater_than=200_000,
    ).SerializeToString()


REQUESTS: dict[str, tuple[Callable[[], bytes], Callable[[bytes], object], str]] = {
    "SetTrialParameterRequest": (
        _set_trial_parameter_request,
        lambda data: (
            (m := pb.SetTrialParameterRequest.FromString(data)).trial_id,
            m.param_name,
            m.param_value_internal,
            m.distribution,
        ),
        "decode_set_trial_param_request",
    ),
    "SetTrialStateValuesRequest": (
        _set_trial_state_values_request,
        lambda data: (
            (m := pb.SetTrialStateValuesRequest.FromString(data)).trial_id,
            m.state,
            list(m.values),
        ),
        "decode_set_trial_state_values_request",
    ),
    "GetTrialsRequest": (
        _get_trials_request,
        lambda data: (
            (m := pb.GetTrialsRequest.FromString(data)).study_id,
            list(m.included_trial_ids),
            m.trial_id_greater_than,
        ),
        "decode_get_trials_request",
    ),
}


@pytest.mark.parametrize("message", REQUESTS)
def test_decode_request_optuna(benchmark: Any, message: str) -> None:
    make, optuna_decode, _ = REQUESTS[message]
    benchmark.group = f"decode {message}"
    data = make()
    assert benchmark(optuna_decode, data) is not None


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("message", REQUESTS)
def test_decode_request_ours(benchmark: Any, message: str, codec: ModuleType) -> None:
    make, optuna_decode, function = REQUESTS[message]
    benchmark.group = f"decode {message}"
    data = make()
    decode = getattr(codec, function)
    assert decode(data) == optuna_decode(data)
    benchmark(decode, data)
