"""One sender at a time (issue 9): claims serialise delivery with cancellation on the ledger.

The interleavings are forced, not hoped for: one ledger session holds its transaction open while
another tries to act on the same row, on SQLite and on PostgreSQL (where the test also checks
that the second session really waited on the first one's row lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.core import ids
from referral_bridge.core.parsing import parse_inbound
from referral_bridge.delivery import DeliveryPolicy
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Cancellation, Ledger
from referral_bridge.service.handler import ReferralService
from referral_bridge.transport import Ack
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    make_layer,
)
from tests.unit.factories import CRIME_REF, make_crime
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

LANCASHIRE = "lancashire-victim-services"
VICTIM = "P-0001"
REFERRAL = ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
WITHDRAWAL = ids.withdrawal_id(REFERRAL)
LEASE = DeliveryPolicy().claim_lease


@pytest.fixture
def ledgers(ledger_url: str) -> Iterator[tuple[Ledger, Ledger]]:
    """Two ledgers on one database, with their own connections, as two workers have."""
    first, second = Ledger.open(ledger_url), Ledger.open(ledger_url)
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


def wired_on(
    ledger: Ledger, keys: KeyMaterial, clock: FakeClock, publisher: RecordingPublisher
) -> ServiceLayer:
    """One worker's service and scheduled steps on its own ledger connections."""
    return make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)


def crime_body() -> bytes:
    return cloudevent(make_crime(), event_type="crime.recorded", event_id="crime-1")


def withdrawal_body(clock: FakeClock) -> bytes:
    consent = {
        "case_ref": CRIME_REF,
        "victim_id": VICTIM,
        "referral": "withdrawn",
        "recorded_at": clock.now().isoformat(),
        "recorded_by": "PC 0000",
        "lawful_basis": None,
    }
    return cloudevent(consent, event_type="consent.updated", event_id="withdrawn-1")


def referral_recorded_not_sent(service: ReferralService) -> None:
    """The crime's effects committed, its referral not yet tried (the worker is about to)."""
    service.process(parse_inbound(crime_body()))


def waiting_for_a_lock(ledger: Ledger) -> bool:
    with ledger.engine.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


class TestCancellationAgainstAClaim:
    def test_a_cancellation_holding_the_row_makes_a_concurrent_claim_fail(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        referral_recorded_not_sent(wired_on(worker_a, keys, clock, RecordingPublisher()).service)
        claimed: list[bool] = []
        claim = threading.Thread(
            target=lambda: claimed.append(
                worker_a.claim_delivery(REFERRAL, clock.now(), clock.now() + LEASE)
            )
        )
        with worker_b.transaction() as tx:
            cancellation = tx.cancel_referral(REFERRAL, clock.now())
            claim.start()
            if worker_a.dialect == "postgresql":
                assert wait_until(lambda: waiting_for_a_lock(worker_b), timeout=30)
            assert claimed == []  # it cannot get past the open cancellation
        claim.join(timeout=60)

        assert cancellation is Cancellation.NEVER_SENT
        assert claimed == [False]

    def test_a_claim_made_first_turns_the_cancellation_into_a_withdrawal_that_waits(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        referral_recorded_not_sent(wired_on(worker_a, keys, clock, RecordingPublisher()).service)
        assert worker_a.claim_delivery(REFERRAL, clock.now(), clock.now() + LEASE)

        with worker_b.transaction() as tx:
            cancellation = tx.cancel_referral(REFERRAL, clock.now())

        assert cancellation is Cancellation.MAY_HAVE_BEEN_SENT
        # No one else may claim it meanwhile, nor once it is cancelled.
        assert not worker_b.claim_delivery(REFERRAL, clock.now(), clock.now() + LEASE)

    def test_a_claim_that_lapsed_counts_as_an_attempt_that_may_have_arrived(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        referral_recorded_not_sent(wired_on(worker_a, keys, clock, RecordingPublisher()).service)
        assert worker_a.claim_delivery(REFERRAL, clock.now(), clock.now() + LEASE)
        clock.advance(LEASE + timedelta(seconds=1))  # worker A died mid-attempt

        with worker_b.transaction() as tx:
            assert tx.cancel_referral(REFERRAL, clock.now()) is Cancellation.MAY_HAVE_BEEN_SENT


class TestWithdrawalWhileTheReferralIsBeingSent:
    """The race of issue 9: worker A is handing the referral over when B handles the withdrawal."""

    def test_the_provider_gets_the_referral_then_the_withdrawal(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        wire: list[str] = []
        sending, go_on = threading.Event(), threading.Event()

        def slow_hand_over(_message: object) -> None:
            sending.set()
            assert go_on.wait(timeout=60)

        publisher_a = RecordingPublisher(on_publish=slow_hand_over)
        publisher_b = RecordingPublisher()
        bridge_a = wired_on(worker_a, keys, clock, publisher_a)
        bridge_b = wired_on(worker_b, keys, clock, publisher_b)
        verdicts: list[object] = []
        handling = threading.Thread(
            target=lambda: verdicts.append(bridge_a.service.handle(inbound(crime_body())))
        )
        handling.start()
        assert sending.wait(timeout=60)

        withdrawn = bridge_b.service.handle(
            inbound(withdrawal_body(clock), routing_key="consent.updated")
        )
        nothing_yet = [m.message_id for m in publisher_b.sent]
        go_on.set()
        handling.join(timeout=60)
        clock.advance(timedelta(minutes=5))
        bridge_b.scheduled.flush()
        wire = [m.message_id for m in publisher_a.sent + publisher_b.sent]

        assert (withdrawn, verdicts) == (Ack(), [Ack()])
        assert nothing_yet == []  # the withdrawal waited for the attempt under way
        assert wire == [REFERRAL, WITHDRAWAL]

    def test_a_referral_not_yet_tried_is_never_sent_nor_withdrawn(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        publisher_a, publisher_b = RecordingPublisher(), RecordingPublisher()
        bridge_a = wired_on(worker_a, keys, clock, publisher_a)
        referral_recorded_not_sent(bridge_a.service)

        wired_on(worker_b, keys, clock, publisher_b).service.handle(
            inbound(withdrawal_body(clock), routing_key="consent.updated")
        )
        bridge_a.scheduled.flush()

        assert publisher_a.sent + publisher_b.sent == []


class TestDuplicates:
    def test_the_worker_that_finds_a_duplicate_leaves_its_rows_to_the_first(
        self, ledgers: tuple[Ledger, Ledger], keys: KeyMaterial, clock: FakeClock
    ) -> None:
        worker_a, worker_b = ledgers
        publisher_a, publisher_b = RecordingPublisher(), RecordingPublisher()
        bridge_a = wired_on(worker_a, keys, clock, publisher_a)
        referral_recorded_not_sent(bridge_a.service)

        assert (
            wired_on(worker_b, keys, clock, publisher_b).service.handle(inbound(crime_body()))
            == Ack()
        )
        bridge_a.scheduled.flush()

        assert publisher_b.sent == []
        assert [m.message_id for m in publisher_a.sent] == [REFERRAL]


class MarkFails(Ledger):
    """A ledger that goes away just after a hand-over, before it can record it.

    Three failures outlast the engine's quick tries in place.
    """

    outages = 3

    def mark_published(self, message_id: str, at: datetime, *, route: str = "amqp") -> bool:
        if self.outages > 0:
            self.outages -= 1
            raise LedgerUnavailableError("ledger unavailable (test outage)")
        return super().mark_published(message_id, at, route=route)


class TestLostDeliveredMark:
    """Issue 9 finding 3: no fallback task and no second copy after a lost 'delivered' mark."""

    def test_the_mark_is_recorded_later_and_no_fallback_or_repeat_follows(
        self, ledger_url: str, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        ledger = MarkFails.open(ledger_url)
        assert isinstance(ledger, MarkFails)
        try:
            publisher = RecordingPublisher()
            bridge = wired_on(ledger, keys, clock, publisher)
            assert bridge.service.handle(inbound(crime_body())) == Ack()
            [row] = ledger.deliveries(state="undelivered")
            deadline = row.message.deadline
            assert deadline is not None
            clock.set(deadline + timedelta(minutes=1))

            fallbacks = bridge.scheduled.issue_overdue_fallbacks()
            bridge.scheduled.flush()

            assert fallbacks == 0
            assert [m.message_id for m in publisher.sent] == [REFERRAL]
            assert ledger.deliveries(state="undelivered") == []
            assert ledger.deliveries(state="all")[0].published_at is not None
        finally:
            ledger.dispose()

    def test_while_the_ledger_stays_away_no_fallback_is_issued(
        self, ledger_url: str, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        ledger = MarkFails.open(ledger_url)
        assert isinstance(ledger, MarkFails)
        ledger.outages = 6  # two rounds of quick tries
        try:
            publisher = RecordingPublisher()
            bridge = wired_on(ledger, keys, clock, publisher)
            bridge.service.handle(inbound(crime_body()))
            [row] = ledger.deliveries(state="undelivered")
            assert row.message.deadline is not None
            clock.set(row.message.deadline + LEASE * 2)  # even after the claim has lapsed

            with pytest.raises(LedgerUnavailableError):
                bridge.scheduled.issue_overdue_fallbacks()
            ledger.outages = 0
            assert bridge.scheduled.issue_overdue_fallbacks() == 0
            assert [m.message_id for m in publisher.sent] == [REFERRAL]
        finally:
            ledger.dispose()
