"""The Store and Optuna's RDBStorage, fed the same random calls, answer the same.

Each seed drives one sequence of calls (including the failing ones: unknown ids,
duplicate study names, finished trials, incompatible distributions) through both,
on two fresh databases of the same backend. Every call's outcome must match (the
same value or the same exception type), and so must the final state of every
study and trial, ids and timestamps aside (a timestamp must be set on both sides
or on neither).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from shardproxy.rows import COMPLETE, FAIL, PRUNED, RUNNING, WAITING, TrialRow
from shardproxy.store import Store
from tests.databases import BACKENDS, fresh_database
from tests.store.reference import ReferenceStore

SEEDS = (11, 22, 33)
CALLS_PER_SEED = 90

# Per param name: distributions that are compatible with each other, and one that is not.
_COMPATIBLE: dict[str, list[BaseDistribution]] = {
    "x": [FloatDistribution(0.0, 1.0), FloatDistribution(-1.0, 2.0)],
    "n": [IntDistribution(0, 10), IntDistribution(0, 20, step=2)],
    "c": [CategoricalDistribution(["a", "b", "c"])],
}
_INCOMPATIBLE: dict[str, BaseDistribution] = {
    "x": FloatDistribution(0.1, 1.0, log=True),
    "n": FloatDistribution(0.0, 10.0),
    "c": CategoricalDistribution(["a", "b"]),
}
_STATES = (RUNNING, COMPLETE, PRUNED, FAIL, WAITING)
_KEYS = ("a", "b", "key with spaces")


class _Pick:
    """A choice among the ids one side has handed out, made the same on both sides."""

    def __init__(self, rng: random.Random) -> None:
        self.missing = rng.random() < 0.08  # an id that does not exist
        self.recency = rng.random() ** 3  # mostly the newest

    def of(self, ids: list[int]) -> int:
        if self.missing or not ids:
            return 999_999
        return ids[len(ids) - 1 - int(self.recency * len(ids))]

    def __repr__(self) -> str:
        return "missing" if self.missing else f"{self.recency:.2f}"


class Handles:
    """Ids on one side, in the order they were handed out."""

    def __init__(self) -> None:
        self.studies: list[int] = []
        self.trials: list[int] = []

    def study(self, pick: _Pick) -> int:
        return pick.of(self.studies)

    def trial(self, pick: _Pick) -> int:
        return pick.of(self.trials)


def _json_value(rng: random.Random) -> str:
    return json.dumps(rng.choice([1, 2.5, "text", [1, 2], {"k": None}, True, -7]))


def _param(rng: random.Random) -> tuple[str, float, str]:
    name = rng.choice(list(_COMPATIBLE))
    if rng.random() < 0.25:
        distribution = _INCOMPATIBLE[name]
    else:
        distribution = rng.choice(_COMPATIBLE[name])
    if isinstance(distribution, CategoricalDistribution):
        value = float(rng.randrange(len(distribution.choices)))
    elif isinstance(distribution, IntDistribution):
        value = float(rng.randrange(distribution.low, distribution.high + 1, distribution.step))
    else:
        assert isinstance(distribution, FloatDistribution)
        value = rng.uniform(distribution.low, distribution.high)
    return name, value, distribution_to_json(distribution)


def _template(rng: random.Random) -> TrialRow:
    state = rng.choice(_STATES)
    start = "" if state == WAITING else "2024-05-06 07:08:09.123456"
    complete = "2024-05-06 07:09:10.654321" if state in (COMPLETE, PRUNED, FAIL) else ""
    values = [rng.choice([0.5, -3.0, math.inf])] if state == COMPLETE else []
    params = {p[0]: p for p in (_param(rng) for _ in range(rng.randrange(3)))}
    return TrialRow(
        0, 0, state, values, start, complete, list(params.values()),
        [(k, _json_value(rng)) for k in rng.sample(_KEYS, rng.randrange(3))],
        [(k, _json_value(rng)) for k in rng.sample(_KEYS, rng.randrange(2))],
        [(step, rng.choice([1.0, math.nan, -math.inf])) for step in range(rng.randrange(3))],
    )


def _random_call(rng: random.Random) -> tuple[str, Callable[[Any, Handles], Any]]:
    """A named call; its body runs against one side with that side's handles."""
    s, t = _Pick(rng), _Pick(rng)
    kind = rng.choices(
        ["study", "delete", "study_attr", "trial", "param", "state", "intermediate",
         "trial_attr", "read"],
        weights=[3, 1, 2, 5, 6, 5, 3, 3, 4],
    )[0]
    if kind == "study":
        name, directions = f"study-{rng.randrange(12)}", [rng.randrange(2)] * rng.randint(1, 2)

        def create_study(side: Any, h: Handles) -> Any:
            h.studies.append(side.create_new_study(directions, name))
            return "study", len(h.studies) - 1

        return f"create_new_study({directions}, {name})", create_study
    if kind == "delete":
        return f"delete_study(#{s})", lambda side, h: side.delete_study(h.study(s))
    if kind == "study_attr":
        key, value, system = rng.choice(_KEYS), _json_value(rng), rng.random() < 0.5
        method = "set_study_system_attr" if system else "set_study_user_attr"
        return f"{method}(#{s})", lambda side, h: getattr(side, method)(h.study(s), key, value)
    if kind == "trial":
        template = _template(rng) if rng.random() < 0.5 else None

        def create_trial(side: Any, h: Handles) -> Any:
            h.trials.append(side.create_new_trial(h.study(s), template))
            return "trial", len(h.trials) - 1

        return f"create_new_trial(#{s}, {template})", create_trial
    if kind == "param":
        name, internal, distribution = _param(rng)
        return f"set_trial_param(#{t}, {name}, {distribution})", lambda side, h: (
            side.set_trial_param(h.trial(t), name, internal, distribution)
        )
    if kind == "state":
        state = rng.choice(_STATES)
        values = rng.choice([None, [1.5], [math.inf, -2.0]])
        return f"set_trial_state_values(#{t}, {state}, {values})", lambda side, h: (
            side.set_trial_state_values(h.trial(t), state, values)
        )
    if kind == "intermediate":
        step, reported = rng.randrange(3), rng.choice([0.25, math.nan, math.inf])
        return f"set_trial_intermediate_value(#{t}, {step})", lambda side, h: (
            side.set_trial_intermediate_value(h.trial(t), step, reported)
        )
    if kind == "trial_attr":
        key, value, system = rng.choice(_KEYS), _json_value(rng), rng.random() < 0.5
        method = "set_trial_system_attr" if system else "set_trial_user_attr"
        return f"{method}(#{t})", lambda side, h: getattr(side, method)(h.trial(t), key, value)
    return _random_read(rng, s, t)


def _random_read(
    rng: random.Random, s: _Pick, t: _Pick
) -> tuple[str, Callable[[Any, Handles], Any]]:
    number = rng.randrange(6)
    reads: list[tuple[str, Callable[[Any, Handles], Any]]] = [
        ("get_trial", lambda side, h: comparable_trial(side.get_trial(h.trial(t)))),
        ("get_study_directions", lambda side, h: side.get_study_directions(h.study(s))),
        ("get_study_user_attrs", lambda side, h: side.get_study_user_attrs(h.study(s))),
        ("get_study_system_attrs", lambda side, h: side.get_study_system_attrs(h.study(s))),
        ("get_study_name_from_id", lambda side, h: side.get_study_name_from_id(h.study(s))),
        ("get_trial_id_from_study_id_trial_number", lambda side, h: h.trials.index(
            side.get_trial_id_from_study_id_trial_number(h.study(s), number))),
        ("load_trials", lambda side, h: [
            comparable_trial(r) for r in side.load_trials(h.study(s), id_greater_than=-1)]),
    ]
    name, read = rng.choice(reads)
    return f"{name}(#{s}, #{t})", read


def _float(value: float) -> Any:
    return "nan" if math.isnan(value) else value


def comparable_trial(row: TrialRow) -> tuple[Any, ...]:
    """A trial without its id and timestamps (only whether each is set)."""
    return (
        row.number, row.state, [_float(v) for v in row.values],
        bool(row.datetime_start), bool(row.datetime_complete),
        row.params, sorted(row.user_attrs), sorted(row.system_attrs),
        sorted((step, _float(v)) for step, v in row.intermediate_values),
    )


def _outcome(call: Callable[[Any, Handles], Any], side: Any, handles: Handles) -> Any:
    try:
        return ("ok", call(side, handles))
    except Exception as exc:  # the exception's type is the outcome
        return ("raised", type(exc).__name__)


def _final_state(side: Any, handles: Handles) -> Any:
    studies = []
    for study in side.get_all_studies():
        trials = side.load_trials(study.study_id, id_greater_than=-1)
        studies.append((
            study.study_name, study.directions, sorted(study.user_attrs.items()),
            sorted(study.system_attrs.items()), [comparable_trial(t) for t in trials],
        ))
    return studies


class _AsTheServiceCalls:
    """The Store as the service calls it: a param write names the trial's study,
    when there is one (which lets a batch guard instead of lock)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def set_trial_param(self, trial_id: int, *args: Any) -> None:
        try:
            study_id: int | None = self._store.get_study_id_of_trial(trial_id)
        except KeyError:
            study_id = None
        self._store.set_trial_param(trial_id, *args, study_id=study_id)


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_and_rdbstorage_agree_on_random_calls(backend: str, tmp_path: Path) -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        calls = [_random_call(rng) for _ in range(CALLS_PER_SEED)]
        for side in ("store", "reference"):
            (tmp_path / f"{side}-{seed}").mkdir()
        with (
            fresh_database(backend, tmp_path / f"store-{seed}") as store_url,
            fresh_database(backend, tmp_path / f"reference-{seed}") as reference_url,
        ):
            store, reference = _AsTheServiceCalls(Store(store_url)), ReferenceStore(reference_url)
            ours, theirs = Handles(), Handles()
            try:
                for index, (description, call) in enumerate(calls):
                    expected = _outcome(call, reference, theirs)
                    actual = _outcome(call, store, ours)
                    assert actual == expected, f"seed {seed}, call {index}: {description}"
                assert _final_state(store, ours) == _final_state(reference, theirs)
            finally:
                store.close()
                reference.close()
