"""The retry policy: attempts, delays, and reading what a retry copy carries (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_bridge.core.retry import RetryPolicy, attempts_carried, is_due, parse_not_before

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = RetryPolicy(
    max_attempts=5, first_delay=timedelta(seconds=1), longest_delay=timedelta(seconds=30)
)


class TestAttempts:
    def test_a_message_gets_exactly_max_attempts(self) -> None:
        assert [POLICY.exhausted(n) for n in range(1, 7)] == [False] * 4 + [True] * 2

    def test_a_single_attempt_policy_is_exhausted_by_the_first_failure(self) -> None:
        policy = RetryPolicy(
            max_attempts=1, first_delay=timedelta(seconds=1), longest_delay=timedelta(seconds=1)
        )
        assert policy.exhausted(1)

    @pytest.mark.parametrize(
        ("max_attempts", "first", "longest"),
        [(0, 1, 1), (3, 0, 1), (3, 2, 1)],
    )
    def test_a_policy_that_makes_no_sense_is_refused(
        self, max_attempts: int, first: float, longest: float
    ) -> None:
        with pytest.raises(ValueError, match=r"must|need"):
            RetryPolicy(
                max_attempts=max_attempts,
                first_delay=timedelta(seconds=first),
                longest_delay=timedelta(seconds=longest),
            )


class TestDelays:
    def test_the_delay_doubles_from_the_first_up_to_the_longest(self) -> None:
        delays = [POLICY.delay(n).total_seconds() for n in range(1, 8)]
        assert delays == [1, 2, 4, 8, 16, 30, 30]

    def test_an_uncounted_retry_waits_the_first_delay(self) -> None:
        assert POLICY.delay(0) == timedelta(seconds=1)

    @given(st.integers(min_value=-5, max_value=10**9))
    def test_every_delay_lies_between_the_first_and_the_longest(self, attempts: int) -> None:
        assert POLICY.first_delay <= POLICY.delay(attempts) <= POLICY.longest_delay


class TestAttemptsCarried:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [(3, 3), ("4", 4), (None, 0), (-2, 0), (True, 0), ("three", 0), (2.5, 0), (10**9, 10_000)],
    )
    def test_a_header_is_read_as_a_count_or_starts_afresh(
        self, value: object, expected: int
    ) -> None:
        assert attempts_carried(value) == expected


class TestNotBefore:
    def test_a_copy_is_due_at_its_time_and_after(self) -> None:
        not_before = parse_not_before("2026-11-23T10:00:00.000Z")
        assert not_before == NOW
        assert is_due(not_before, NOW)
        assert is_due(not_before, NOW + timedelta(seconds=1))
        assert not is_due(not_before, NOW - timedelta(milliseconds=1))

    @pytest.mark.parametrize("value", [None, 12, "", "soon", "2026-11-23T10:00:00"])
    def test_a_copy_without_a_readable_zoned_time_is_due_at_once(self, value: object) -> None:
        """Never stranded in the retry queue by a header it cannot read."""
        assert parse_not_before(value) is None
        assert is_due(parse_not_before(value), NOW)
