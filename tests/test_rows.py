"""Datetimes on the wire: the fast conversion gives the text of the plain one, in any zone."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from shardproxy import rows

# Zones with DST, with offsets and transitions off the whole hour, and none at all.
ZONES = ["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe", "Asia/Kathmandu"]


def reference(utc_naive: datetime) -> str:
    """The conversion spelled out: ask the zone for every datetime, format with strftime."""
    local = utc_naive.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
    return local.strftime(rows.WIRE_DATETIME_FORMAT)


@pytest.fixture(params=ZONES)
def zone(request: pytest.FixtureRequest) -> Iterator[str]:
    if not os.path.exists(f"/usr/share/zoneinfo/{request.param}"):
        pytest.skip(f"no tzdata for {request.param}")  # the zone, not a server: fine in CI
    saved = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    rows._offsets.clear()
    try:
        yield request.param
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
        rows._offsets.clear()


def test_every_minute_around_a_years_transitions_matches(zone: str) -> None:
    # A whole year in steps that land on every minute of the hours around each
    # transition (whichever hour the zone changes at), with odd microseconds.
    start = datetime(2026, 1, 1)
    moment, end = start, start + timedelta(days=366)
    checked = 0
    while moment < end:
        assert rows.wire_datetime(moment) == reference(moment), moment
        moment += timedelta(minutes=17, microseconds=123_457)
        checked += 1
    assert checked > 30_000


def test_edges_match(zone: str) -> None:
    for moment in (
        datetime(2026, 3, 29, 0, 59, 59, 999_999),
        datetime(2026, 3, 29, 1, 0, 0),
        datetime(1970, 1, 1),
        datetime(999, 12, 31, 23, 59, 59),  # a three-digit year: strftime does not pad it
        datetime(9999, 12, 30, 12, 0, 0, 1),
    ):
        assert rows.wire_datetime(moment) == reference(moment), moment
    assert rows.wire_datetime(None) == ""


def test_stored_text_gives_the_text_of_the_datetime_in_any_zone(zone: str) -> None:
    """Loads read the stored datetimes as text: where the zone is UTC that text is
    passed on as it is, elsewhere it is converted; either way the wire text of the
    datetime itself."""
    moments = [datetime(2026, 3, 29, 0, 59, 59, 999_999), datetime(2026, 7, 1, 12, 0),
               datetime(1970, 1, 1), datetime(999, 12, 31, 23, 59, 59)]
    for moment in moments:
        text = f"{moment.year:04d}-" + moment.strftime("%m-%d %H:%M:%S.%f")
        wire = rows.wire_datetime_of_text(text, rows.local_zone_is_utc())
        assert wire == rows.wire_datetime(moment), (zone, moment)
    assert rows.wire_datetime_of_text(None, rows.local_zone_is_utc()) == ""
    assert rows.local_zone_is_utc() == (zone == "UTC")


def test_the_text_reads_back(zone: str) -> None:
    moment = datetime(2026, 11, 30, 12, 34, 56, 789)
    assert rows.stored_datetime(rows.wire_datetime(moment)) == moment


def test_utc_iso_text_from_newer_clients_reads_as_the_same_moment(zone: str) -> None:
    """Optuna 5.1's client sends UTC with its offset; 5.0's naive local time."""
    stored = datetime(2026, 11, 30, 12, 34, 56, 789)
    aware = stored.replace(tzinfo=timezone.utc)
    assert rows.stored_datetime(aware.isoformat(timespec="microseconds")) == stored
    in_berlin = aware.astimezone(timezone(timedelta(hours=1)))
    assert rows.stored_datetime(in_berlin.isoformat()) == stored
    assert rows.stored_datetime(rows.wire_datetime(stored)) == stored


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01 00:00:00.000000", "12:00"])
def test_text_that_is_no_datetime_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        rows.stored_datetime(text)


def test_the_offset_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows, "_MAX_OFFSETS", 10)
    rows._offsets.clear()
    for minute in range(25):
        rows.wire_datetime(datetime(2026, 1, 1) + timedelta(minutes=minute))
    assert 0 < len(rows._offsets) <= 10
