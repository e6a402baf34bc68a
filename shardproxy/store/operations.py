"""The trial writes the group commit batches, as plain values.

Each operation is checked for what can be checked without the database when it is
made (JSON text, distributions, enum values), so a malformed write fails in its
caller's thread and never enters a shared transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import orjson
from optuna.distributions import BaseDistribution, json_to_distribution

from shardproxy.rows import STATE_NAMES, TrialRow, stored_datetime


def check_json(text: str) -> None:
    """Raises ValueError unless `text` is JSON as Optuna writes it (NaN allowed)."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity and huge integers, which json.dumps writes.
        try:
            json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"attribute value is not JSON: {exc}") from exc


@lru_cache(maxsize=4096)
def parse_distribution(text: str) -> BaseDistribution:
    """The distribution a JSON text describes, parsed once per distinct text."""
    try:
        return json_to_distribution(text)
    except Exception as exc:  # Optuna raises several kinds for bad input
        raise ValueError(f"invalid distribution {text[:200]!r}: {exc}") from exc


def check_state(state: int) -> None:
    if not 0 <= state < len(STATE_NAMES):
        raise ValueError(f"unknown trial state {state}")


def check_param_value(value: float) -> None:
    # A param's internal value is stored as a plain float, with no marker for the
    # values some backends cannot hold (unlike objective values): MySQL refuses NaN
    # and infinities, SQLite stores NaN as NULL, which no reader takes back. So none
    # is taken on any backend; Optuna's samplers never suggest one.
    if not math.isfinite(value):
        raise ValueError(f"a parameter's internal value must be finite, not {value}")


def check_datetime(wire: str) -> None:
    """Raises ValueError unless `wire` is a wire datetime that exists in UTC too."""
    try:
        stored_datetime(wire)
    except OverflowError as exc:  # year 9999 in local time may be year 10000 in UTC
        raise ValueError(f"datetime {wire[:40]!r} is out of range: {exc}") from exc


def check_values(values: Sequence[float]) -> None:
    # Optuna's schema stores a NaN objective value as FINITE, which no backend can
    # read back as NaN (MySQL refuses it, SQLite turns it into NULL); the client
    # never sends one (Study.tell fails such a trial instead).
    if any(math.isnan(v) for v in values):
        raise ValueError("an objective value cannot be NaN")


@dataclass
class CreateTrial:
    study_id: int
    template: TrialRow | None

    def __post_init__(self) -> None:
        if self.template is None:
            return
        check_state(self.template.state)
        check_values(self.template.values)
        check_datetime(self.template.datetime_start)
        check_datetime(self.template.datetime_complete)
        for _, value, distribution in self.template.params:
            check_param_value(value)
            parse_distribution(distribution)
        for _, json_text in (*self.template.user_attrs, *self.template.system_attrs):
            check_json(json_text)


@dataclass
class SetParam:
    trial_id: int
    name: str
    value: float
    distribution_json: str
    # The trial's study as the caller knows it (None: not known). It spares an
    # optimistic batch from reading the trial's row for the distribution check.
    study_id: int | None = None

    def __post_init__(self) -> None:
        check_param_value(self.value)
        parse_distribution(self.distribution_json)


@dataclass
class SetStateValues:
    trial_id: int
    state: int
    values: list[float] | None

    def __post_init__(self) -> None:
        check_state(self.state)
        check_values(self.values or ())


@dataclass
class SetIntermediate:
    trial_id: int
    step: int
    value: float


@dataclass
class SetTrialAttr:
    trial_id: int
    system: bool
    key: str
    value_json: str

    def __post_init__(self) -> None:
        check_json(self.value_json)


TrialWrite = SetParam | SetStateValues | SetIntermediate | SetTrialAttr
Operation = CreateTrial | TrialWrite
