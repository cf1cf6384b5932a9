"""Working-day arithmetic for England and Wales, which Victims' Code deadlines are counted in."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays

LONDON = ZoneInfo("Europe/London")


@functools.cache
def _bank_holidays(year: int) -> frozenset[date]:
    """England's bank holidays for one year (Wales shares them; Scotland and NI do not)."""
    # "GB" is holidays.UnitedKingdom; country_holidays is the typed way to build it.
    return frozenset(holidays.country_holidays("GB", subdiv="ENG", years=year).keys())


@dataclass(frozen=True)
class WorkingDayCalendar:
    """Monday to Friday in Europe/London, except England and Wales bank holidays.

    `extra_closures` takes a one-off bank holiday proclaimed after the installed `holidays`
    release knew of it. No configuration sets it yet (docs/known-limitations.md): until one does,
    such a day is added by upgrading `holidays`.
    """

    extra_closures: frozenset[date] = field(default_factory=frozenset)

    def is_working_day(self, day: date) -> bool:
        """Whether `day` (a local date in England) counts towards a deadline."""
        return (
            day.weekday() < 5
            and day not in _bank_holidays(day.year)
            and day not in self.extra_closures
        )

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """The same London wall-clock time on the `days`-th working day after `start`'s date.

        Counting starts from the local date, so Saturday 10:00 + 1 is Monday 10:00, as is
        Friday 10:00 + 1. The result is in UTC. Target days are never Sundays, so the wall-clock
        time always exists (UK clocks change on Sundays).

        Raises ValueError for a naive `start` or negative `days`: both are programming errors.
        """
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("add_working_days needs a timezone-aware start")
        if days < 0:
            raise ValueError("add_working_days counts forwards only")
        local = start.astimezone(LONDON)
        if days == 0:
            return local.astimezone(UTC)
        day = local.date()
        remaining = days
        while remaining:
            day += timedelta(days=1)
            if self.is_working_day(day):
                remaining -= 1
        target = datetime.combine(day, local.time().replace(fold=0), tzinfo=LONDON)
        return target.astimezone(UTC)
