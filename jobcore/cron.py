"""Cron expressions: parse them and compute the next fire time; never read a clock, never schedule.

`CronExpression(expr, timezone=None).next_fire(after)` is a pure function of its inputs.
Running anything at those times is the scheduler's job, not this module's.

Syntax: five fields (minute hour day-of-month month day-of-week) or six with a leading
second field. A field is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
(`a` to the field's maximum), or a comma list of those. Months take JAN-DEC and days
SUN-SAT (any case, also inside ranges); day-of-week 0 and 7 are both Sunday; `?` means
`*` in the two day fields. Macros: `@yearly` (`@annually`), `@monthly`, `@weekly`,
`@daily` (`@midnight`), `@hourly`.

Day matching follows Vixie cron: a day field counts as unrestricted when its text starts
with `*` or `?` (so `*/2` is unrestricted, but `1-31` is restricted). When both day
fields are restricted a day matches if either matches; otherwise both must match.

Time zones: matching is done on wall-clock fields in the expression's zone. A wall time
that does not exist (spring-forward gap) is skipped; a wall time that occurs twice
(fall-back) fires once, at its first occurrence (fold=0), so nothing fires during the
second pass of a repeated hour, not even `* * * * *`. A naive `after` given to an
expression with a zone is read as the system's local time (see `next_fire`). Without a
zone, a naive `after` is the system's local wall time, and the same rules apply in the
system's local zone (`TZ`).
"""

from __future__ import annotations

import calendar
import functools
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as _timezone, tzinfo
from typing import Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidCronExpression

__all__ = ["CronExpression"]

# The Gregorian calendar repeats every 400 years (146,097 days, a whole number of weeks),
# so an expression that fires at all fires within any 400 years after a moment. The longest
# real gap is 40 years: February 29 on one weekday (`0 0 29 2 */7`: 2088, then 2128).
_HORIZON_YEARS = 400

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {n.upper(): i for i, n in enumerate(calendar.month_abbr) if n}
_DAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int]
    allows_question: bool = False


_SECOND = _FieldSpec("second", 0, 59, {})
_MINUTE = _FieldSpec("minute", 0, 59, {})
_HOUR = _FieldSpec("hour", 0, 23, {})
_DOM = _FieldSpec("day-of-month", 1, 31, {}, allows_question=True)
_MONTH = _FieldSpec("month", 1, 12, _MONTH_NAMES)
_DOW = _FieldSpec("day-of-week", 0, 7, _DAY_NAMES, allows_question=True)


def _parse_value(expr: str, spec: _FieldSpec, token: str) -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
    elif token.upper() in spec.names:
        return spec.names[token.upper()]
    else:
        raise InvalidCronExpression(expr, spec.name, f"{token!r} is not a number or name")
    if not spec.low <= value <= spec.high:
        raise InvalidCronExpression(
            expr, spec.name, f"{value} is out of range {spec.low}-{spec.high}"
        )
    return value


def _parse_field(expr: str, spec: _FieldSpec, text: str) -> tuple[int, ...]:
    """The sorted values `text` allows; raises InvalidCronExpression naming the field."""
    values: set[int] = set()
    for item in text.split(","):
        base, has_step, step_text = item.partition("/")
        step = 1
        if has_step:
            if not (step_text.isascii() and step_text.isdigit()):
                raise InvalidCronExpression(
                    expr, spec.name, f"step {step_text!r} is not a positive integer"
                )
            step = int(step_text)
            if step == 0:
                raise InvalidCronExpression(expr, spec.name, "step must be at least 1")
        if base == "*" or (base == "?" and spec.allows_question):
            low, high = spec.low, spec.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _parse_value(expr, spec, first), _parse_value(expr, spec, last)
            if low > high:
                raise InvalidCronExpression(expr, spec.name, f"range {base!r} is reversed")
        elif base:
            low = _parse_value(expr, spec, base)
            high = spec.high if has_step else low
        else:
            raise InvalidCronExpression(expr, spec.name, f"empty item in {text!r}")
        values.update(range(low, high + 1, step))
    if spec is _DOW and 7 in values:
        values = (values - {7}) | {0}
    return tuple(sorted(values))


def _next_in(values: tuple[int, ...], at_least: int) -> int | None:
    i = bisect_left(values, at_least)
    return values[i] if i < len(values) else None


def _zone_key(zone: tzinfo | None) -> object:
    return getattr(zone, "key", None) or zone


def _as_utc(moment: datetime) -> datetime:
    # Aware datetimes sharing a tzinfo compare by wall time, ignoring fold: compare in UTC.
    return moment.astimezone(_timezone.utc)


def _exists(wall: datetime, zone: tzinfo) -> bool:
    moment = wall.replace(tzinfo=zone, fold=0)
    return _as_utc(moment).astimezone(zone).replace(tzinfo=None) == wall


def _offset_change(wall: datetime, zone: tzinfo) -> timedelta:
    before = wall.replace(tzinfo=zone, fold=0).utcoffset() or timedelta(0)
    after = wall.replace(tzinfo=zone, fold=1).utcoffset() or timedelta(0)
    return abs(after - before)


_EPOCH = datetime(1970, 1, 1)


class _LocalZone(tzinfo):
    """The machine's local zone (`TZ`, as `time.localtime` reads it at each call) as a
    tzinfo with its daylight saving rules, for naive wall times with no cron timezone:
    they then follow the same rules as a named zone's (a skipped wall time is skipped, a
    repeated one fires at its first pass). Offsets come from `datetime.timestamp`, which
    honours `fold` (PEP 495), so a fixed-offset `astimezone()` zone is no substitute."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        if dt is None:
            return timedelta(0)
        wall = dt.replace(tzinfo=None, microsecond=0)
        try:
            return wall - (_EPOCH + timedelta(seconds=wall.timestamp()))
        except (OverflowError, OSError):  # at the ends of datetime's range
            raise ValueError(f"{wall} is out of the range of local time") from None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None

    def fromutc(self, dt: datetime) -> datetime:
        utc = dt.replace(tzinfo=None)
        try:
            local = datetime.fromtimestamp((utc.replace(microsecond=0) - _EPOCH) // timedelta(seconds=1))
        except (OverflowError, OSError):  # as in `utcoffset`
            raise ValueError(f"{utc} UTC is out of the range of local time") from None
        return local.replace(microsecond=utc.microsecond, tzinfo=self)  # fold set by fromtimestamp

    def __repr__(self) -> str:
        return "<local time>"


_LOCAL = _LocalZone()


def _first_wall_where(
    wall: datetime, zone: tzinfo, wanted: Callable[[datetime], bool]
) -> datetime:
    """The first whole-second wall time after `wall` (at most one offset change later)
    where `wanted` holds; `wanted` is false at `wall` and flips once (a DST transition)."""
    low, high = wall, wall + _offset_change(wall, zone)
    if high <= low or not wanted(high):
        return wall + timedelta(seconds=1)
    while high - low > timedelta(seconds=1):
        mid = low + timedelta(seconds=(high - low) // timedelta(seconds=1) // 2)
        if wanted(mid):
            high = mid
        else:
            low = mid
    return high


class CronExpression:
    """A parsed cron expression, optionally bound to a time zone.

    `expression` is the original text, `timezone` a tzinfo (a `str` is looked up with
    `zoneinfo.ZoneInfo`) or None, and `has_seconds` tells the six-field form. Two
    expressions are equal when their fields allow the same values with the same day
    semantics and their time zones have the same key (so `@hourly == "0 * * * *"`).
    Raises InvalidCronExpression (a ValueError) naming the bad field, or the field
    "expression" for a wrong field count and "timezone" for an unknown zone; a non-str
    expression is a TypeError.
    """

    __slots__ = (
        "expression", "timezone", "has_seconds",
        "_seconds", "_minutes", "_hours", "_days", "_months", "_weekdays",
        "_days_restricted", "_weekdays_restricted",
    )

    def __init__(self, expr: str, timezone: str | tzinfo | None = None) -> None:
        if not isinstance(expr, str):
            raise TypeError(f"cron expression must be a str, got {type(expr).__name__}")
        self.expression = expr
        self.timezone = self._resolve_zone(expr, timezone)
        text = expr.strip()
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise InvalidCronExpression(expr, "expression", f"unknown macro {text!r}")
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) not in (5, 6):
            raise InvalidCronExpression(
                expr, "expression", f"expected 5 or 6 fields, got {len(fields)}"
            )
        self.has_seconds = len(fields) == 6
        if not self.has_seconds:
            fields.insert(0, "0")
        specs = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)
        parsed = [_parse_field(expr, spec, field) for spec, field in zip(specs, fields)]
        (self._seconds, self._minutes, self._hours,
         self._days, self._months, self._weekdays) = parsed
        # Vixie cron: a day field is unrestricted when it starts with '*' ('*/2' included).
        self._days_restricted = fields[3][0] not in "*?"
        self._weekdays_restricted = fields[5][0] not in "*?"

    @staticmethod
    def _resolve_zone(expr: str, zone: str | tzinfo | None) -> tzinfo | None:
        if zone is None or isinstance(zone, tzinfo):
            return zone
        if not isinstance(zone, str):
            raise TypeError(f"timezone must be a str, tzinfo or None, got {type(zone).__name__}")
        try:
            return ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidCronExpression(expr, "timezone", f"unknown time zone {zone!r}") from None

    def _key(self) -> tuple[object, ...]:
        return (self._seconds, self._minutes, self._hours, self._days, self._months,
                self._weekdays, self._days_restricted, self._weekdays_restricted,
                _zone_key(self.timezone))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronExpression):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.timezone is None:
            return f"CronExpression({self.expression!r})"
        zone = getattr(self.timezone, "key", None) or self.timezone
        return f"CronExpression({self.expression!r}, timezone={zone!r})"

    @property
    def _step(self) -> timedelta:
        return timedelta(seconds=1) if self.has_seconds else timedelta(minutes=1)

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after `after`, with microsecond 0.

        - naive `after`, no timezone: `after` is the system's local wall time (its `fold`
          telling which pass of a repeated hour); the result is naive local wall time,
          by the same daylight saving rules as with a timezone (see the module docstring).
        - aware `after`: the result is aware, in the expression's timezone, or in
          `after`'s tzinfo when the expression has none.
        - naive `after` with a timezone: `after` is the system's local time; the fire is
          computed in the expression's zone and returned as naive local time.

        Raises ValueError when the expression never fires (such as `0 0 30 2 *`): it is
        looked for over 400 years, a whole cycle of the calendar, and up to the year 9999.
        """
        return next(self.iter_fires(after))

    def iter_fires(self, after: datetime) -> Iterator[datetime]:
        """Yield successive fire times strictly after `after`, in the form `next_fire`
        returns. Infinite; raises ValueError when no fire is left (see `next_fire`)."""
        if not isinstance(after, datetime):
            raise TypeError(f"after must be a datetime, got {type(after).__name__}")
        return self._fires(after)

    def _fires(self, after: datetime) -> Iterator[datetime]:
        try:
            yield from self._fires_in_range(after)
        except OverflowError:  # a time past the year 9999 (or before 1) in UTC or a zone
            raise ValueError(f"{self!r} has no fire time after {after} within the range of datetime") from None

    def _fires_in_range(self, after: datetime) -> Iterator[datetime]:
        if after.tzinfo is None and self.timezone is None:
            # The machine's local wall time, by the rules a zone's follows (docs/cron.md);
            # `after`'s fold tells which pass of a repeated hour it lies in.
            moment = after.replace(tzinfo=_LOCAL)
            while True:
                moment = self._next_in_zone(moment, _LOCAL)
                yield moment.replace(tzinfo=None)
        naive_local = after.tzinfo is None
        zone = self.timezone or after.tzinfo
        assert zone is not None
        # Read as the machine's local time by the rules `timestamp()` and the no-timezone
        # path follow (PEP 495): `astimezone()` reads a wall time a spring-forward skipped
        # with the other offset, and the fire came out an hour or two before `after`.
        moment = after.replace(tzinfo=_LOCAL) if naive_local else after
        while True:
            moment = self._next_in_zone(moment, zone)
            # Naive local time via the timestamp: it sets `fold` in a repeated hour, which a
            # fixed-offset `astimezone()` zone drops (02:01 of the second pass read as the first).
            yield datetime.fromtimestamp(moment.timestamp()) if naive_local else moment

    def _after_wall(self, wall: datetime) -> datetime:
        """The first candidate wall time strictly after `wall`: the next whole unit."""
        floored = wall.replace(microsecond=0)
        if not self.has_seconds:
            floored = floored.replace(second=0)
        try:
            return floored + self._step
        except OverflowError:
            raise ValueError(f"{self!r} has no fire time after {wall}") from None

    def _next_in_zone(self, after: datetime, zone: tzinfo) -> datetime:
        after_utc = _as_utc(after)
        # Via UTC: astimezone() to the datetime's own tzinfo would keep a nonexistent wall.
        start = self._after_wall(after_utc.astimezone(zone).replace(tzinfo=None))
        first_year = start.year
        while True:
            wall = self._next_wall(start, first_year)
            if not _exists(wall, zone):
                # In a spring-forward gap: resume at the first wall time after it.
                start = _first_wall_where(wall, zone, lambda w: _exists(w, zone))
                continue
            moment = wall.replace(tzinfo=zone, fold=0)
            if _as_utc(moment) > after_utc:
                return moment
            # `after` lies in the second pass of a repeated hour and `wall` already fired
            # in the first pass: skip every repeated wall time still ahead.
            start = _first_wall_where(
                wall, zone, lambda w: _offset_change(w, zone) == timedelta(0)
            )

    def _next_wall(self, start: datetime, first_year: int) -> datetime:
        """The first matching wall time at or after `start`, by carrying field by field."""
        year, month, day = start.year, start.month, start.day
        hour, minute, second = start.hour, start.minute, start.second
        last_year = min(first_year + _HORIZON_YEARS, 9999)
        while year <= last_year:
            found = _next_in(self._months, month)
            if found is None:
                year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                continue
            if found != month:
                month, day, hour, minute, second = found, 1, 0, 0, 0
            found = self._next_day(year, month, day)
            if found is None:
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if found != day:
                day, hour, minute, second = found, 0, 0, 0
            found = _next_in(self._hours, hour)
            if found is None:
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if found != hour:
                hour, minute, second = found, 0, 0
            found = _next_in(self._minutes, minute)
            if found is None:
                hour, minute, second = hour + 1, 0, 0
                continue
            if found != minute:
                minute, second = found, 0
            found = _next_in(self._seconds, second)
            if found is None:
                minute, second = minute + 1, 0
                continue
            return datetime(year, month, day, hour, minute, found)
        raise ValueError(
            f"{self!r} does not fire after {start} (looked {_HORIZON_YEARS} years ahead,"
            " to the year 9999 at most)"
        )

    def _next_day(self, year: int, month: int, day: int) -> int | None:
        """The first matching day of the month at or after `day`, or None."""
        last = calendar.monthrange(year, month)[1]
        if day > last:
            return None
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # cron: Sunday is 0
        either = self._days_restricted and self._weekdays_restricted
        for candidate in range(day, last + 1):
            in_days = candidate in self._days
            in_weekdays = weekday in self._weekdays
            if (in_days or in_weekdays) if either else (in_days and in_weekdays):
                return candidate
            weekday = (weekday + 1) % 7
        return None


@functools.lru_cache(maxsize=1024)
def parsed(expr: str, timezone: str | None = None) -> CronExpression:
    """`CronExpression(expr, timezone)`, kept (it is never changed): parsing it again at
    each fire was about a fifth of a fire's CPU (1,000 schedules firing every second), and
    a cron job's enqueue parsed it twice (validating the `Job`, then its first fire)."""
    return CronExpression(expr, timezone)
