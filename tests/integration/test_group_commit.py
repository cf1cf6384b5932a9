"""Group commit: batches from prefetch, one transaction with a savepoint per event, windowed
publisher confirms, one ack. Real RabbitMQ and real ledgers (issue 11)."""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from referral_bridge.core import ids
from referral_bridge.core.events import DeadLetterReason
from referral_bridge.core.verdicts import InboundMessage
from referral_bridge.ledger import Ledger
from referral_bridge.service.handler import ReferralService
from referral_bridge.transport import Ack, DeadLetter, PublishError, Retry, Verdict
from referral_bridge.transport.publisher import Outgoing
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    make_keys,
    make_service,
)
from tests.integration.conftest import BrokerHarness, RecordingHandler
from tests.unit.factories import REPORTED_AT, make_crime
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

LANCASHIRE = "lancashire-victim-services"
VICTIM = "P-0001"


class BatchRecorder:
    """A batch handler that records each batch's size and answers with a verdict per body."""

    def __init__(self, verdicts: Mapping[bytes, Verdict] | None = None) -> None:
        self.sizes: list[int] = []
        self.received: list[bytes] = []
        self.verdicts = dict(verdicts or {})
        self.at: list[float] = []

    def __call__(self, messages: Sequence[InboundMessage]) -> list[Verdict]:
        self.sizes.append(len(messages))
        self.at.append(time.monotonic())
        self.received.extend(m.body for m in messages)
        return [self.verdicts.get(m.body, Ack()) for m in messages]


class TestConsumerBatches:
    def test_a_backlog_goes_in_batches_and_every_message_is_settled(
        self, rabbit: BrokerHarness
    ) -> None:
        bodies = [f"message {n}".encode() for n in range(40)]
        for body in bodies:
            rabbit.publisher.publish_inbound(body, "crime.recorded")
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 40)
        bad = DeadLetter(reason=DeadLetterReason.SCHEMA_VIOLATION, detail="bad", attempts=1)
        batches = BatchRecorder({bodies[5]: bad})

        running = rabbit.start_consumer(
            RecordingHandler(Ack()), batch_handler=batches, batch_size=16, prefetch=32
        )
        assert wait_until(lambda: len(batches.received) == 40, timeout=30)
        running.halt()

        assert sorted(batches.received) == sorted(bodies)
        assert max(batches.sizes) > 1
        assert max(batches.sizes) <= 16
        # Everything settled: nothing comes back once the consumer's channel is gone.
        assert rabbit.depth(rabbit.topology.work_queue) == 0
        assert rabbit.depth(rabbit.topology.dead_letter_queue) == 1

    def test_a_lone_message_is_processed_at_once(self, rabbit: BrokerHarness) -> None:
        batches = BatchRecorder()
        rabbit.start_consumer(
            RecordingHandler(Ack()),
            batch_handler=batches,
            batch_size=16,
            prefetch=32,
            batch_max_wait=20.0,
        )
        published = time.monotonic()
        rabbit.publisher.publish_inbound(b"alone", "crime.recorded")

        assert wait_until(lambda: batches.received == [b"alone"], timeout=10)
        assert batches.sizes == [1]
        assert batches.at[0] - published < 5.0  # far below the 20 s it could wait for more
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 0)

    def test_a_batch_handler_that_raises_hands_each_message_over_alone(
        self, rabbit: BrokerHarness
    ) -> None:
        def broken(_messages: Sequence[InboundMessage]) -> list[Verdict]:
            raise RuntimeError("batch broke")

        for n in range(5):
            rabbit.publisher.publish_inbound(f"m{n}".encode(), "crime.recorded")
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 5)
        alone = RecordingHandler(Ack())

        rabbit.start_consumer(alone, batch_handler=broken, batch_size=8, prefetch=8)

        assert wait_until(lambda: len(alone.received) == 5, timeout=20)
        assert sorted(m.body for m in alone.received) == [f"m{n}".encode() for n in range(5)]


class TestPublishWindow:
    def test_each_message_of_a_window_gets_its_own_outcome(self, rabbit: BrokerHarness) -> None:
        queue = rabbit.topology.dead_letter_queue  # a queue that exists
        window = [
            Outgoing(exchange="", routing_key=queue, body=b"one", headers={}, message_id="1"),
            Outgoing(
                exchange="",
                routing_key=f"{queue}.nowhere",
                body=b"lost",
                headers={},
                message_id="2",
                mandatory=True,
            ),
            Outgoing(exchange="", routing_key=queue, body=b"three", headers={}, message_id="3"),
        ]

        results = rabbit.publisher.publish_window(window)

        assert results[0] is None
        assert results[2] is None
        assert isinstance(results[1], PublishError)
        assert rabbit.depth(queue) == 2
        # The publisher carries on: a plain publish after the window is confirmed as usual.
        rabbit.publisher.publish(exchange="", routing_key=queue, body=b"four")
        assert rabbit.depth(queue) == 3


# --- the service's batches ------------------------------------------------------------------------


class WindowPublisher(RecordingPublisher):
    """A RecordingPublisher that also takes windows (as the force broker's Publisher does)."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[int] = []

    def publish_window(self, messages: Sequence[Outgoing]) -> list[Exception | None]:
        self.windows.append(len(messages))
        for m in messages:
            self.publish(
                exchange=m.exchange,
                routing_key=m.routing_key,
                body=m.body,
                headers=m.headers,
                message_id=m.message_id,
                content_type=m.content_type,
                mandatory=m.mandatory,
            )
        return [None] * len(messages)


class SealerFailingFor:
    """Seals as `inner` does, but raises for payloads naming `marker` (one bad event)."""

    def __init__(self, inner: Any, marker: str) -> None:
        self.inner = inner
        self.marker = marker

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str:
        if self.marker in json.dumps(payload, default=str):
            raise RuntimeError("cannot seal this one")
        return str(self.inner.seal(provider, payload))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def ledger(ledger_url: str) -> Any:
    opened = Ledger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()


def crime(ref: str, event_id: str) -> InboundMessage:
    return inbound(
        cloudevent(make_crime(crime_ref=ref), event_type="crime.recorded", event_id=event_id)
    )


def batch_service(ledger: Ledger, sealer: Any, publisher: RecordingPublisher) -> ReferralService:
    from datetime import timedelta

    return make_service(
        ledger=ledger,
        sealer=sealer,
        publisher=publisher,
        clock=FakeClock(REPORTED_AT + timedelta(hours=1)),
    )


class TestServiceBatches:
    def test_one_failing_event_never_fails_its_neighbours(
        self, ledger: Ledger, keys: KeyMaterial
    ) -> None:
        publisher = WindowPublisher()
        service = batch_service(ledger, SealerFailingFor(keys.sealer(), "LC-26-0000002"), publisher)
        messages = [
            crime("LC-26-0000001", "e1"),
            crime("LC-26-0000002", "e2"),
            crime("LC-26-0000003", "e3"),
            inbound(b"{not json"),
        ]

        verdicts = service.handle_batch(messages)

        assert verdicts[0] == Ack()
        assert verdicts[2] == Ack()
        assert isinstance(verdicts[1], Retry)
        assert verdicts[1].attempts == 1
        assert isinstance(verdicts[3], DeadLetter)
        sent = {m.message_id for m in publisher.sent}
        assert sent == {
            ids.referral_id(LANCASHIRE, "LC-26-0000001", VICTIM),
            ids.referral_id(LANCASHIRE, "LC-26-0000003", VICTIM),
        }
        # Both good referrals went out in one window, and nothing of the failed event stayed.
        assert publisher.windows == [2]
        assert ledger.counts()["totals"]["unsent"] == 0
        assert ledger.counts()["totals"]["processed"] == 2

    def test_a_duplicate_in_the_same_batch_is_recorded_once(
        self, ledger: Ledger, keys: KeyMaterial
    ) -> None:
        publisher = WindowPublisher()
        service = batch_service(ledger, keys.sealer(), publisher)
        message = crime("LC-26-0000001", "same-event")

        verdicts = service.handle_batch([message, message])

        assert verdicts == [Ack(), Ack()]
        assert [m.message_id for m in publisher.sent] == [
            ids.referral_id(LANCASHIRE, "LC-26-0000001", VICTIM)
        ]

    def test_a_batch_the_ledger_refuses_is_processed_one_event_at_a_time(
        self, ledger: Ledger, keys: KeyMaterial
    ) -> None:
        publisher = WindowPublisher()
        service = batch_service(ledger, keys.sealer(), publisher)
        original = ledger.transaction
        calls: list[int] = []
        lock = threading.Lock()

        def refuse_first(*args: Any, **kwargs: Any) -> Any:
            from referral_bridge.errors import LedgerUnavailableError

            with lock:
                calls.append(1)
                if len(calls) == 1:
                    raise LedgerUnavailableError("ledger unavailable (test)")
            return original(*args, **kwargs)

        ledger.transaction = refuse_first  # type: ignore[method-assign]
        verdicts = service.handle_batch(
            [crime("LC-26-0000001", "e1"), crime("LC-26-0000002", "e2")]
        )

        assert verdicts == [Ack(), Ack()]
        assert len(publisher.sent) == 2
        assert ledger.counts()["totals"]["processed"] == 2
