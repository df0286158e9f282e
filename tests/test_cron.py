"""Tests of jobcore.cron: parsing, next-fire tables, time zones and DST, bad input, and
properties against brute-force references written here, independently of the module."""

from __future__ import annotations

import itertools
import os
import time
from datetime import date, datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from jobcore.cron import CronExpression
from jobcore.errors import InvalidCronExpression

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def _set_local_zone(name: str | None) -> None:
    if name is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = name
    time.tzset()


@pytest.fixture(autouse=True, scope="module")
def _utc_local_time() -> Iterator[None]:
    """Naive times without a timezone are the machine's local time: these tests read them
    in UTC, whatever the machine's zone (restored after)."""
    before = os.environ.get("TZ")
    _set_local_zone("UTC")
    yield
    _set_local_zone(before)


@pytest.fixture
def berlin_local_time() -> Iterator[None]:
    """The process's local zone is Europe/Berlin for the test (UTC again after)."""
    _set_local_zone("Europe/Berlin")
    try:
        yield
    finally:
        _set_local_zone("UTC")


# --- next fire tables ---------------------------------------------------------------

NAIVE_TABLE = [
    # expression, after, expected
    ("*/15 * * * *", datetime(2025, 1, 1, 10, 7), datetime(2025, 1, 1, 10, 15)),
    ("*/15 * * * *", datetime(2025, 1, 1, 10, 45), datetime(2025, 1, 1, 11, 0)),
    ("*/15 * * * *", datetime(2025, 12, 31, 23, 50), datetime(2026, 1, 1, 0, 0)),
    # Friday 10:00 -> Monday 09:00, across the weekend
    ("0 9 * * MON-FRI", datetime(2025, 6, 6, 10, 0), datetime(2025, 6, 9, 9, 0)),
    ("0 9 * * mon-fri", datetime(2025, 6, 9, 8, 59), datetime(2025, 6, 9, 9, 0)),
    ("0 0 1 JAN *", datetime(2025, 6, 1), datetime(2026, 1, 1)),
    ("0 0 1 mar,Jun *", datetime(2025, 3, 1), datetime(2025, 6, 1)),
    ("0 0 29 2 *", datetime(2025, 3, 1), datetime(2028, 2, 29)),
    ("0 0 29 2 *", datetime(2024, 1, 1), datetime(2024, 2, 29)),
    # both day fields restricted: the 13th OR a Friday
    ("0 12 13 * FRI", datetime(2025, 5, 10), datetime(2025, 5, 13, 12, 0)),  # Tue 13th
    ("0 12 13 * FRI", datetime(2025, 5, 13, 12, 0), datetime(2025, 5, 16, 12, 0)),  # Fri
    # '*/2' starts with '*', so it is unrestricted (Vixie): the 13th AND Sun/Tue/Thu/Sat
    ("0 0 13 * */2", datetime(2025, 5, 14), datetime(2025, 7, 13)),
    ("0 0 */1 * 5", datetime(2025, 6, 1), datetime(2025, 6, 6)),  # Fridays only
    ("0 0 1-31 * 5", datetime(2025, 6, 1), datetime(2025, 6, 2)),  # every day (union)
    ("0 0 ? * MON", datetime(2025, 6, 1), datetime(2025, 6, 2)),
    ("0 0 * * 7", datetime(2025, 6, 2), datetime(2025, 6, 8)),
    ("0 0 * * SUN", datetime(2025, 6, 2), datetime(2025, 6, 8)),
    ("* * * * 0", datetime(2025, 6, 7, 12, 0), datetime(2025, 6, 8, 0, 0)),
    ("* * * * 0", datetime(2025, 6, 8, 23, 59), datetime(2025, 6, 15, 0, 0)),
    ("0 0 * * 5-7", datetime(2025, 6, 2), datetime(2025, 6, 6)),
    ("@hourly", datetime(2025, 6, 1, 10, 30), datetime(2025, 6, 1, 11, 0)),
    ("@HOURLY", datetime(2025, 6, 1, 10, 0), datetime(2025, 6, 1, 11, 0)),
    ("@daily", datetime(2025, 6, 1, 10, 30), datetime(2025, 6, 2)),
    ("@midnight", datetime(2025, 6, 30, 0, 0), datetime(2025, 7, 1)),
    ("@weekly", datetime(2025, 6, 2), datetime(2025, 6, 8)),
    ("@monthly", datetime(2025, 12, 15), datetime(2026, 1, 1)),
    ("@yearly", datetime(2025, 1, 1), datetime(2026, 1, 1)),
    ("@annually", datetime(2024, 12, 31, 23, 59, 59), datetime(2025, 1, 1)),
    # six fields: a leading second
    ("*/10 * * * * *", datetime(2025, 6, 1, 10, 0, 5), datetime(2025, 6, 1, 10, 0, 10)),
    ("*/10 * * * * *", datetime(2025, 6, 1, 10, 0, 55), datetime(2025, 6, 1, 10, 1, 0)),
    ("30 */15 * * * *", datetime(2025, 6, 1, 10, 0, 30), datetime(2025, 6, 1, 10, 15, 30)),
    ("30 */15 * * * *", datetime(2025, 6, 1, 10, 59), datetime(2025, 6, 1, 11, 0, 30)),
    ("0 0 0 1 1 *", datetime(2025, 6, 1), datetime(2026, 1, 1)),
    # steps over ranges and from a start, lists
    ("0-30/10 * * * *", datetime(2025, 6, 1, 10, 25), datetime(2025, 6, 1, 10, 30)),
    ("0-30/10 * * * *", datetime(2025, 6, 1, 10, 31), datetime(2025, 6, 1, 11, 0)),
    ("5/20 * * * *", datetime(2025, 6, 1, 10, 26), datetime(2025, 6, 1, 10, 45)),
    ("5,10,55 * * * *", datetime(2025, 6, 1, 10, 10), datetime(2025, 6, 1, 10, 55)),
    ("0 8-10,14 * * *", datetime(2025, 6, 1, 10, 0), datetime(2025, 6, 1, 14, 0)),
    # end of month and year rollovers
    ("0 0 31 * *", datetime(2025, 4, 1), datetime(2025, 5, 31)),
    ("0 0 1 * *", datetime(2025, 12, 15), datetime(2026, 1, 1)),
    ("59 23 31 12 *", datetime(2025, 12, 31, 23, 59), datetime(2026, 12, 31, 23, 59)),
    ("0 0 1 * *", datetime(2025, 2, 28, 23, 0), datetime(2025, 3, 1)),
    # microseconds: strictly after, result on a whole unit
    ("* * * * *", datetime(2025, 6, 1, 10, 0, 0, 1), datetime(2025, 6, 1, 10, 1)),
    ("* * * * *", datetime(2025, 6, 1, 10, 0, 59, 999999), datetime(2025, 6, 1, 10, 1)),
    ("* * * * * *", datetime(2025, 6, 1, 10, 0, 0, 500000), datetime(2025, 6, 1, 10, 0, 1)),
]


@pytest.mark.parametrize(("expression", "after", "expected"), NAIVE_TABLE)
def test_next_fire_naive_table(expression: str, after: datetime, expected: datetime) -> None:
    result = CronExpression(expression).next_fire(after)
    assert result == expected
    assert result.tzinfo is None


def test_next_fire_is_strictly_after_a_fire_time() -> None:
    cron = CronExpression("0 9 * * *")
    assert cron.next_fire(datetime(2025, 6, 1, 9, 0)) == datetime(2025, 6, 2, 9, 0)


def test_iter_fires_yields_successive_fires() -> None:
    fires = CronExpression("0 12 13 * FRI").iter_fires(datetime(2025, 6, 1))
    assert [next(fires) for _ in range(4)] == [
        datetime(2025, 6, 6, 12), datetime(2025, 6, 13, 12),
        datetime(2025, 6, 20, 12), datetime(2025, 6, 27, 12),
    ]


# --- time zones and DST -------------------------------------------------------------

AWARE_TABLE = [
    # expression, timezone, after, expected (the time's wall fields, then its UTC offset)
    ("0 9 * * *", "Europe/Berlin", datetime(2025, 6, 1, 8, 0, tzinfo=timezone.utc),
     datetime(2025, 6, 2, 9, 0), timedelta(hours=2)),
    ("0 9 * * *", "Europe/Berlin", datetime(2025, 6, 1, 6, 59, tzinfo=timezone.utc),
     datetime(2025, 6, 1, 9, 0), timedelta(hours=2)),
    ("0 9 * * *", "America/New_York", datetime(2025, 1, 6, 9, 0, tzinfo=BERLIN),
     datetime(2025, 1, 6, 9, 0), timedelta(hours=-5)),
    # spring forward: 02:30 does not exist on 2025-03-09 in New York, on 03-30 in Berlin
    ("30 2 * * *", "America/New_York", datetime(2025, 3, 9, 0, 0, tzinfo=NY),
     datetime(2025, 3, 10, 2, 30), timedelta(hours=-4)),
    ("30 2 * * *", "Europe/Berlin", datetime(2025, 3, 29, 3, 0, tzinfo=BERLIN),
     datetime(2025, 3, 31, 2, 30), timedelta(hours=2)),
    ("*/15 * * * *", "America/New_York", datetime(2025, 3, 9, 1, 50, tzinfo=NY),
     datetime(2025, 3, 9, 3, 0), timedelta(hours=-4)),
    ("* * * * * *", "America/New_York", datetime(2025, 3, 9, 1, 59, 59, tzinfo=NY),
     datetime(2025, 3, 9, 3, 0, 0), timedelta(hours=-4)),
    # fall back: 01:30 happens twice on 2025-11-02 in New York; fire at the first (EDT)
    ("30 1 * * *", "America/New_York", datetime(2025, 11, 2, 0, 0, tzinfo=NY),
     datetime(2025, 11, 2, 1, 30), timedelta(hours=-4)),
    ("30 1 * * *", "America/New_York", datetime(2025, 11, 2, 1, 30, tzinfo=NY),
     datetime(2025, 11, 3, 1, 30), timedelta(hours=-5)),
    # `after` in the second pass (fold=1): 01:45 already fired in the first pass
    ("45 1 * * *", "America/New_York", datetime(2025, 11, 2, 1, 40, fold=1, tzinfo=NY),
     datetime(2025, 11, 3, 1, 45), timedelta(hours=-5)),
    ("45 1 * * *", "America/New_York", datetime(2025, 11, 2, 1, 40, fold=0, tzinfo=NY),
     datetime(2025, 11, 2, 1, 45), timedelta(hours=-4)),
    ("* * * * * *", "America/New_York", datetime(2025, 11, 2, 1, 40, fold=1, tzinfo=NY),
     datetime(2025, 11, 2, 2, 0, 0), timedelta(hours=-5)),
    ("30 2 * * *", "Europe/Berlin", datetime(2025, 10, 26, 2, 40, fold=1, tzinfo=BERLIN),
     datetime(2025, 10, 27, 2, 30), timedelta(hours=1)),
]


@pytest.mark.parametrize(("expression", "zone", "after", "wall", "offset"), AWARE_TABLE)
def test_next_fire_aware_table(
    expression: str, zone: str, after: datetime, wall: datetime, offset: timedelta
) -> None:
    result = CronExpression(expression, zone).next_fire(after)
    assert result.tzinfo == ZoneInfo(zone)
    assert result.replace(tzinfo=None) == wall
    assert result.utcoffset() == offset
    assert result.astimezone(timezone.utc) > after.astimezone(timezone.utc)


def test_fall_back_fires_once_and_spring_forward_skips() -> None:
    fires = CronExpression("30 1 * * *", "America/New_York").iter_fires(
        datetime(2025, 11, 1, 12, 0, tzinfo=NY)
    )
    got = [next(fires).astimezone(timezone.utc) for _ in range(3)]
    assert got == [
        datetime(2025, 11, 2, 5, 30, tzinfo=timezone.utc),
        datetime(2025, 11, 3, 6, 30, tzinfo=timezone.utc),
        datetime(2025, 11, 4, 6, 30, tzinfo=timezone.utc),
    ]
    fires = CronExpression("30 2 * * *", "America/New_York").iter_fires(
        datetime(2025, 3, 8, 12, 0, tzinfo=NY)
    )
    # 2025-03-09 02:30 does not exist in New York: that day has no fire
    assert [next(fires).replace(tzinfo=None) for _ in range(2)] == [
        datetime(2025, 3, 10, 2, 30), datetime(2025, 3, 11, 2, 30),
    ]


def test_every_twenty_minutes_through_fall_back_skips_the_second_pass() -> None:
    fires = CronExpression("*/20 * * * *", "America/New_York").iter_fires(
        datetime(2025, 11, 2, 0, 50, tzinfo=NY)
    )
    got = [next(fires) for _ in range(5)]
    assert [(f.hour, f.minute, f.utcoffset()) for f in got] == [
        (1, 0, timedelta(hours=-4)), (1, 20, timedelta(hours=-4)),
        (1, 40, timedelta(hours=-4)), (2, 0, timedelta(hours=-5)),
        (2, 20, timedelta(hours=-5)),
    ]


def test_aware_after_without_expression_zone_keeps_its_tzinfo() -> None:
    result = CronExpression("0 9 * * *").next_fire(datetime(2025, 6, 1, 10, 0, tzinfo=NY))
    assert result == datetime(2025, 6, 2, 9, 0, tzinfo=NY)
    assert result.tzinfo is NY
    fixed = timezone(timedelta(hours=5, minutes=30))
    result = CronExpression("0 9 * * *").next_fire(datetime(2025, 6, 1, 8, 0, tzinfo=fixed))
    assert result == datetime(2025, 6, 1, 9, 0, tzinfo=fixed)
    assert result.tzinfo is fixed


def test_timezone_given_as_tzinfo_or_name() -> None:
    after = datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc)
    by_name = CronExpression("0 12 * * *", "UTC").next_fire(after)
    by_object = CronExpression("0 12 * * *", timezone.utc).next_fire(after)
    assert by_name == by_object == datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    assert by_object.tzinfo is timezone.utc


def test_naive_after_with_timezone_is_local_time_in_and_out() -> None:
    cron = CronExpression("0 9 * * *", "Asia/Tokyo")
    after = datetime(2025, 6, 1, 12, 0)
    result = cron.next_fire(after)
    expected = cron.next_fire(after.astimezone()).astimezone().replace(tzinfo=None)
    assert result.tzinfo is None
    assert result == expected
    assert result.astimezone(ZoneInfo("Asia/Tokyo")).hour == 9
    assert result.astimezone() > after.astimezone()


def test_naive_after_without_timezone_is_wall_time() -> None:
    result = CronExpression("30 2 * * *").next_fire(datetime(2025, 3, 9, 0, 0))
    assert result == datetime(2025, 3, 9, 2, 30)  # local time is UTC here: no DST gap
    assert result.tzinfo is None


def test_naive_local_time_skips_the_wall_times_the_clocks_skip(berlin_local_time: None) -> None:
    # Given no cron timezone and a machine in Europe/Berlin, where 02:00-03:00 does not
    # exist on 2026-03-29: those fires are skipped, as with cron_timezone (docs/cron.md)
    assert CronExpression("30 2 * * *").next_fire(datetime(2026, 3, 29, 1, 0)) == datetime(2026, 3, 30, 2, 30)
    assert CronExpression("*/30 * * * *").next_fire(datetime(2026, 3, 29, 1, 45)) == datetime(2026, 3, 29, 3, 0)


def test_naive_local_time_fires_a_repeated_wall_time_once(berlin_local_time: None) -> None:
    # Given 02:00-03:00 twice on 2026-10-25 in Berlin: each wall time fires at its first
    # pass; from the second pass (fold=1, as datetime.fromtimestamp gives) the hour's
    # fires are behind, and the next is 03:00
    every_half_hour = CronExpression("*/30 * * * *")
    fires = every_half_hour.iter_fires(datetime(2026, 10, 25, 1, 0))
    assert [next(fires) for _ in range(4)] == [
        datetime(2026, 10, 25, 1, 30), datetime(2026, 10, 25, 2, 0),
        datetime(2026, 10, 25, 2, 30), datetime(2026, 10, 25, 3, 0)]
    second_pass = datetime(2026, 10, 25, 2, 10, fold=1)
    assert every_half_hour.next_fire(second_pass) == datetime(2026, 10, 25, 3, 0)
    assert CronExpression("40 2 * * *").next_fire(second_pass) == datetime(2026, 10, 26, 2, 40)
    assert CronExpression("40 2 * * *").next_fire(datetime(2026, 10, 25, 2, 10)) == datetime(2026, 10, 25, 2, 40)


# --- never firing, equality, bad input ---------------------------------------------

@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 31 2 ?"])
def test_expression_that_never_fires_raises_value_error(expression: str) -> None:
    cron = CronExpression(expression)
    with pytest.raises(ValueError, match="does not fire"):
        cron.next_fire(datetime(2025, 3, 1))


def test_fires_forty_years_apart_are_found_and_the_limit_is_the_year_9999() -> None:
    # February 29 on a Sunday: 2004, 2032, 2060, 2088, then 2128 (2100 is no leap year).
    leap_sunday = CronExpression("0 0 29 2 */7")
    assert leap_sunday.next_fire(datetime(2088, 3, 1)) == datetime(2128, 2, 29)
    assert list(itertools.islice(leap_sunday.iter_fires(datetime(2080, 1, 1)), 3)) == [
        datetime(2088, 2, 29), datetime(2128, 2, 29), datetime(2156, 2, 29)]
    with pytest.raises(ValueError, match="does not fire"):
        CronExpression("0 0 1 1 *").next_fire(datetime(9999, 6, 1))


@pytest.mark.parametrize("expression, zone, after", [
    # 9999-12-31 12:00 UTC is past the year 9999 on Kiritimati (UTC+14)
    ("* * * * *", "Pacific/Kiritimati", datetime(9999, 12, 31, 12, tzinfo=UTC)),
    # the fire's wall time in New York is past the year 9999 in UTC
    ("59 23 31 12 *", "America/New_York", datetime(9999, 12, 30, tzinfo=UTC)),
    ("* * * * *", "Pacific/Kiritimati", datetime(9999, 12, 31, 23, 59, tzinfo=ZoneInfo("America/New_York"))),
    # before the year 1 in UTC
    ("* * * * *", "UTC", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))),
])
def test_the_ends_of_time_are_a_value_error(expression: str, zone: str, after: datetime) -> None:
    # (each was an OverflowError)
    with pytest.raises(ValueError, match="no fire time after"):
        CronExpression(expression, zone).next_fire(after)


@pytest.mark.parametrize("fold", [0, 1])
def test_a_naive_wall_time_a_spring_forward_skipped_is_read_alike_with_and_without_a_timezone(
        fold: int) -> None:
    # 02:30 on 8 March 2026 does not exist in New York. `timestamp()` (and the path with
    # no timezone) reads it with the offset before the gap (fold 0: 07:30 UTC) or after it
    # (fold 1: 06:30 UTC); `astimezone()` the other way round, and with a timezone the
    # fire came out as 01:45, before `after`.
    _set_local_zone("America/New_York")
    try:
        after = datetime(2026, 3, 8, 2, 30, fold=fold)
        instant = datetime.fromtimestamp(after.timestamp(), UTC)
        local = CronExpression("*/15 * * * *").next_fire(after)
        for zone in ("America/New_York", "UTC"):
            fire = CronExpression("*/15 * * * *", zone).next_fire(after)
            assert fire == local and fire.fold == local.fold, zone
        assert datetime.fromtimestamp(local.timestamp(), UTC) == instant.replace(minute=45)
    finally:
        _set_local_zone("UTC")


def test_attributes_equality_hash_and_repr() -> None:
    cron = CronExpression("*/5 * * * *", "Europe/Berlin")
    assert cron.expression == "*/5 * * * *"
    assert cron.timezone == BERLIN
    assert not cron.has_seconds and CronExpression("* * * * * *").has_seconds
    assert repr(cron) == "CronExpression('*/5 * * * *', timezone='Europe/Berlin')"
    assert repr(CronExpression("@daily")) == "CronExpression('@daily')"
    assert CronExpression("@hourly") == CronExpression("0  *  * * *")
    assert hash(CronExpression("@hourly")) == hash(CronExpression("0 * * * *"))
    assert CronExpression("0 0 * * 7") == CronExpression("0 0 * * SUN")
    assert CronExpression("0 * * * *", "UTC") == CronExpression("0 * * * *", UTC)
    assert CronExpression("0 * * * *", "UTC") != CronExpression("0 * * * *")
    # same day values, different day semantics
    assert CronExpression("0 0 */1 * 5") != CronExpression("0 0 1-31 * 5")
    assert len({CronExpression("@daily"), CronExpression("@midnight")}) == 1


INVALID = [
    ("", "expression"),
    ("   ", "expression"),
    ("* * * *", "expression"),
    ("* * * * * * *", "expression"),
    ("@reboot", "expression"),
    ("60 * * * *", "minute"),
    ("-1 * * * *", "minute"),
    ("5-2 * * * *", "minute"),
    ("*/0 * * * *", "minute"),
    ("*/-1 * * * *", "minute"),
    ("1-5/0 * * * *", "minute"),
    ("abc * * * *", "minute"),
    ("1.5 * * * *", "minute"),
    ("1,,2 * * * *", "minute"),
    ("? * * * *", "minute"),
    ("MON * * * *", "minute"),
    ("* 24 * * *", "hour"),
    ("* 23-1 * * *", "hour"),
    ("* * 0 * *", "day-of-month"),
    ("* * 32 * *", "day-of-month"),
    ("* * 1-32 * *", "day-of-month"),
    ("* * * 0 *", "month"),
    ("* * * 13 *", "month"),
    ("* * * FOO *", "month"),
    ("* * * JAN-FEB-MAR *", "month"),
    ("* * * ? *", "month"),
    ("* * * * 8", "day-of-week"),
    ("* * * * MON-FOO", "day-of-week"),
    ("* * * * FRI-MON", "day-of-week"),
    ("* * * * */x", "day-of-week"),
    ("60 * * * * *", "second"),
    ("*/0 * * * * *", "second"),
    ("0 0 0 * * 8", "day-of-week"),
]


@pytest.mark.parametrize(("expression", "field"), INVALID)
def test_invalid_expression_names_the_field(expression: str, field: str) -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        CronExpression(expression)
    assert caught.value.field == field
    assert f"{field} field" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("expression", [None, 5, b"* * * * *", ["*"] * 5])
def test_non_str_expression_is_a_type_error(expression: object) -> None:
    with pytest.raises(TypeError):
        CronExpression(expression)  # type: ignore[arg-type]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_unknown_timezone_is_a_value_error(zone: str) -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        CronExpression("* * * * *", zone)
    assert caught.value.field == "timezone"


def test_bad_timezone_and_after_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        CronExpression("* * * * *", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CronExpression("* * * * *").next_fire(date(2025, 1, 1))  # type: ignore[arg-type]


# --- properties against brute force -------------------------------------------------

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@st.composite
def _piece(draw: st.DrawFn, low: int, high: int, names: list[str] | None) -> tuple[str, set[int]]:
    def show(value: int) -> str:
        index = value - low
        if names and index < len(names) and draw(st.booleans()):
            return draw(st.sampled_from([names[index], names[index].lower()]))
        return str(value)

    kind = draw(st.sampled_from(["star", "one", "range", "star-step", "range-step", "from-step"]))
    if kind == "star":
        return "*", set(range(low, high + 1))
    step = draw(st.integers(1, high - low + 2)) if kind.endswith("step") else 1
    if kind == "star-step":
        return f"*/{step}", set(range(low, high + 1, step))
    a = draw(st.integers(low, high))
    if kind == "one":
        return show(a), {a}
    if kind == "from-step":
        return f"{show(a)}/{step}", set(range(a, high + 1, step))
    b = draw(st.integers(a, high))
    suffix = f"/{step}" if kind == "range-step" else ""
    return f"{show(a)}-{show(b)}{suffix}", set(range(a, b + 1, step))


@st.composite
def _field(
    draw: st.DrawFn, low: int, high: int, names: list[str] | None = None
) -> tuple[str, set[int]]:
    pieces = draw(st.lists(_piece(low, high, names), min_size=1, max_size=2))
    return ",".join(text for text, _ in pieces), set().union(*(values for _, values in pieces))


@st.composite
def _expression(draw: st.DrawFn, seconds: bool) -> tuple[str, dict[str, object]]:
    """An expression and the reference's own reading of it."""
    fields = {
        "second": draw(_field(0, 59)) if seconds else ("", {0}),
        "minute": draw(_field(0, 59)),
        "hour": draw(_field(0, 23)),
        "dom": draw(st.one_of(_field(1, 31), st.just(("?", set(range(1, 32)))))),
        "month": draw(_field(1, 12, MONTHS)),
        "dow": draw(st.one_of(_field(0, 7, DAYS), st.just(("?", set(range(0, 8)))))),
    }
    text = " ".join(t for t, _ in fields.values() if t)
    spec = {name: values for name, (_, values) in fields.items()}
    spec["dow"] = {v % 7 for v in spec["dow"]}  # type: ignore[attr-defined]
    spec["dom_star"] = fields["dom"][0][0] in "*?"
    spec["dow_star"] = fields["dow"][0][0] in "*?"
    return text, spec


def _day_matches(spec: dict, day: date) -> bool:
    if day.month not in spec["month"]:
        return False
    in_dom = day.day in spec["dom"]
    in_dow = day.isoweekday() % 7 in spec["dow"]
    if spec["dom_star"] or spec["dow_star"]:
        return in_dom and in_dow
    return in_dom or in_dow


def _reference_next(spec: dict, after: datetime, horizon_days: int) -> datetime | None:
    """Brute force: every day in turn, every (hour, minute, second) of a matching day."""
    day = after.date()
    for _ in range(horizon_days):
        if _day_matches(spec, day):
            for h in sorted(spec["hour"]):
                for m in sorted(spec["minute"]):
                    for s in sorted(spec["second"]):
                        later = (h, m, s) > (after.hour, after.minute, after.second)
                        if day > after.date() or later:
                            return datetime(day.year, day.month, day.day, h, m, s)
        day += timedelta(days=1)
    return None


HORIZON_DAYS = 6 * 366
START_TIMES = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31))


def _check_against_reference(text: str, spec: dict, after: datetime) -> None:
    cron = CronExpression(text)
    expected = _reference_next(spec, after, HORIZON_DAYS)
    if expected is not None:
        assert cron.next_fire(after) == expected
        return
    try:
        result = cron.next_fire(after)
    except ValueError:
        return
    horizon_end = datetime.combine(after.date() + timedelta(days=HORIZON_DAYS), datetime.min.time())
    assert result >= horizon_end


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(_expression(seconds=False), START_TIMES)
def test_five_fields_match_brute_force(expression: tuple[str, dict], after: datetime) -> None:
    _check_against_reference(*expression, after)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_expression(seconds=True), START_TIMES)
def test_six_fields_match_brute_force(expression: tuple[str, dict], after: datetime) -> None:
    _check_against_reference(*expression, after)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(_expression(seconds=False), START_TIMES)
def test_utc_aware_matches_naive_brute_force(expression: tuple[str, dict], after: datetime) -> None:
    text, spec = expression
    expected = _reference_next(spec, after, HORIZON_DAYS)
    if expected is None:
        return
    result = CronExpression(text, "UTC").next_fire(after.replace(tzinfo=UTC))
    assert result == expected.replace(tzinfo=UTC)
    result = CronExpression(text).next_fire(after.replace(tzinfo=timezone.utc))
    assert result == expected.replace(tzinfo=timezone.utc)
    assert result.tzinfo is timezone.utc


# Near DST transitions: step through real instants minute by minute. A minute fires when
# its wall time matches and it is that wall time's first occurrence (fold=0).
TRANSITIONS = [
    ("America/New_York", datetime(2025, 3, 9, 2, 0)),
    ("America/New_York", datetime(2025, 11, 2, 1, 0)),
    ("Europe/Berlin", datetime(2025, 3, 30, 2, 0)),
    ("Europe/Berlin", datetime(2025, 10, 26, 2, 0)),
    ("Australia/Lord_Howe", datetime(2025, 4, 6, 1, 30)),  # a half-hour shift
    ("Australia/Lord_Howe", datetime(2025, 10, 5, 2, 0)),
]


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(TRANSITIONS),
    st.integers(-3 * 3600, 3 * 3600),
    st.booleans(),
    _field(0, 59),
    _field(0, 23),
)
def test_dst_matches_instant_by_instant_brute_force(
    transition: tuple[str, datetime], offset: int, fold: bool,
    minutes: tuple[str, set[int]], hours: tuple[str, set[int]],
) -> None:
    zone_name, wall = transition
    zone = ZoneInfo(zone_name)
    after = (wall + timedelta(seconds=offset)).replace(tzinfo=zone, fold=int(fold))
    after_utc = after.astimezone(timezone.utc)
    result = CronExpression(f"{minutes[0]} {hours[0]} * * *", zone_name).next_fire(after)

    instant = after_utc.replace(second=0, microsecond=0)
    for _ in range(50 * 60):
        instant += timedelta(minutes=1)
        local = instant.astimezone(zone)
        if local.fold == 0 and local.minute in minutes[1] and local.hour in hours[1]:
            break
    else:
        raise AssertionError("no fire within 50 hours")
    assert result.astimezone(timezone.utc) == instant
    assert result.replace(tzinfo=None) == local.replace(tzinfo=None)
    assert result.utcoffset() == local.utcoffset()


@pytest.mark.parametrize(
    "after",
    [
        datetime(2025, 11, 2, 1, 0, 1, fold=1, tzinfo=NY),  # start of the repeated hour
        datetime(2025, 3, 9, 1, 59, 59, tzinfo=NY),  # just before the skipped hour
    ],
)
def test_dst_hours_are_jumped_not_walked_second_by_second(
    after: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an every-second schedule, when `after` sits at a DST transition, then the
    # search jumps over the skipped or repeated hour in a few steps, not 3,600.
    calls = []
    search = CronExpression._next_wall

    def counting(self: CronExpression, start: datetime, first_year: int) -> datetime:
        calls.append(start)
        return search(self, start, first_year)

    monkeypatch.setattr(CronExpression, "_next_wall", counting)
    result = CronExpression("* * * * * *", "America/New_York").next_fire(after)
    assert result.replace(tzinfo=None) in (datetime(2025, 11, 2, 2, 0), datetime(2025, 3, 9, 3, 0))
    assert len(calls) <= 3


def test_a_naive_fire_in_the_second_pass_of_a_repeated_local_hour_keeps_its_fold(berlin_local_time: None) -> None:
    # given an expression in New York, asked with a naive Berlin time in the first pass of
    # Berlin's repeated hour (02:41 CEST on 2021-10-31)
    expression = CronExpression("1,16 * * * *", "America/New_York")
    after = datetime(2021, 10, 31, 2, 41)
    # then its next fire (21:01 in New York) is Berlin's 02:01 of the second pass, fold=1:
    # it was returned with fold=0, naming an instant an hour earlier, before `after`
    fire = expression.next_fire(after)
    assert (fire, fire.fold) == (datetime(2021, 10, 31, 2, 1), 1)
    assert fire.timestamp() == datetime(2021, 10, 31, 1, 1, tzinfo=UTC).timestamp() > after.timestamp()
