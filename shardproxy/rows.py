"""The plain values that travel between the store, the cache and the codec.

Nothing here imports Optuna's ORM or protobuf classes: a trial is a tuple of
Python values as the database holds them, ready to be encoded on the wire.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

# Wire enum values (proto/storage.proto) and the names Optuna's schema stores.
MINIMIZE, MAXIMIZE = 0, 1
DIRECTION_NAMES = ("MINIMIZE", "MAXIMIZE")
DIRECTION_BY_NAME = {name: value for value, name in enumerate(DIRECTION_NAMES)}

RUNNING, COMPLETE, PRUNED, FAIL, WAITING = 0, 1, 2, 3, 4
STATE_NAMES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
STATE_BY_NAME = {name: value for value, name in enumerate(STATE_NAMES)}
FINISHED_STATES = frozenset((COMPLETE, PRUNED, FAIL))

# Optuna's servicer formats datetimes with this pattern, in the server's local time.
WIRE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class TrialRow(NamedTuple):
    """One trial with its child rows, in the shape the codec encodes.

    Values are floats with INF_POS/INF_NEG already resolved to ±inf; datetimes are
    wire strings ("" when unset); attribute and distribution values are JSON text,
    exactly as stored, so nothing on the read path parses JSON.
    """

    trial_id: int
    number: int
    state: int
    values: list[float]
    datetime_start: str
    datetime_complete: str
    params: list[tuple[str, float, str]]  # (name, internal value, distribution JSON)
    user_attrs: list[tuple[str, str]]  # (key, JSON text)
    system_attrs: list[tuple[str, str]]  # (key, JSON text)
    intermediate_values: list[tuple[int, float]]  # (step, value); NaN is kept

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES


class StudyRow(NamedTuple):
    study_id: int
    study_name: str
    directions: list[int]
    user_attrs: dict[str, str]  # key -> JSON text
    system_attrs: dict[str, str]  # key -> JSON text


def empty_trial_row() -> TrialRow:
    """The values of a `Trial` message with no field set (proto3 defaults)."""
    return TrialRow(0, 0, RUNNING, [], "", "", [], [], [], [])


# The local zone's UTC offset by the UTC minute it holds for: a full read of a study
# converts two datetimes per trial, and asking the zone (`astimezone`) for each
# is most of that read's CPU. Trials of one study start within a few minutes of
# each other, so the table stays small; it is emptied when it grows anyway. Every
# change of a zone's offset since 1900 falls on a whole minute.
_offsets: dict[int, timedelta] = {}
_MAX_OFFSETS = 100_000


def _local_offset(utc_naive: datetime) -> timedelta:
    minute = utc_naive.toordinal() * 1440 + utc_naive.hour * 60 + utc_naive.minute
    offset = _offsets.get(minute)
    if offset is None:
        offset = utc_naive.replace(tzinfo=timezone.utc).astimezone().utcoffset()
        assert offset is not None  # astimezone() gives an aware datetime
        if len(_offsets) >= _MAX_OFFSETS:
            _offsets.clear()
        _offsets[minute] = offset
    return offset


def wire_datetime(utc_naive: datetime | None) -> str:
    """A naive UTC datetime as stored by Optuna, as the wire's naive local time."""
    if utc_naive is None:
        return ""
    local = utc_naive + _local_offset(utc_naive)
    if local.year < 1000:  # isoformat pads the year to four digits, strftime does not
        return local.strftime(WIRE_DATETIME_FORMAT)
    # The same text as WIRE_DATETIME_FORMAT, several times faster than strftime.
    return local.isoformat(" ", "microseconds")


def local_zone_is_utc() -> bool:
    """Whether this process's local time is UTC (at every date): its wire datetimes
    are then the stored ones. Asked again each time, as TZ may change."""
    return time.timezone == 0 and not time.daylight and tuple(time.tzname) == ("UTC", "UTC")


def wire_datetime_of_text(utc_text: str | None, zone_is_utc: bool) -> str:
    """A stored naive UTC datetime, read as text in WIRE_DATETIME_FORMAT with the
    year in four digits, as the wire's naive local time.

    Where the local zone is UTC (`zone_is_utc`, from `local_zone_is_utc`) that is the
    text itself, unless the year is below 1000 (the wire does not pad it): no
    datetime object made, which was about a third of a first read's CPU."""
    if utc_text is None:
        return ""
    if zone_is_utc and utc_text[0] != "0":
        return utc_text
    return wire_datetime(datetime.fromisoformat(utc_text))


def stored_datetime(wire: str) -> datetime | None:
    """A request's datetime as the naive UTC datetime Optuna stores.

    Optuna's clients up to 5.0 send naive local time in WIRE_DATETIME_FORMAT; from
    5.1 on, ISO 8601 in UTC with its offset ("2026-12-06T05:19:01.233919+00:00").
    Both are read, as Optuna 5.1's own servicer reads them: naive text is local
    time. Replies keep the naive local form, which clients of both kinds read.
    Raises ValueError on text that is neither.
    """
    if not wire:
        return None
    try:
        moment = datetime.fromisoformat(wire)
    except ValueError:  # a year below 1000, which strftime does not pad
        moment = datetime.strptime(wire, WIRE_DATETIME_FORMAT)
    # astimezone() reads a naive datetime as local time.
    return moment.astimezone(timezone.utc).replace(tzinfo=None)
