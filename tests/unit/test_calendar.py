"""Working-day arithmetic: England and Wales bank holidays, weekends and clock changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_bridge.core.calendar import WorkingDayCalendar

LONDON = ZoneInfo("Europe/London")
CALENDAR = WorkingDayCalendar()


def london(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


class TestAddWorkingDays:
    @pytest.mark.parametrize(
        ("start", "days", "expected"),
        [
            pytest.param(london(2026, 11, 28, 10), 1, london(2026, 11, 30, 10), id="sat-to-mon"),
            pytest.param(london(2026, 11, 27, 10), 1, london(2026, 11, 30, 10), id="fri-to-mon"),
            pytest.param(london(2026, 11, 23, 10), 2, london(2026, 11, 25, 10), id="mon-plus-2"),
            pytest.param(london(2026, 11, 23, 10), 5, london(2026, 11, 30, 10), id="a-week"),
            pytest.param(
                london(2026, 12, 24, 10), 1, london(2026, 12, 29, 10), id="christmas-boxing-obs"
            ),
            pytest.param(london(2026, 12, 24, 10), 2, london(2026, 12, 30, 10), id="xmas-plus-2"),
            pytest.param(london(2026, 12, 31, 10), 1, london(2027, 1, 4, 10), id="new-year-2027"),
            pytest.param(london(2027, 3, 25, 10), 1, london(2027, 3, 30, 10), id="easter-2027"),
            pytest.param(london(2026, 5, 22, 10), 1, london(2026, 5, 26, 10), id="spring-bh"),
        ],
    )
    def test_lands_on_the_nth_working_day_at_the_same_local_time(
        self, start: datetime, days: int, expected: datetime
    ) -> None:
        assert CALENDAR.add_working_days(start, days) == expected

    def test_keeps_london_wall_clock_time_when_the_clocks_go_forward(self) -> None:
        # Friday 27 March 2026 10:00 GMT; clocks go forward on Sunday 29 March.
        result = CALENDAR.add_working_days(datetime(2026, 3, 27, 10, tzinfo=UTC), 1)
        assert result == datetime(2026, 3, 30, 9, tzinfo=UTC)  # Monday 10:00 BST

    def test_keeps_london_wall_clock_time_when_the_clocks_go_back(self) -> None:
        # Friday 23 October 2026 10:00 BST; clocks go back on Sunday 25 October.
        result = CALENDAR.add_working_days(datetime(2026, 10, 23, 9, tzinfo=UTC), 1)
        assert result == datetime(2026, 10, 26, 10, tzinfo=UTC)  # Monday 10:00 GMT

    def test_counts_from_the_london_date_not_the_utc_date(self) -> None:
        # Friday 23:30 UTC in June is already Saturday 00:30 in London.
        result = CALENDAR.add_working_days(datetime(2026, 6, 5, 23, 30, tzinfo=UTC), 1)
        assert result == london(2026, 6, 8, 0, 30)

    def test_returns_a_utc_instant(self) -> None:
        result = CALENDAR.add_working_days(london(2026, 7, 1, 12), 1)
        assert result.tzinfo is UTC

    def test_zero_days_is_the_start_instant(self) -> None:
        start = london(2026, 11, 28, 10)
        assert CALENDAR.add_working_days(start, 0) == start

    def test_rejects_a_naive_start(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            CALENDAR.add_working_days(datetime(2026, 11, 23, 10), 1)

    def test_rejects_negative_days(self) -> None:
        with pytest.raises(ValueError, match="forwards"):
            CALENDAR.add_working_days(london(2026, 11, 23, 10), -1)

    def test_skips_extra_closures(self) -> None:
        calendar = WorkingDayCalendar(extra_closures=frozenset({date(2026, 11, 24)}))
        assert calendar.add_working_days(london(2026, 11, 23, 10), 1) == london(2026, 11, 25, 10)


class TestIsWorkingDay:
    @pytest.mark.parametrize(
        "day",
        [
            date(2026, 12, 25),  # Christmas Day
            date(2026, 12, 28),  # Boxing Day, observed (26th is a Saturday)
            date(2027, 1, 1),  # New Year's Day
            date(2027, 3, 26),  # Good Friday
            date(2027, 3, 29),  # Easter Monday
            date(2026, 8, 31),  # Late Summer bank holiday (England and Wales only)
            date(2026, 11, 28),  # Saturday
            date(2026, 11, 29),  # Sunday
        ],
    )
    def test_bank_holidays_and_weekends_are_not_working_days(self, day: date) -> None:
        assert not CALENDAR.is_working_day(day)

    @pytest.mark.parametrize(
        "day",
        [
            date(2026, 12, 29),
            date(2027, 1, 4),
            date(2027, 3, 30),
            date(2026, 8, 3),  # Scotland's summer bank holiday is not England's
            date(2026, 11, 30),  # St Andrew's Day is Scotland's only
        ],
    )
    def test_other_weekdays_are_working_days(self, day: date) -> None:
        assert CALENDAR.is_working_day(day)


instants = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2035, 12, 31),
    timezones=st.sampled_from([UTC, LONDON, timezone(timedelta(hours=-5))]),
    allow_imaginary=False,
)
counts = st.integers(min_value=1, max_value=30)


class TestAddWorkingDaysProperties:
    @given(start=instants, days=counts)
    def test_result_falls_on_a_working_day(self, start: datetime, days: int) -> None:
        result = CALENDAR.add_working_days(start, days)
        assert CALENDAR.is_working_day(result.astimezone(LONDON).date())

    @given(start=instants, days=counts)
    def test_result_is_strictly_later(self, start: datetime, days: int) -> None:
        assert CALENDAR.add_working_days(start, days) > start

    @given(start=instants, days=counts)
    def test_more_days_is_strictly_later(self, start: datetime, days: int) -> None:
        assert CALENDAR.add_working_days(start, days) < CALENDAR.add_working_days(start, days + 1)

    @given(start=instants, days=counts)
    def test_london_wall_clock_time_is_kept(self, start: datetime, days: int) -> None:
        result = CALENDAR.add_working_days(start, days)
        assert result.astimezone(LONDON).time() == start.astimezone(LONDON).time()

    @given(start=instants, days=counts)
    def test_skips_no_working_day(self, start: datetime, days: int) -> None:
        first = start.astimezone(LONDON).date() + timedelta(days=1)
        last = CALENDAR.add_working_days(start, days).astimezone(LONDON).date()
        between = (first + timedelta(days=n) for n in range((last - first).days + 1))
        assert sum(CALENDAR.is_working_day(d) for d in between) == days
