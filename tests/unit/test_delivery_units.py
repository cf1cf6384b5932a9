"""The delivery engine's small parts, alone: backoff, circuit breaker, HTTP answers, AMQP errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_bridge.delivery import (
    AmqpRoute,
    CircuitBreaker,
    CircuitState,
    DeliveryPolicy,
    DeliveryRejectedError,
    TransientDeliveryError,
    park_delay,
)
from referral_bridge.delivery.https import classify, parse_retry_after
from referral_bridge.delivery.results import PassReport, Result
from referral_bridge.delivery.routes import TASKS_KEY, receiver_key
from referral_bridge.ledger import OutboxMessage
from tests.fakes import FakeClock, RecordingPublisher

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


class TestParkDelay:
    def test_the_first_parking_waits_the_initial_delay(self) -> None:
        assert park_delay(1, initial=30, maximum=3600) == 30

    def test_each_parking_doubles_the_wait(self) -> None:
        assert [park_delay(n, initial=30, maximum=3600) for n in (1, 2, 3, 4)] == [
            30,
            60,
            120,
            240,
        ]

    def test_the_wait_never_exceeds_the_maximum(self) -> None:
        assert park_delay(40, initial=30, maximum=3600, jitter=0.5, rand=lambda: 1.0) == 3600

    def test_jitter_adds_at_most_its_fraction(self) -> None:
        assert park_delay(
            1, initial=100, maximum=3600, jitter=0.1, rand=lambda: 1.0
        ) == pytest.approx(110)


class TestCircuitBreaker:
    def make(self, clock: FakeClock) -> CircuitBreaker:
        return CircuitBreaker(failures=3, open_for=timedelta(seconds=60), clock=clock.now)

    def test_it_opens_after_the_configured_consecutive_failures(self) -> None:
        breaker = self.make(FakeClock(NOW))

        opened = [breaker.record_failure() for _ in range(3)]

        assert opened == [False, False, True]
        assert breaker.state is CircuitState.OPEN
        assert not breaker.allows()

    def test_a_success_resets_the_count(self) -> None:
        breaker = self.make(FakeClock(NOW))
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()

        assert not breaker.record_failure()

    def test_it_half_opens_for_a_probe_after_the_open_period(self) -> None:
        clock = FakeClock(NOW)
        breaker = self.make(clock)
        for _ in range(3):
            breaker.record_failure()

        clock.advance(timedelta(seconds=60))

        assert breaker.state is CircuitState.HALF_OPEN
        assert breaker.allows()

    def test_a_failed_probe_opens_it_for_another_full_period(self) -> None:
        clock = FakeClock(NOW)
        breaker = self.make(clock)
        for _ in range(3):
            breaker.record_failure()
        clock.advance(timedelta(seconds=61))

        assert breaker.record_failure()
        clock.advance(timedelta(seconds=59))
        assert breaker.state is CircuitState.OPEN

    def test_a_successful_probe_closes_it(self) -> None:
        clock = FakeClock(NOW)
        breaker = self.make(clock)
        for _ in range(3):
            breaker.record_failure()
        clock.advance(timedelta(seconds=61))

        assert breaker.record_success()
        assert breaker.state is CircuitState.CLOSED


class TestCircuitOpenPeriods:
    """Issue 9: a provider that blinks is probed again within seconds; one that stays down is
    left alone for longer and longer, up to the configured maximum."""

    def make(self, clock: FakeClock) -> CircuitBreaker:
        return CircuitBreaker(
            failures=3,
            first_open_for=timedelta(seconds=2),
            open_for=timedelta(seconds=60),
            clock=clock.now,
        )

    def open_periods(self, clock: FakeClock, breaker: CircuitBreaker, probes: int) -> list[float]:
        for _ in range(3):
            breaker.record_failure()
        periods = []
        for _ in range(probes):
            periods.append(breaker.open_for.total_seconds())
            clock.advance(breaker.open_for)
            assert breaker.state is CircuitState.HALF_OPEN
            breaker.record_failure()
        return periods

    def test_each_failed_probe_doubles_the_period_up_to_the_maximum(self) -> None:
        clock = FakeClock(NOW)
        periods = self.open_periods(clock, self.make(clock), probes=8)

        assert periods == [2, 4, 8, 16, 32, 60, 60, 60]

    def test_a_success_starts_over_with_the_short_period(self) -> None:
        clock = FakeClock(NOW)
        breaker = self.make(clock)
        self.open_periods(clock, breaker, probes=4)
        clock.advance(breaker.open_for)

        assert breaker.record_success()
        assert self.open_periods(clock, breaker, probes=1) == [2]

    def test_a_success_after_failures_that_did_not_open_it_counts_as_recovery(self) -> None:
        breaker = self.make(FakeClock(NOW))
        breaker.record_failure()

        assert breaker.record_success()
        assert not breaker.record_success()  # nothing to recover from now

    @given(
        first=st.integers(min_value=1, max_value=120),
        longest=st.integers(min_value=1, max_value=3600),
        probes=st.integers(min_value=1, max_value=40),
    )
    def test_the_period_never_exceeds_the_maximum_nor_shrinks(
        self, first: int, longest: int, probes: int
    ) -> None:
        clock = FakeClock(NOW)
        breaker = CircuitBreaker(
            failures=1,
            first_open_for=timedelta(seconds=first),
            open_for=timedelta(seconds=longest),
            clock=clock.now,
        )
        breaker.record_failure()
        periods = []
        for _ in range(probes):
            periods.append(breaker.open_for)
            clock.advance(breaker.open_for)
            breaker.record_failure()

        assert all(p <= timedelta(seconds=longest) for p in periods)
        assert periods == sorted(periods)


class TestHttpAnswers:
    @pytest.mark.parametrize("status", [200, 201, 202, 204, 409])
    def test_2xx_and_409_mean_delivered(self, status: int) -> None:
        assert classify(status, None, "p") is None

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 415, 422])
    def test_other_4xx_mean_rejected(self, status: int) -> None:
        error = classify(status, None, "p")
        assert isinstance(error, DeliveryRejectedError)
        assert error.code == f"http_{status}"

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 302])
    def test_5xx_429_408_and_redirects_are_transient(self, status: int) -> None:
        assert isinstance(classify(status, None, "p"), TransientDeliveryError)

    def test_a_429_carries_its_retry_after(self) -> None:
        error = classify(429, "120", "p")
        assert isinstance(error, TransientDeliveryError)
        assert error.retry_after == 120.0

    def test_retry_after_as_an_http_date_is_read(self) -> None:
        assert parse_retry_after("Mon, 23 Nov 2026 10:01:00 GMT", now=NOW) == 60.0

    def test_an_unreadable_retry_after_is_ignored(self) -> None:
        assert parse_retry_after("soon", now=NOW) is None


MESSAGE = OutboxMessage(
    message_id="m-1",
    event_id="e-1",
    kind="referral",
    exchange="victim-services.referrals",
    routing_key="lancashire-victim-services",
    headers={},
    body=b"{}",
    provider="lancashire-victim-services",
)


class TestAmqpRoute:
    def test_it_publishes_mandatory_to_the_messages_exchange_and_routing_key(self) -> None:
        publisher = RecordingPublisher()

        AmqpRoute(publisher).deliver(MESSAGE)

        [sent] = publisher.sent
        assert (sent.exchange, sent.routing_key, sent.message_id) == (
            "victim-services.referrals",
            "lancashire-victim-services",
            "m-1",
        )

    def test_a_broker_refusal_is_transient(self) -> None:
        with pytest.raises(TransientDeliveryError) as caught:
            AmqpRoute(RecordingPublisher(fail_times=1)).deliver(MESSAGE)
        assert caught.value.code == "publish_refused"


class TestParking:
    """How long a parked row waits: the back-off, or the receiver's pause if longer, capped."""

    POLICY = DeliveryPolicy(park_initial=timedelta(seconds=30), park_max=timedelta(hours=1))

    @given(
        parkings=st.integers(min_value=1, max_value=40),
        retry_after=st.none() | st.floats(min_value=0, max_value=10 * 3600),
        rand=st.floats(min_value=0, max_value=1),
    )
    def test_a_parked_row_waits_at_least_what_was_asked_and_never_past_the_maximum(
        self, parkings: int, retry_after: float | None, rand: float
    ) -> None:
        waited = self.POLICY.park_seconds(parkings, retry_after=retry_after, rand=lambda: rand)
        longest = self.POLICY.park_max.total_seconds()
        assert waited <= longest * (1 + self.POLICY.park_jitter)
        if retry_after is not None:
            assert waited >= min(retry_after, longest)

    def test_without_a_pause_asked_for_the_back_off_doubles(self) -> None:
        no_jitter = DeliveryPolicy(park_jitter=0.0)
        waits = [no_jitter.park_seconds(n, retry_after=None, rand=lambda: 0.0) for n in (1, 2, 3)]
        assert waits == [30.0, 60.0, 120.0]

    @pytest.mark.parametrize(
        ("retry_after", "in_place"), [(None, True), (0.5, True), (1.0, True), (1.5, False)]
    )
    def test_only_a_short_pause_is_waited_out_in_place(
        self, retry_after: float | None, in_place: bool
    ) -> None:
        assert DeliveryPolicy(in_place_max_seconds=1.0).pause_fits_in_place(retry_after) is in_place


def test_officer_tasks_are_one_receiver_and_each_provider_its_own() -> None:
    assert receiver_key("lancashire-victim-services") == "lancashire-victim-services"
    assert receiver_key(None) == TASKS_KEY


def test_a_follow_up_pass_s_counts_are_added_to_the_pass_s() -> None:
    first, follow_up = PassReport(), PassReport()
    first.add(Result.DELIVERED)
    first.add(Result.PARKED)
    follow_up.add(Result.DELIVERED)
    follow_up.add(Result.REJECTED)
    first.add_counts(follow_up)
    assert first.counts == {Result.DELIVERED: 2, Result.PARKED: 1, Result.REJECTED: 1}
