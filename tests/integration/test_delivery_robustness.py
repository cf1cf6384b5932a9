"""Delivery that survives what routes and providers throw at it, and never holds the consumer.

Routes are the real HttpsRoute over httpx.MockTransport (a provider answering exactly what a
test needs), or a small recording route; the ledger (SQLite), service and engine are real.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from referral_bridge.bootstrap import Bridge, ServiceLayer
from referral_bridge.core import ids
from referral_bridge.delivery import DeliveryPolicy, HttpsRoute, Route
from referral_bridge.ledger import Ledger, OutboxMessage
from referral_bridge.runtime.scheduler import Scheduler
from referral_bridge.transport import Ack
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    make_layer,
)
from tests.integration.test_delivery_helpers import LANCASHIRE, make_engine
from tests.unit.factories import make_crime, make_victim

pytestmark = pytest.mark.integration


def burglary(crime_ref: str, victim_id: str = "P-0001") -> Any:
    return inbound(
        cloudevent(
            make_crime(make_victim(victim_id), crime_ref=crime_ref), event_type="crime.recorded"
        )
    )


def referral(crime_ref: str) -> str:
    return ids.referral_id(LANCASHIRE, crime_ref, "P-0001")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        yield opened
    finally:
        opened.dispose()


@dataclass
class Ticker:
    """A monotonic clock that moves only when a route says an attempt took time."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Provider:
    """An HTTPS provider behind httpx.MockTransport: answers `answer(request)`, counts POSTs."""

    answer: Callable[[httpx.Request], httpx.Response]
    posts: list[str] = field(default_factory=list)
    ticker: Ticker | None = None
    seconds_per_post: float = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.posts.append(request.headers["Idempotency-Key"])
        if self.ticker is not None:
            self.ticker.now += self.seconds_per_post
        return self.answer(request)

    def route(self, *, max_attempt_seconds: float | None = None) -> HttpsRoute:
        route = HttpsRoute.build(
            provider=LANCASHIRE,
            url="https://provider.example/referrals",
            transport=httpx.MockTransport(self),
        )
        route.max_attempt_seconds = max_attempt_seconds
        return route


class ExplodingRoute:
    """A route raising something no route classifies, for the first `failures` calls."""

    name = "exploding"
    audit_route = "https"

    def __init__(self, error: Exception, failures: int = 1) -> None:
        self.error = error
        self.failures = failures
        self.delivered: list[str] = []

    def deliver(self, message: OutboxMessage) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        self.delivered.append(message.message_id)

    def close(self) -> None:
        """Nothing to close."""


Build = Callable[..., ServiceLayer]


@pytest.fixture
def build(ledger: Ledger, keys: KeyMaterial, clock: FakeClock) -> Iterator[Build]:
    built: list[ServiceLayer] = []

    def builder(
        route: Route,
        policy: DeliveryPolicy | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> ServiceLayer:
        publisher = RecordingPublisher()
        bridge = make_layer(
            ledger=ledger,
            sealer=keys.sealer(),
            publisher=publisher,
            clock=clock,
            delivery=lambda fallbacks, metrics: make_engine(
                ledger,
                clock,
                publisher,
                {LANCASHIRE: route},
                policy
                or DeliveryPolicy(attempts_in_place=3, park_jitter=0.0, circuit_failures=100),
                monotonic=monotonic,
                fallbacks=fallbacks,
                metrics=metrics,
            ),
        )
        built.append(bridge)
        return bridge

    yield builder
    for bridge in built:
        bridge.delivery.close()


class TestUnexpectedErrors:
    def test_a_provider_body_that_cannot_be_decoded_is_never_read(
        self, build: Build, ledger: Ledger
    ) -> None:
        provider = Provider(
            lambda _request: httpx.Response(
                201, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
            )
        )
        bridge = build(provider.route())

        assert bridge.service.handle(burglary("LC-26-0000001")) == Ack()
        assert provider.posts == [referral("LC-26-0000001")]
        assert ledger.deliveries(state="undelivered") == []

    def test_an_unclassified_route_error_in_handle_parks_the_row_and_still_acks(
        self, build: Build, ledger: Ledger
    ) -> None:
        bridge = build(ExplodingRoute(httpx.DecodingError("bad body")))

        assert bridge.service.handle(burglary("LC-26-0000001")) == Ack()
        [parked] = ledger.deliveries(state="undelivered")
        assert parked.last_error is not None
        assert parked.last_error.startswith("unexpected_error")
        assert parked.next_attempt_at is not None

    def test_an_unclassified_route_error_in_a_scheduler_pass_leaves_the_other_rows_flowing(
        self, build: Build, ledger: Ledger, clock: FakeClock
    ) -> None:
        route = ExplodingRoute(OSError("odd"), failures=2)  # both rows fail when handled
        bridge = build(route, DeliveryPolicy(attempts_in_place=1, circuit_failures=100))
        bridge.service.handle(burglary("LC-26-0000001"))
        bridge.service.handle(burglary("LC-26-0000002"))
        route.failures = 1  # the pass's first row fails once more; the second goes

        clock.advance(timedelta(hours=2))
        delivered = bridge.scheduled.flush()

        assert delivered == 1
        [parked] = ledger.deliveries(state="undelivered")
        assert route.delivered != [parked.message_id]
        assert (parked.last_error or "").startswith("unexpected_error")
        assert parked.attempts == 2

    def test_a_failing_row_is_isolated_from_the_rest_of_the_pass(
        self, build: Build, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        route = ExplodingRoute(OSError("unused"), failures=0)
        bridge = build(route)
        route.failures = 2
        bridge.service.handle(burglary("LC-26-0000001"))
        bridge.service.handle(burglary("LC-26-0000002"))
        broken = referral("LC-26-0000001")
        real_mark = ledger.mark_published

        def mark_published(message_id: str, at: Any, *, route: str = "amqp") -> bool:
            if message_id == broken:
                raise RuntimeError("not an outage")
            return real_mark(message_id, at, route=route)

        monkeypatch.setattr(ledger, "mark_published", mark_published)
        clock.advance(timedelta(hours=2))

        assert bridge.scheduled.flush() == 1
        assert [d.message_id for d in ledger.deliveries(state="undelivered")] == [broken]


class TestScheduler:
    def test_a_failing_step_neither_escapes_nor_skips_the_other_steps(self) -> None:
        calls: list[str] = []

        class Holds:
            def expire(self) -> int:
                calls.append("expire_holds")
                raise ValueError("a bug")

        class Scheduled:
            def review_crime_recording(self) -> int:
                calls.append("review_crime_recording")
                return 0

            def escalate_overdue_tasks(self) -> int:
                calls.append("escalate_overdue_tasks")
                raise RuntimeError("another bug")

            def issue_overdue_fallbacks(self) -> int:
                calls.append("issue_overdue_fallbacks")
                raise httpx.DecodingError("odd")

            def flush(self, **_kwargs: Any) -> int:
                calls.append("flush")
                return 0

        parts = {"holds": Holds(), "scheduled": Scheduled()}
        bridge = cast(Bridge, type("FakeBridge", (), parts)())
        Scheduler(bridge, interval=5.0, monotonic=lambda: 100.0)()

        assert calls == [
            "expire_holds",
            "review_crime_recording",
            "escalate_overdue_tasks",
            "issue_overdue_fallbacks",
            "flush",
        ]


class TestConsumerIsNeverHeldLong:
    def test_handle_makes_one_attempt_per_row_and_parks_it(self, build: Build) -> None:
        provider = Provider(lambda _request: httpx.Response(503))
        bridge = build(provider.route())

        assert bridge.service.handle(burglary("LC-26-0000001")) == Ack()
        assert len(provider.posts) == 1

    def test_a_scheduler_pass_still_retries_a_fast_failure_in_place(
        self, build: Build, clock: FakeClock
    ) -> None:
        provider = Provider(lambda _request: httpx.Response(503))
        bridge = build(provider.route(max_attempt_seconds=1.0))
        bridge.service.handle(burglary("LC-26-0000001"))

        clock.advance(timedelta(hours=1))
        bridge.scheduled.flush()

        assert len(provider.posts) == 1 + 3

    def test_no_new_attempt_starts_once_the_pass_budget_is_spent(
        self, build: Build, clock: FakeClock
    ) -> None:
        ticker = Ticker()
        down = Provider(lambda _request: httpx.Response(503))
        bridge = build(down.route(), DeliveryPolicy(pass_budget_seconds=10.0), ticker)
        for number in range(1, 4):
            bridge.service.handle(burglary(f"LC-26-000000{number}"))
        up = Provider(lambda _request: httpx.Response(201), ticker=ticker, seconds_per_post=6.0)
        bridge = build(up.route(), DeliveryPolicy(pass_budget_seconds=10.0), ticker)

        clock.advance(timedelta(hours=2))
        first = bridge.scheduled.flush()
        second = bridge.scheduled.flush()

        assert (first, second) == (2, 1)  # started at 0 s and 6 s; 12 s is past the budget

    def test_an_in_place_retry_starts_only_if_a_whole_attempt_still_fits(
        self, build: Build, clock: FakeClock
    ) -> None:
        ticker = Ticker()
        stalled = Provider(
            lambda _request: httpx.Response(503), ticker=ticker, seconds_per_post=6.0
        )
        policy = DeliveryPolicy(attempts_in_place=3, park_jitter=0.0, pass_budget_seconds=10.0)
        bridge = build(stalled.route(max_attempt_seconds=6.0), policy, ticker)
        bridge.service.handle(burglary("LC-26-0000001"))

        clock.advance(timedelta(hours=1))
        bridge.scheduled.flush()

        assert len(stalled.posts) == 1 + 1  # 6 s spent + 6 s more would pass 10 s: parked
