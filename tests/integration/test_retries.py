"""Retries through the broker: a poison message costs its attempts and holds up nothing else.

On RabbitMQ a retry copy waits in the retry queue until its per-message TTL dead-letters it back
into the work queue; on the embedded broker the consumer moves due copies back. Either way the
count travels on the copy, so it is shared by workers and survives restarts.
"""

# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these tests drive it directly.

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from referral_bridge.core.retry import RetryPolicy
from referral_bridge.ledger import Ledger
from referral_bridge.service.handler import ReferralService
from referral_bridge.transport import Ack, InboundMessage, Retry, Verdict
from tests.fakes import FakeClock, RecordingPublisher, RecordingSealer, cloudevent, make_service
from tests.integration.conftest import BrokerHarness, RecordingHandler
from tests.unit.factories import REPORTED_AT, make_crime
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_UTF8 = b"\xff\xfe{not json at all\x00\x80"


@pytest.fixture(params=["rabbit", "embedded"])
def broker(request: pytest.FixtureRequest) -> BrokerHarness:
    """Each test here runs on RabbitMQ and on the embedded broker."""
    harness: BrokerHarness = request.getfixturevalue(str(request.param))
    return harness


def policy(first: timedelta, *, max_attempts: int = 5, longest: timedelta | None = None) -> Any:
    return RetryPolicy(max_attempts=max_attempts, first_delay=first, longest_delay=longest or first)


class TestRetryCopies:
    def test_a_retried_message_comes_back_with_its_count_bytes_routing_key_and_id(
        self, broker: BrokerHarness
    ) -> None:
        handler = RecordingHandler(Retry("x", attempts=1), Retry("x", attempts=2), Ack())
        broker.publisher.publish_inbound(NOT_UTF8, "incident.recorded", message_id="event-1")
        retried: list[None] = []
        running = broker.start_consumer(handler, on_retried=lambda: retried.append(None))
        assert wait_until(lambda: len(handler.received) == 3)
        running.halt()

        assert len(retried) == 2
        assert [m.attempts for m in handler.received] == [0, 1, 2]
        assert {m.body for m in handler.received} == {NOT_UTF8}
        assert {m.routing_key for m in handler.received} == {"incident.recorded"}
        for queue in (broker.topology.work_queue, broker.topology.retry_queue):
            assert broker.depth(queue) == 0

    def test_a_message_that_keeps_failing_is_dead_lettered_after_exactly_its_attempts(
        self, broker: BrokerHarness
    ) -> None:
        """Byte for byte, with the x-rb-* headers, and x-rb-attempts the true count."""
        handler = RecordingHandler(RuntimeError("boom"))
        broker.publisher.publish_inbound(NOT_UTF8, "crime.recorded", message_id="event-1")
        broker.start_consumer(handler)

        parked = broker.fetch_eventually(broker.topology.dead_letter_queue, timeout=30)

        assert parked.body == NOT_UTF8
        assert parked.properties.get("message_id") == "event-1"
        headers = parked.headers
        assert headers["x-rb-reason"] == "processing_error"
        assert headers["x-rb-attempts"] == 5
        assert "RuntimeError" in headers["x-rb-detail"]
        assert headers["x-rb-original-routing-key"] == "crime.recorded"
        assert headers["x-rb-failed-at"].endswith("Z")
        assert not any(name.startswith(("x-death", "x-rb-not-before")) for name in headers)
        assert len(handler.received) == 5
        assert broker.depth(broker.topology.retry_queue) == 0

    def test_the_count_survives_a_restart(self, broker: BrokerHarness) -> None:
        """A worker stops with a copy in the retry queue; the next one gets attempt 2."""
        first = RecordingHandler(Retry("x", attempts=1))
        broker.publisher.publish_inbound(b"{}", "crime.recorded")
        # A day's delay: the copy cannot come back while the first worker runs.
        running = broker.start_consumer(first, retry_policy=policy(timedelta(days=1)))
        assert wait_until(lambda: len(first.received) == 1)
        assert wait_until(lambda: broker.depth(broker.topology.retry_queue) == 1)
        running.halt()
        assert broker.depth(broker.topology.work_queue) == 0
        if not broker.spec.embedded:
            # RabbitMQ's copy waits for its TTL: take it out and put it back with a short one.
            _shorten_the_wait(broker)

        second = RecordingHandler(Ack())
        # The embedded broker's copy is moved back by whichever worker sees it due.
        broker.start_consumer(second, clock=lambda: datetime.now(UTC) + timedelta(days=2))
        assert wait_until(lambda: len(second.received) == 1, timeout=30)
        assert second.received[0].attempts == 1


def _shorten_the_wait(broker: BrokerHarness) -> None:
    """Republish the waiting RabbitMQ copy as it is, but expiring at once."""
    copy = broker.fetch(broker.topology.retry_queue)
    assert copy is not None
    broker.publisher.publish_retry(
        copy.body, dict(copy.headers), delay_seconds=0.01, content_type=copy.content_type
    )


class TestOnRabbitMQ:
    def test_a_copy_returns_to_the_work_queue_with_no_worker_running(
        self, rabbit: BrokerHarness
    ) -> None:
        """The delay is the broker's: a stopped worker loses no retry."""
        handler = RecordingHandler(Retry("x", attempts=1))
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        running = rabbit.start_consumer(handler, retry_policy=policy(timedelta(seconds=1)))
        assert wait_until(lambda: len(handler.received) >= 1)
        running.halt()
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 1, timeout=30)
        assert rabbit.depth(rabbit.topology.retry_queue) == 0

    def test_two_workers_share_one_count(self, rabbit: BrokerHarness) -> None:
        """Two workers failing the same message try it max_attempts times in all, not each."""
        handlers = [RecordingHandler(RuntimeError("boom")) for _ in range(2)]
        for handler in handlers:
            rabbit.start_consumer(handler)
        for n in range(4):
            rabbit.publisher.publish_inbound(f"poison-{n}".encode(), "crime.recorded")

        assert wait_until(lambda: rabbit.depth(rabbit.topology.dead_letter_queue) == 4, timeout=30)
        assert sum(len(h.received) for h in handlers) == 4 * 5
        assert all(h.received for h in handlers), "both workers took part"
        letters = [rabbit.fetch(rabbit.topology.dead_letter_queue) for _ in range(4)]
        assert [m.headers["x-rb-attempts"] if m else None for m in letters] == [5] * 4


# --- 100 poison events among good ones, through the real service ------------------------------

POISON = 100
GOOD = 100
MAX_ATTEMPTS = 5
#: 1 + 2 + 4 + 8 = 15 s from a poison event's first attempt to its dead letter.
SLOW_RETRIES = RetryPolicy(
    max_attempts=MAX_ATTEMPTS, first_delay=timedelta(seconds=1), longest_delay=timedelta(seconds=8)
)


class PoisonSealer(RecordingSealer):
    """Fails every attempt at a case whose reference starts with POISON."""

    def __init__(self) -> None:
        super().__init__()
        self.poison_attempts: Counter[str] = Counter()

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str:
        case_ref = str(payload["case_ref"])
        if case_ref.startswith("POISON"):
            self.poison_attempts[case_ref] += 1
            raise RuntimeError("sealing failed (test)")
        return super().seal(provider, payload)


class Tally:
    """The service's handler, noting each event's verdicts."""

    def __init__(self, service: ReferralService) -> None:
        self.service = service
        self.verdicts: defaultdict[str, list[str]] = defaultdict(list)

    def __call__(self, message: InboundMessage) -> Verdict:
        verdict = self.service.handle(message)
        self.verdicts[json.loads(message.body)["id"]].append(type(verdict).__name__)
        return verdict

    def acked(self, prefix: str) -> int:
        return sum("Ack" in v for k, v in list(self.verdicts.items()) if k.startswith(prefix))


@pytest.mark.slow
def test_100_poison_events_do_not_hold_up_the_good_ones(
    broker: BrokerHarness, sqlite_ledger: Ledger
) -> None:
    """All good events are processed while the poison ones, ahead of them, are still retried.

    Before, each poison attempt slept in the consumer: the good events would have waited for
    100 x 5 attempts. Now every good event is done before any poison event has used up its
    15 s of retries; then each poison event is dead-lettered after exactly 5 attempts.
    """
    sealer = PoisonSealer()
    service = make_service(
        ledger=sqlite_ledger,
        sealer=sealer,
        publisher=RecordingPublisher(),
        clock=FakeClock(REPORTED_AT + timedelta(hours=1)),
        max_processing_attempts=MAX_ATTEMPTS,
    )
    tally = Tally(service)
    for n in range(POISON):
        crime = make_crime(crime_ref=f"POISON-{n:03}")
        body = cloudevent(crime, event_type="crime.recorded", event_id=f"poison-{n:03}")
        broker.publisher.publish_inbound(body, "crime.recorded")
    for n in range(GOOD):
        crime = make_crime(crime_ref=f"GOOD-{n:03}")
        body = cloudevent(crime, event_type="crime.recorded", event_id=f"good-{n:03}")
        broker.publisher.publish_inbound(body, "crime.recorded")

    broker.start_consumer(tally, retry_policy=SLOW_RETRIES)

    assert wait_until(lambda: tally.acked("good-") == GOOD, timeout=60)
    # The poison events were all tried, and none has run out of attempts yet.
    assert broker.depth(broker.topology.dead_letter_queue) == 0
    assert len(sealer.poison_attempts) == POISON

    assert wait_until(
        lambda: broker.depth(broker.topology.dead_letter_queue) == POISON, timeout=180
    )
    assert set(sealer.poison_attempts.values()) == {MAX_ATTEMPTS}
    assert all(tally.verdicts[f"good-{n:03}"] == ["Ack"] for n in range(GOOD))
    letter = broker.fetch(broker.topology.dead_letter_queue)
    assert letter is not None
    assert letter.headers["x-rb-attempts"] == MAX_ATTEMPTS
    assert letter.headers["x-rb-reason"] == "processing_error"
