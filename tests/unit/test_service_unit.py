"""ReferralService on its own: fake ports and an in-memory SQLite ledger, no network or files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.events import CaseKind, DeadLetterReason
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger, LedgerTransaction
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.holds import HoldExpiry
from referral_bridge.service.matters import snapshot_of
from referral_bridge.transport import Ack, DeadLetter, InboundMessage, Retry
from referral_bridge.wire import CLOUDEVENTS_JSON
from tests.fakes import (
    REFERRALS_EXCHANGE,
    START,
    FailingSealer,
    FakeClock,
    RecordingPublisher,
    RecordingSealer,
    cloudevent,
    inbound,
    make_layer,
    make_service,
)
from tests.unit.factories import (
    FAKE_EMAIL,
    FAKE_NAME,
    FAKE_PHONE,
    make_crime,
    make_incident,
    make_victim,
)


class CountingLedger(Ledger):
    """An in-memory ledger that can be made unavailable for its next `outages` transactions."""

    def __init__(self, outages: int = 0) -> None:
        super().__init__(Ledger.open("sqlite://").engine)
        self.outages = outages
        self.transactions = 0

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        self.transactions += 1
        if self.outages > 0:
            self.outages -= 1
            raise LedgerUnavailableError("ledger unavailable (test outage)")
        with super().transaction() as tx:
            yield tx


class FlakySealer(RecordingSealer):
    """Fails its first `failures` calls, then seals like RecordingSealer."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def seal(self, provider: str, payload: Any) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("sealing failed (test)")
        return super().seal(provider, payload)


@pytest.fixture
def ledger() -> Iterator[CountingLedger]:
    opened = CountingLedger()
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def sealer() -> RecordingSealer:
    return RecordingSealer()


@pytest.fixture
def layer(
    ledger: CountingLedger,
    sealer: RecordingSealer,
    publisher: RecordingPublisher,
    clock: FakeClock,
) -> ServiceLayer:
    return make_layer(ledger=ledger, sealer=sealer, publisher=publisher, clock=clock)


def crime_message(event_id: str = "event-1", **crime: Any) -> Any:
    return inbound(cloudevent(make_crime(**crime), event_type="crime.recorded", event_id=event_id))


class TestBadInputNeverTouchesTheLedger:
    def test_an_undecodable_body_is_dead_lettered_before_any_ledger_transaction(
        self, service: ReferralService, ledger: CountingLedger
    ) -> None:
        verdict = service.handle(inbound(b"\x00not json"))

        assert isinstance(verdict, DeadLetter)
        assert verdict.reason == DeadLetterReason.INVALID_JSON
        assert ledger.transactions == 0


class TestLedgerOutages:
    def test_a_short_ledger_outage_is_ridden_out_in_place(
        self, ledger: CountingLedger, sealer: RecordingSealer, publisher: RecordingPublisher
    ) -> None:
        ledger.outages = 1
        service = make_service(
            ledger=ledger, sealer=sealer, publisher=publisher, clock=FakeClock(START)
        )

        assert service.handle(crime_message()) == Ack()
        assert ledger.transactions == 2

    def test_a_lasting_ledger_outage_gives_retry(
        self, ledger: CountingLedger, sealer: RecordingSealer, publisher: RecordingPublisher
    ) -> None:
        ledger.outages = 1_000
        service = make_service(
            ledger=ledger,
            sealer=sealer,
            publisher=publisher,
            clock=FakeClock(START),
            ledger_attempts=1,
        )

        assert service.handle(crime_message()) == Retry(detail="ledger unavailable")

    def test_ledger_outages_never_dead_letter_an_event(
        self, ledger: CountingLedger, sealer: RecordingSealer, publisher: RecordingPublisher
    ) -> None:
        ledger.outages = 1_000
        service = make_service(
            ledger=ledger,
            sealer=sealer,
            publisher=publisher,
            clock=FakeClock(START),
            max_processing_attempts=1,
            ledger_attempts=1,
        )

        verdicts = [service.handle(crime_message()) for _ in range(3)]

        assert all(isinstance(v, Retry) for v in verdicts)


class TestProcessingAttempts:
    """Attempts are counted on the message (the transport carries them on each retry copy)."""

    def test_an_event_that_succeeds_on_its_last_allowed_attempt_is_acked(
        self, ledger: CountingLedger, publisher: RecordingPublisher
    ) -> None:
        service = flaky_service(ledger, publisher, failures=2, max_attempts=3)

        verdicts = [service.handle(retried(crime_message(), n)) for n in range(3)]

        assert verdicts[:2] == [
            Retry(detail="RuntimeError (attempt 1)", attempts=1),
            Retry(detail="RuntimeError (attempt 2)", attempts=2),
        ]
        assert verdicts[2] == Ack()

    def test_the_count_the_message_carries_decides_not_what_this_process_saw(
        self, ledger: CountingLedger, publisher: RecordingPublisher
    ) -> None:
        """A message other workers failed 4 times is dead-lettered at its 5th failure here."""
        service = flaky_service(ledger, publisher, failures=1_000, max_attempts=5)

        verdict = service.handle(retried(crime_message(), 4))

        assert isinstance(verdict, DeadLetter)
        assert verdict.reason == DeadLetterReason.PROCESSING_ERROR
        assert verdict.attempts == 5

    def test_a_first_delivery_is_attempt_one_however_often_the_process_saw_the_event(
        self, ledger: CountingLedger, publisher: RecordingPublisher
    ) -> None:
        service = flaky_service(ledger, publisher, failures=1_000, max_attempts=2)

        verdicts = [service.handle(crime_message()) for _ in range(3)]

        assert verdicts == [Retry(detail="RuntimeError (attempt 1)", attempts=1)] * 3

    def test_a_retry_detail_names_the_error_type_and_attempt_only(
        self, ledger: CountingLedger, publisher: RecordingPublisher
    ) -> None:
        error = RuntimeError(f"{' '.join(FAKE_NAME)} {FAKE_PHONE}")

        service = make_service(
            ledger=ledger, sealer=FailingSealer(error), publisher=publisher, clock=FakeClock(START)
        )

        verdict = service.handle(crime_message())

        assert verdict == Retry(detail="RuntimeError (attempt 1)", attempts=1)


def flaky_service(
    ledger: CountingLedger, publisher: RecordingPublisher, *, failures: int, max_attempts: int
) -> ReferralService:
    """A service whose sealing fails `failures` times, giving events `max_attempts` attempts."""
    return make_service(
        ledger=ledger,
        sealer=FlakySealer(failures=failures),
        publisher=publisher,
        clock=FakeClock(START),
        max_processing_attempts=max_attempts,
    )


def retried(message: InboundMessage, attempts: int) -> InboundMessage:
    """`message` as its retry copy comes back after `attempts` failed attempts."""
    return replace(message, attempts=attempts)


class TestOutboundMessages:
    def test_a_referral_is_a_cloudevent_whose_data_is_the_sealed_token(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message())

        [message] = publisher.sent
        event = message.event
        assert event["specversion"] == "1.0"
        assert event["source"] == "urn:test:referral-bridge"
        assert event["datacontenttype"] == "application/jose"
        assert event["data"] == "sealed-for-lancashire-victim-services-1"
        assert (message.exchange, message.content_type) == (REFERRALS_EXCHANGE, CLOUDEVENTS_JSON)
        assert message.headers["x-rb-event-type"] == "victim.referral.created"

    def test_a_referral_envelope_carries_no_personal_data(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message())

        body = publisher.sent[0].body.decode()
        assert not [v for v in (" ".join(FAKE_NAME), FAKE_PHONE, FAKE_EMAIL) if v in body]

    def test_the_sealed_referral_payload_holds_the_victims_contact_for_the_provider(
        self, service: ReferralService, sealer: RecordingSealer
    ) -> None:
        service.handle(crime_message())

        [(provider, payload)] = sealer.sealed
        assert provider == "lancashire-victim-services"
        assert payload["victim"]["contact"]["phone"] == FAKE_PHONE
        assert payload["case_ref"] == make_crime().crime_ref

    def test_a_leaflet_task_is_plain_json_on_the_tasks_exchange(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(
            inbound(
                cloudevent(make_incident(), event_type="incident.recorded", event_id="inc-1"),
                routing_key="incident.recorded",
            )
        )

        [task] = publisher.sent
        assert task.event["datacontenttype"] == "application/json"
        assert task.event["data"]["reason"] == "incident_information"
        assert task.routing_key == "task.leaflet"


class TestScheduledWork:
    def test_expiring_holds_with_none_due_publishes_nothing(
        self, holds: HoldExpiry, publisher: RecordingPublisher
    ) -> None:
        assert holds.expire() == 0
        assert publisher.sent == []

    def test_flush_with_a_grace_period_leaves_messages_younger_than_it(
        self, ledger: CountingLedger, sealer: RecordingSealer, clock: FakeClock
    ) -> None:
        # Every in-place attempt fails, so the message is parked (delivery semantics, issue 3).
        publisher = RecordingPublisher(fail_times=3)
        layer = make_layer(ledger=ledger, sealer=sealer, publisher=publisher, clock=clock)
        service = layer.service
        service.handle(crime_message())

        assert layer.scheduled.flush(older_than=timedelta(minutes=5)) == 0
        clock.advance(timedelta(minutes=6))
        assert layer.scheduled.flush(older_than=timedelta(minutes=5)) == 1


class TestSnapshots:
    def test_a_stored_crime_snapshot_comes_back_as_a_crime_case(self) -> None:
        crime = make_crime(make_victim("P-0009"))

        case = snapshot_of(CaseKind.CRIME.value, crime.model_dump(mode="json"))

        assert case == CaseSnapshot.from_crime(crime)

    def test_a_stored_incident_snapshot_comes_back_as_an_incident_case(self) -> None:
        incident = make_incident()

        case = snapshot_of(CaseKind.INCIDENT.value, json.loads(incident.model_dump_json()))

        assert case.kind is CaseKind.INCIDENT
        assert case == CaseSnapshot.from_incident(incident)
