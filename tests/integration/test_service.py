"""ReferralService over the real ledger (SQLite and PostgreSQL), real sealing and fake ports.

The publisher is a recording fake and the clock a fake one; everything else is what bootstrap
builds, so these tests pin the service's behaviour end to end short of the broker.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, inspect, select
from structlog.testing import capture_logs

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import (
    ConsentState,
    CrimeRecorded,
    CrimeStatus,
    DeadLetterReason,
    IncidentRecorded,
)
from referral_bridge.core.parsing import parse_inbound
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger, PendingDelivery
from referral_bridge.ledger import schema as t
from referral_bridge.resources import SAMPLES
from referral_bridge.sealing import open_event
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.holds import HoldExpiry
from referral_bridge.service.scheduled import ScheduledWork
from referral_bridge.transport import Ack, DeadLetter, Retry
from tests.fakes import (
    REFERRALS_EXCHANGE,
    START,
    TASKS_EXCHANGE,
    FailingSealer,
    FakeClock,
    KeyMaterial,
    PublishedMessage,
    RecordingPublisher,
    cloudevent,
    inbound,
    make_layer,
    make_service,
)
from tests.unit.factories import (
    ADULT_DOB,
    CRIME_REF,
    FAKE_ADDRESS_LINE,
    FAKE_EMAIL,
    FAKE_NAME,
    FAKE_PHONE,
    FAKE_POSTCODE,
    INCIDENT_REF,
    REPORTED_AT,
    make_crime,
    make_incident,
    make_victim,
)

pytestmark = pytest.mark.integration

CREATED = "victim.referral.created"
WITHDRAWN = "victim.referral.withdrawn"
UPDATED = "victim.referral.updated"
LEAFLET = "officer.task.leaflet"
LANCASHIRE = "lancashire-victim-services"
VICTIM = "P-0001"
#: Values of the factory victim that must never leave the bridge except inside a sealed referral.
PERSONAL_MARKERS = (
    " ".join(FAKE_NAME),
    FAKE_PHONE,
    FAKE_EMAIL,
    FAKE_POSTCODE,
    FAKE_ADDRESS_LINE,
    ADULT_DOB.isoformat(),
)


# --- helpers ----------------------------------------------------------------------------------


def crime_message(crime: CrimeRecorded, event_id: str | None = None) -> Any:
    return inbound(cloudevent(crime, event_type="crime.recorded", event_id=event_id))


def incident_message(incident: IncidentRecorded, event_id: str | None = None) -> Any:
    return inbound(
        cloudevent(incident, event_type="incident.recorded", event_id=event_id),
        routing_key="incident.recorded",
    )


def consent_message(
    referral: str,
    *,
    at: datetime,
    case_ref: str = CRIME_REF,
    victim_id: str = VICTIM,
    event_id: str | None = None,
) -> Any:
    data = {
        "case_ref": case_ref,
        "victim_id": victim_id,
        "referral": referral,
        "recorded_at": at.isoformat(),
        "recorded_by": "PC 0000",
        "lawful_basis": "consent" if referral == "given" else None,
    }
    return inbound(
        cloudevent(data, event_type="consent.updated", event_id=event_id),
        routing_key="consent.updated",
    )


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def sexual_crime(**victim: Any) -> CrimeRecorded:
    """A crime under an explicit-consent rule (rule 4), its victim not yet asked by default."""
    return make_crime(make_victim(**victim), category="sexual", ho_class="19C")


def opened(message: PublishedMessage, keys: KeyMaterial, provider: str) -> dict[str, Any]:
    envelope, payload = open_event(
        message.body,
        decryption_keys=keys.provider_keys(provider),
        verification_keys=keys.bridge_verification_keys(),
    )
    assert envelope is not None
    return payload


def action_rows(ledger: Ledger) -> list[tuple[str, str, str, str]]:
    """(action, case_ref, victim_id, target) for every recorded action, in order."""
    with ledger.engine.connect() as connection:
        rows = connection.execute(select(t.actions).order_by(t.actions.c.id)).all()
    return [(r.action, r.case_ref, r.victim_id, r.target) for r in rows]


def processed_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(t.processed_events)).scalar_one()
        )


# --- the shared samples -----------------------------------------------------------------------


class TestSamples:
    def test_the_burglary_sample_is_referred_and_published_to_the_provider(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        verdict = service.handle(inbound(sample("crime-recorded-burglary.json")))

        assert verdict == Ack()
        [message] = publisher.sent
        assert message.type == CREATED
        assert (message.exchange, message.routing_key) == (REFERRALS_EXCHANGE, LANCASHIRE)
        assert message.message_id == ids.referral_id(LANCASHIRE, "LC-26-0114233", "P-00918273")
        assert ledger.counts()["totals"]["unsent"] == 0

    def test_the_burglary_referral_opens_to_a_signed_payload_for_the_victim(
        self, service: ReferralService, publisher: RecordingPublisher, keys: KeyMaterial
    ) -> None:
        service.handle(inbound(sample("crime-recorded-burglary.json")))

        [message] = publisher.sent
        payload = opened(message, keys, LANCASHIRE)
        assert payload["referral_id"] == message.message_id
        assert payload["victim"]["victim_id"] == "P-00918273"
        assert (payload["provider"], payload["service"]) == (LANCASHIRE, "general")
        assert message.event["datacontenttype"] == "application/jose"

    def test_the_asb_incident_sample_with_consent_given_is_referred(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        verdict = service.handle(
            inbound(sample("incident-recorded-asb.json"), routing_key="incident.recorded")
        )

        assert verdict == Ack()
        assert [m.type for m in publisher.sent] == [CREATED]
        assert action_rows(ledger) == [("referral", "INC-20261124-0988", "P-00455120", LANCASHIRE)]

    def test_the_consent_sample_after_its_crime_was_referred_updates_the_consent_held(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        """The provider held "no objection"; it is told consent was given (rules.md: any other
        change to what the provider holds is an update), and nobody is referred twice."""
        service.handle(inbound(sample("crime-recorded-burglary.json")))
        verdict = service.handle(
            inbound(sample("consent-updated.json"), routing_key="consent.updated")
        )

        assert verdict == Ack()
        assert [m.type for m in publisher.sent] == [CREATED, UPDATED]
        assert [row[0] for row in action_rows(ledger)] == ["referral", "update"]


# --- duplicates and versions ------------------------------------------------------------------


class TestDuplicatesAndVersions:
    def test_a_repeated_event_id_is_a_duplicate_with_no_further_effect(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        body = cloudevent(make_crime(), event_type="crime.recorded", event_id="event-1")
        service.handle(inbound(body))
        before = (list(publisher.sent), action_rows(ledger), processed_count(ledger))

        verdict = service.handle(inbound(body))

        assert verdict == Ack()
        assert (publisher.sent, action_rows(ledger), processed_count(ledger)) == before

    def test_processing_a_repeated_event_reports_it_as_a_duplicate(
        self, service: ReferralService
    ) -> None:
        body = cloudevent(make_crime(), event_type="crime.recorded", event_id="event-1")
        service.handle(inbound(body))
        assert service.process(parse_inbound(body)).result == "duplicate"

    def test_an_older_version_of_a_record_is_stale_and_changes_nothing(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        service.handle(crime_message(make_crime(version=2)))
        before = (list(publisher.sent), action_rows(ledger))

        older = cloudevent(make_crime(version=1), event_type="crime.recorded")
        handled = service.process(parse_inbound(older))

        assert handled.result == "stale_version"
        assert handled.decisions == ()
        assert (publisher.sent, action_rows(ledger)) == before

    def test_an_equal_version_under_a_new_event_id_is_stale(self, service: ReferralService) -> None:
        service.handle(crime_message(make_crime(version=1), event_id="first"))
        again = cloudevent(make_crime(version=1), event_type="crime.recorded", event_id="second")

        assert service.process(parse_inbound(again)).result == "stale_version"

    def test_a_newer_version_is_decided_again(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message(sexual_crime()))  # explicit consent: held
        declined = make_victim(consent=ConsentState.DECLINED, consent_at=START)
        newer = make_crime(declined, category="sexual", ho_class="19C", version=2)

        assert service.handle(crime_message(newer)) == Ack()
        assert [m.event["data"]["reason"] for m in publisher.of_type(LEAFLET)] == [
            "consent_needed",
            "declined",
        ]


# --- consent and holds ------------------------------------------------------------------------


class TestConsentAndHolds:
    def test_consent_before_its_case_waits_for_the_case(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        body = consent_message("given", at=REPORTED_AT + timedelta(minutes=30)).body
        handled = service.process(parse_inbound(body))

        assert handled.result == "awaiting_case"
        assert publisher.sent == []

    def test_a_case_arriving_after_its_consent_is_referred_with_that_consent(
        self, service: ReferralService, publisher: RecordingPublisher, keys: KeyMaterial
    ) -> None:
        service.handle(consent_message("given", at=REPORTED_AT + timedelta(minutes=30)))

        assert service.handle(crime_message(sexual_crime())) == Ack()

        [message] = publisher.sent
        payload = opened(message, keys, LANCASHIRE)
        assert payload["service"] == "sexual_violence"
        assert payload["consent"]["state"] == "given"
        assert payload["consent"]["regime"] == "explicit"
        assert payload["lawful_basis"] == "consent"  # the consent event's own basis wins

    def test_an_explicit_consent_case_is_held_and_the_officer_asked_at_once(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        """rules.md version 2, change 2: the task is due by the leaflet deadline (1 working
        day), and the hold only waits for consent (5 working days)."""
        assert service.handle(crime_message(sexual_crime())) == Ack()

        [task] = publisher.sent
        assert (task.type, task.event["data"]["reason"]) == (LEAFLET, "consent_needed")
        due_by = datetime.fromisoformat(task.event["data"]["due_by"])
        assert due_by == REPORTED_AT + timedelta(days=1)  # Tuesday, same wall-clock time
        assert due_by > START
        with ledger.transaction() as tx:
            hold = tx.load_state(CRIME_REF, {CRIME_REF}).history[VICTIM].hold
        assert hold is not None
        assert hold.open
        assert hold.until == REPORTED_AT + timedelta(days=7)  # 5 working days: next Monday

    def test_expiring_holds_before_the_consent_wait_ends_does_nothing(
        self,
        service: ReferralService,
        holds: HoldExpiry,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        service.handle(crime_message(sexual_crime()))
        clock.advance(timedelta(days=2))

        assert holds.expire() == 0
        assert [m.event["data"]["reason"] for m in publisher.sent] == ["consent_needed"]

    def test_a_hold_that_ends_without_consent_closes_with_no_second_task(
        self,
        service: ReferralService,
        holds: HoldExpiry,
        publisher: RecordingPublisher,
        ledger: Ledger,
        clock: FakeClock,
    ) -> None:
        service.handle(crime_message(sexual_crime()))
        clock.advance(timedelta(days=8))

        assert holds.expire() == 1

        [task] = publisher.sent
        assert (task.type, task.exchange, task.routing_key) == (
            LEAFLET,
            TASKS_EXCHANGE,
            "task.leaflet",
        )
        assert task.event["data"]["reason"] == "consent_needed"
        assert task.event["data"]["victim_id"] == VICTIM
        with ledger.transaction() as tx:
            hold = tx.load_state(CRIME_REF, {CRIME_REF}).history[VICTIM].hold
        assert hold is not None
        assert not hold.open
        assert ledger.due_holds(clock.now()) == []
        with ledger.engine.connect() as connection:
            reasons = connection.execute(
                select(t.decisions.c.outcome, t.decisions.c.reason).order_by(t.decisions.c.id)
            ).all()
        assert ("none", "consent_not_obtained") in [tuple(r) for r in reasons]

    def test_a_leaflet_task_carries_no_name_or_contact_details_of_the_victim(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message(sexual_crime()))

        [task] = publisher.sent
        assert not [marker for marker in PERSONAL_MARKERS if marker in task.body.decode()]

    def test_consent_arriving_after_the_hold_ended_still_refers(
        self,
        service: ReferralService,
        holds: HoldExpiry,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        service.handle(crime_message(sexual_crime()))
        clock.advance(timedelta(days=8))
        holds.expire()

        verdict = service.handle(consent_message("given", at=clock.now()))

        assert verdict == Ack()
        assert [m.type for m in publisher.sent] == [LEAFLET, CREATED]

    def test_expiring_holds_twice_issues_one_leaflet_task(
        self,
        service: ReferralService,
        holds: HoldExpiry,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        service.handle(crime_message(sexual_crime()))
        clock.advance(timedelta(days=8))
        holds.expire()
        clock.advance(timedelta(minutes=5))

        assert holds.expire() == 0
        assert len(publisher.of_type(LEAFLET)) == 1


# --- withdrawal -------------------------------------------------------------------------------


class TestWithdrawal:
    def test_withdrawal_after_a_referral_sends_a_sealed_withdrawal_naming_it(
        self,
        service: ReferralService,
        publisher: RecordingPublisher,
        keys: KeyMaterial,
        clock: FakeClock,
    ) -> None:
        service.handle(crime_message(make_crime()))
        [referral] = publisher.sent
        clock.advance(timedelta(hours=2))

        verdict = service.handle(consent_message("withdrawn", at=clock.now()))

        assert verdict == Ack()
        [withdrawal] = publisher.of_type(WITHDRAWN)
        assert withdrawal.message_id == ids.withdrawal_id(referral.message_id)
        assert withdrawal.routing_key == LANCASHIRE
        payload = opened(withdrawal, keys, LANCASHIRE)
        assert payload["referral_id"] == referral.message_id
        assert (payload["case_ref"], payload["victim_id"]) == (CRIME_REF, VICTIM)
        assert (payload["provider"], payload["reason"]) == (LANCASHIRE, "withdrawn")
        assert withdrawal.event["schemaversion"] == 2

    def test_withdrawal_without_a_referral_sends_nothing(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message(sexual_crime()))  # held, not referred

        assert service.handle(consent_message("withdrawn", at=START)) == Ack()
        assert [m.type for m in publisher.sent] == [LEAFLET]

    def test_consent_given_after_a_withdrawal_refers_again_under_a_new_id(
        self, service: ReferralService, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        service.handle(crime_message(make_crime()))
        clock.advance(timedelta(hours=1))
        service.handle(consent_message("withdrawn", at=clock.now()))
        clock.advance(timedelta(hours=1))

        service.handle(consent_message("given", at=clock.now()))

        assert [m.type for m in publisher.sent] == [CREATED, WITHDRAWN, CREATED]
        first, _, again = publisher.sent
        assert first.message_id == ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
        assert again.message_id == ids.referral_id_for(LANCASHIRE, CRIME_REF, VICTIM, 2)


# --- linked incidents and crimes --------------------------------------------------------------


class TestLinkedCases:
    def test_a_crime_linking_an_already_referred_incident_updates_instead_of_referring(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        consenting = make_victim(consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        service.handle(incident_message(make_incident(consenting)))
        crime = make_crime(make_victim()).model_copy(
            update={"linked_incident_refs": (INCIDENT_REF,)}
        )

        assert service.handle(crime_message(crime)) == Ack()

        assert [m.type for m in publisher.sent] == [CREATED, UPDATED]
        assert [(a, ref) for a, ref, _, _ in action_rows(ledger)] == [
            ("referral", INCIDENT_REF),
            ("update", CRIME_REF),
        ]

    def test_an_incident_naming_an_already_referred_crime_does_not_refer_again(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message(make_crime()))
        consenting = make_victim(consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        incident = make_incident(consenting).model_copy(update={"linked_crime_ref": CRIME_REF})

        assert service.handle(incident_message(incident)) == Ack()
        assert [m.type for m in publisher.sent] == [CREATED]

    def test_consent_recorded_against_a_linked_incident_refers_under_its_crime(
        self, service: ReferralService, publisher: RecordingPublisher, keys: KeyMaterial
    ) -> None:
        service.handle(incident_message(make_incident()))  # no consent: a leaflet task
        crime = sexual_crime().model_copy(update={"linked_incident_refs": (INCIDENT_REF,)})
        service.handle(crime_message(crime))  # explicit consent: held

        service.handle(consent_message("given", at=START, case_ref=INCIDENT_REF))

        [created] = publisher.of_type(CREATED)
        assert created.message_id == ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
        assert opened(created, keys, LANCASHIRE)["service"] == "sexual_violence"

    def test_an_incident_that_gave_rise_to_two_crimes_never_refers_a_victim_twice(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        """Review finding 4: a second crime naming the incident must not split the matter."""
        consenting = make_victim(consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        service.handle(incident_message(make_incident(consenting)))
        for crime_ref in (CRIME_REF, "LC-26-0000777"):
            crime = make_crime(make_victim()).model_copy(
                update={"crime_ref": crime_ref, "linked_incident_refs": (INCIDENT_REF,)}
            )
            assert service.handle(crime_message(crime)) == Ack()

        later = START + timedelta(hours=2)
        assert service.handle(consent_message("given", at=later, case_ref=CRIME_REF)) == Ack()
        assert service.handle(consent_message("given", at=later, case_ref="LC-26-0000777")) == Ack()

        assert [m.type for m in publisher.sent].count(CREATED) == 1
        referrals = [row for row in action_rows(ledger) if row[0] == "referral"]
        assert [(ref, victim) for _, ref, victim, _ in referrals] == [(INCIDENT_REF, VICTIM)]
        updates = [ref for action, ref, _, _ in action_rows(ledger) if action == "update"]
        assert set(updates) == {CRIME_REF}  # the other crime leaves it to the first

    def test_an_open_hold_under_an_incident_ends_when_a_crime_is_recorded_from_it(
        self, service: ReferralService, ledger: Ledger
    ) -> None:
        """Review finding 5: the crime decides; the incident's own hold must not linger."""
        with ledger.transaction() as tx:
            tx.open_hold(INCIDENT_REF, VICTIM, REPORTED_AT + timedelta(days=1))
        incident = make_incident().model_copy(update={"linked_crime_ref": CRIME_REF})

        assert service.handle(incident_message(incident)) == Ack()

        with ledger.transaction() as tx:
            assert tx.open_holds({INCIDENT_REF}) == []


class TestHoldExpiryFailures:
    def test_a_case_that_fails_at_hold_expiry_is_postponed_and_the_others_still_end(
        self, ledger: Ledger, keys: KeyMaterial, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        """Review finding 1: one bad case must not stop every other hold from ending."""
        layer = make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
        service = layer.service
        service.handle(crime_message(sexual_crime()))
        other = sexual_crime().model_copy(update={"crime_ref": "LC-26-0000888"})
        service.handle(crime_message(other))
        with ledger.engine.begin() as connection:  # corrupt one stored snapshot
            connection.execute(
                t.records.update()
                .where(t.records.c.record_ref == CRIME_REF)
                .values(snapshot={"not": "a crime"})
            )
        clock.advance(timedelta(days=8))

        layer.holds.expire()

        with ledger.transaction() as tx:
            postponed = tx.load_state(CRIME_REF, {CRIME_REF}).history[VICTIM].hold
            ended = tx.load_state("LC-26-0000888", {"LC-26-0000888"}).history[VICTIM].hold
        assert postponed is not None
        assert postponed.open
        assert postponed.until > clock.now()
        assert ended is not None
        assert not ended.open
        # The two consent_needed tasks went out at once; the ended hold sends nothing more.
        assert [m.type for m in publisher.sent] == [LEAFLET, LEAFLET]


# --- failures ---------------------------------------------------------------------------------


class TestProcessingErrors:
    @pytest.fixture
    def failing_service(
        self, ledger: Ledger, publisher: RecordingPublisher, clock: FakeClock
    ) -> ReferralService:
        error = RuntimeError(f"cannot seal for {' '.join(FAKE_NAME)} on {FAKE_PHONE}")
        return make_service(
            ledger=ledger,
            sealer=FailingSealer(error),
            publisher=publisher,
            clock=clock,
            max_processing_attempts=3,
        )

    def test_a_failing_event_is_retried_until_the_attempt_limit_then_dead_lettered(
        self, failing_service: ReferralService
    ) -> None:
        message = crime_message(make_crime(), event_id="event-1")

        verdicts = [failing_service.handle(replace(message, attempts=n)) for n in range(3)]

        assert [type(v) for v in verdicts] == [Retry, Retry, DeadLetter]
        last = verdicts[-1]
        assert isinstance(last, DeadLetter)
        assert (last.reason, last.attempts) == (DeadLetterReason.PROCESSING_ERROR, 3)

    def test_a_processing_error_dead_letter_carries_no_personal_data(
        self, failing_service: ReferralService
    ) -> None:
        message = crime_message(make_crime(), event_id="event-1")
        with capture_logs() as logs:
            verdicts = [failing_service.handle(replace(message, attempts=n)) for n in range(3)]

        last = verdicts[-1]
        assert isinstance(last, DeadLetter)
        assert "RuntimeError" in last.detail
        shown = last.detail + json.dumps(logs, default=str) + repr(verdicts)
        assert not [marker for marker in PERSONAL_MARKERS if marker in shown]

    def test_a_failed_attempt_leaves_nothing_in_the_ledger(
        self, failing_service: ReferralService, ledger: Ledger
    ) -> None:
        failing_service.handle(crime_message(make_crime()))

        assert action_rows(ledger) == []
        assert processed_count(ledger) == 0
        assert ledger.counts()["totals"]["unsent"] == 0

    def test_the_attempt_count_starts_again_after_a_dead_letter(
        self, failing_service: ReferralService
    ) -> None:
        """A replayed dead letter carries no attempts: it gets its attempts afresh."""
        message = crime_message(make_crime(), event_id="event-1")
        last = failing_service.handle(replace(message, attempts=2))
        assert isinstance(last, DeadLetter)

        assert failing_service.handle(message) == Retry("RuntimeError (attempt 1)", attempts=1)


class TestLedgerUnavailable:
    def test_an_unreachable_ledger_gives_retry_without_the_password(
        self, keys: KeyMaterial, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        # Port 1 on the loopback interface: nothing listens, so every connection is refused.
        engine = create_engine("postgresql+psycopg://rb:secret-pw@127.0.0.1:1/rb")
        service = make_service(
            ledger=Ledger(engine), sealer=keys.sealer(), publisher=publisher, clock=clock
        )
        try:
            verdict = service.handle(crime_message(make_crime()))
        finally:
            engine.dispose()

        assert isinstance(verdict, Retry)
        assert "secret-pw" not in verdict.detail
        assert publisher.sent == []

    def test_a_ledger_outage_after_commit_still_acks_and_the_outbox_is_kept(
        self, ledger_url: str, keys: KeyMaterial, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        # Issue 3: the event's effects are committed, so it is acked; the scheduler delivers.
        flaky = OutageAfterCommitLedger.open(ledger_url)
        try:
            service = make_service(
                ledger=flaky, sealer=keys.sealer(), publisher=publisher, clock=clock
            )
            verdict = service.handle(crime_message(make_crime()))
            kept = flaky.deliveries()
        finally:
            flaky.dispose()

        assert verdict == Ack()
        assert [m.message_id for m in kept] == [ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)]


class TestFullDisk:
    """SQLite answering SQLITE_FULL ("database or disk is full"). Capped here with
    max_page_count; the fault run (tests/e2e/fault_runs/test_full_disk.py) fills a real
    filesystem."""

    def test_an_event_meeting_a_full_ledger_is_retried_uncounted_and_recorded_once_there_is_room(
        self, tmp_path: Path, keys: KeyMaterial, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        disk = CappedSqlite(ledger)
        service = make_service(
            ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock
        )
        crimes = [make_crime(make_victim(VICTIM), crime_ref=f"CR-FULL-{n:03d}") for n in range(60)]
        try:
            disk.fill()
            # The pages the ledger has fill up within a few events: then the next one fails.
            with capture_logs() as logs:
                for crime in crimes:
                    full = service.handle(crime_message(crime))
                    if full != Ack():
                        break
            recorded_while_full = processed_count(ledger)
            sent_while_full = len(publisher.sent)
            disk.make_room()
            later = service.handle(crime_message(crime))
            recorded = processed_count(ledger)
        finally:
            ledger.dispose()

        # Not the message's fault: retried through the broker without using up its attempts,
        # so however long the disk stays full it is never dead-lettered; nothing half-written.
        assert full == Retry(detail="ledger unavailable", attempts=None)
        retry = next(line for line in logs if line["event"] == "event.retry")
        assert "disk is full; free space on it" in retry["detail"]
        assert later == Ack()
        assert recorded == recorded_while_full + 1
        assert len(publisher.sent) == sent_while_full + 1
        assert publisher.sent[-1].message_id == ids.referral_id(LANCASHIRE, crime.crime_ref, VICTIM)


class CappedSqlite:
    """Makes a SQLite ledger 'full': no page beyond those it has (PRAGMA max_page_count)."""

    def __init__(self, ledger: Ledger) -> None:
        self._engine = ledger.engine
        self._cap: int | None = None

        @event.listens_for(self._engine, "connect")
        def _cap(dbapi_connection: Any, _record: Any) -> None:
            if self._cap is not None:
                dbapi_connection.execute(f"PRAGMA max_page_count = {self._cap}")

    def fill(self) -> None:
        with self._engine.connect() as connection:
            self._cap = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())
        self._engine.dispose()  # pooled connections pick the cap up when they reconnect

    def make_room(self) -> None:
        self._cap = None
        self._engine.dispose()


class OutageAfterCommitLedger(Ledger):
    """A ledger whose database goes away once, just when the outbox is read for delivery."""

    outages = 1

    def due_deliveries(
        self,
        now: datetime,
        *,
        event_id: str | None = None,
        created_before: datetime | None = None,
        after: int | None = None,
        limit: int = 200,
        skip_providers: Collection[str | None] = (),
        event_ids: Collection[str] | None = None,
    ) -> list[PendingDelivery]:
        if self.outages > 0:
            self.outages -= 1
            raise LedgerUnavailableError("ledger unavailable (test outage)")
        return super().due_deliveries(
            now,
            event_id=event_id,
            created_before=created_before,
            after=after,
            limit=limit,
            skip_providers=skip_providers,
            event_ids=event_ids,
        )


#: RecordingPublisher failures that exhaust the default in-place attempts, so a row is parked.
IN_PLACE_ATTEMPTS = 3


class TestPublishFailures:
    def test_a_publisher_failure_parks_the_row_and_still_acks(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        publisher = RecordingPublisher(fail_times=IN_PLACE_ATTEMPTS)
        service = make_service(
            ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock
        )

        verdict = service.handle(crime_message(make_crime()))

        assert verdict == Ack()
        assert publisher.sent == []
        [parked] = ledger.deliveries(state="undelivered")
        assert parked.message_id == ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
        assert parked.next_attempt_at is not None
        assert parked.next_attempt_at > clock.now()
        assert (parked.last_error or "").startswith("publish_refused:")

    def test_handling_tries_once_and_a_scheduler_pass_retries_in_place(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        # Fails while handling (one attempt, no retry there: the consumer is never held), then
        # once more in the scheduler's pass, which retries it in place.
        publisher = RecordingPublisher(fail_times=2)
        layer = make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
        service = layer.service

        assert service.handle(crime_message(make_crime())) == Ack()
        assert publisher.sent == []
        clock.advance(timedelta(minutes=2))
        assert layer.scheduled.flush() == 1
        assert [m.type for m in publisher.sent] == [CREATED]
        assert ledger.counts()["totals"]["unsent"] == 0

    def test_a_later_flush_publishes_a_parked_row_once_it_is_due(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        publisher = RecordingPublisher(fail_times=IN_PLACE_ATTEMPTS)
        layer = make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
        service = layer.service
        service.handle(crime_message(make_crime()))

        assert layer.scheduled.flush() == 0
        clock.advance(timedelta(minutes=2))
        assert layer.scheduled.flush() == 1
        assert [m.type for m in publisher.sent] == [CREATED]
        assert ledger.counts()["totals"]["unsent"] == 0


# --- bad input --------------------------------------------------------------------------------

VALID_CRIME = json.loads(cloudevent(make_crime(), event_type="crime.recorded", event_id="e-1"))


def _variant(**changes: Any) -> bytes:
    return json.dumps({**VALID_CRIME, **changes}).encode()


BAD_INPUTS = [
    pytest.param(b"{not json", DeadLetterReason.INVALID_JSON, id="invalid_json"),
    pytest.param(b'{"id": "\xff"}', DeadLetterReason.INVALID_ENCODING, id="invalid_encoding"),
    pytest.param(b"[" + b" " * 5000 + b"]", DeadLetterReason.TOO_LARGE, id="too_large"),
    pytest.param(b"[1, 2]", DeadLetterReason.NOT_CLOUDEVENT, id="not_cloudevent"),
    pytest.param(_variant(type="crime.deleted"), DeadLetterReason.UNKNOWN_TYPE, id="unknown_type"),
    pytest.param(
        _variant(schemaversion=2), DeadLetterReason.UNSUPPORTED_VERSION, id="unsupported_version"
    ),
    pytest.param(
        _variant(data={**VALID_CRIME["data"], "version": 0}),
        DeadLetterReason.SCHEMA_VIOLATION,
        id="schema_violation",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("body", "reason"), BAD_INPUTS)
    def test_bad_input_is_dead_lettered_with_its_reason_and_recorded_nowhere(
        self,
        ledger: Ledger,
        keys: KeyMaterial,
        publisher: RecordingPublisher,
        clock: FakeClock,
        body: bytes,
        reason: DeadLetterReason,
    ) -> None:
        service = make_service(
            ledger=ledger,
            sealer=keys.sealer(),
            publisher=publisher,
            clock=clock,
            max_message_bytes=4096,
        )

        verdict = service.handle(inbound(body))

        assert isinstance(verdict, DeadLetter)
        assert verdict.reason == reason
        assert verdict.attempts == 1
        assert processed_count(ledger) == 0
        assert publisher.sent == []

    def test_a_schema_violation_detail_does_not_quote_the_victims_data(
        self, service: ReferralService
    ) -> None:
        data = json.loads(json.dumps(VALID_CRIME["data"]))
        data["victims"][0]["date_of_birth"] = f"born {FAKE_PHONE}"
        verdict = service.handle(inbound(_variant(data=data)))

        assert isinstance(verdict, DeadLetter)
        assert verdict.reason == DeadLetterReason.SCHEMA_VIOLATION
        assert FAKE_PHONE not in verdict.detail


# --- ordering: commit, then publish, then ack -------------------------------------------------


@dataclass
class LedgerProbe:
    """What a separate database connection saw at the moment the publisher was called.

    Each entry: (message id, outbox row committed, its event marked processed, not yet marked
    published).
    """

    url: str
    seen: list[tuple[str, bool, bool, bool]]

    def __call__(self, message: PublishedMessage) -> None:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                row = connection.execute(
                    select(t.outbox.c.event_id, t.outbox.c.published_at).where(
                        t.outbox.c.message_id == message.message_id
                    )
                ).first()
                if row is None:
                    self.seen.append((message.message_id, False, False, False))
                    return
                processed = connection.execute(
                    select(t.processed_events.c.event_id).where(
                        t.processed_events.c.event_id == row.event_id
                    )
                ).first()
                self.seen.append(
                    (message.message_id, True, processed is not None, row.published_at is None)
                )
        finally:
            engine.dispose()


class TestOrdering:
    def test_the_outbox_row_and_processed_event_are_committed_before_publishing(
        self, ledger: Ledger, ledger_url: str, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        probe = LedgerProbe(url=ledger_url, seen=[])
        publisher = RecordingPublisher(on_publish=probe)
        service = make_service(
            ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock
        )

        service.handle(crime_message(make_crime()))

        referral_id = ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
        # Committed (visible from another connection), processed, and not yet marked published.
        assert probe.seen == [(referral_id, True, True, True)]

    def test_handle_acks_only_once_every_outbox_message_is_published_and_marked(
        self, service: ReferralService, publisher: RecordingPublisher, ledger: Ledger
    ) -> None:
        two_victims = make_crime(make_victim("P-0001"), make_victim("P-0002"))

        verdict = service.handle(crime_message(two_victims))

        assert verdict == Ack()
        assert len(publisher.of_type(CREATED)) == 2
        assert ledger.counts()["totals"]["unsent"] == 0


# --- crime data integrity (rules.md version 2, change 6) ---------------------------------------

CRIME_REVIEW = "officer.task.crime_review"
CALENDAR = WorkingDayCalendar()


def disclosed_incident(**changes: Any) -> IncidentRecorded:
    incident = make_incident(category="crime_reported", crime_disclosed=True)
    return incident.model_copy(update=changes)


def review_row(ledger: Ledger) -> Any:
    with ledger.engine.connect() as connection:
        return connection.execute(
            select(t.crime_reviews).where(t.crime_reviews.c.incident_ref == INCIDENT_REF)
        ).first()


class TestCrimeReview:
    def test_no_crime_recorded_24_hours_after_a_disclosure_gives_one_review_task(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        service.handle(incident_message(disclosed_incident()))
        assert scheduled.review_crime_recording() == 0  # not yet due
        clock.advance(timedelta(hours=24))

        assert scheduled.review_crime_recording() == 1
        clock.advance(timedelta(hours=1))
        assert scheduled.review_crime_recording() == 0

        [task] = publisher.of_type(CRIME_REVIEW)
        assert (task.exchange, task.routing_key) == (TASKS_EXCHANGE, "task.crime_review")
        data = task.event["data"]
        assert data["task_id"] == ids.crime_review_task_id(INCIDENT_REF)
        assert (data["incident_ref"], data["incident_category"]) == (
            INCIDENT_REF,
            "crime_reported",
        )
        assert data["reason"] == "crime_not_recorded"
        raised = START + timedelta(hours=24)
        assert datetime.fromisoformat(data["due_by"]) == CALENDAR.add_working_days(raised, 1)
        assert not [marker for marker in PERSONAL_MARKERS if marker in task.body.decode()]

    def test_a_crime_recorded_in_time_gives_no_task_and_records_the_resolution(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        publisher: RecordingPublisher,
        ledger: Ledger,
        clock: FakeClock,
    ) -> None:
        service.handle(incident_message(disclosed_incident()))
        clock.advance(timedelta(hours=3))
        crime = make_crime().model_copy(update={"linked_incident_refs": (INCIDENT_REF,)})
        service.handle(crime_message(crime))
        clock.advance(timedelta(days=2))

        assert scheduled.review_crime_recording() == 0
        assert publisher.of_type(CRIME_REVIEW) == []
        row = review_row(ledger)
        assert (row.resolution, row.raised_at) == ("recorded_in_time", None)

    def test_a_crime_recorded_after_the_task_is_recorded_as_the_resolution(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        publisher: RecordingPublisher,
        ledger: Ledger,
        clock: FakeClock,
    ) -> None:
        service.handle(incident_message(disclosed_incident()))
        clock.advance(timedelta(hours=30))
        scheduled.review_crime_recording()
        incident = disclosed_incident(version=2, linked_crime_ref=CRIME_REF)

        service.handle(incident_message(incident))

        row = review_row(ledger)
        assert row.resolution == "recorded_after_review"
        assert row.resolved_at == clock.now()
        assert len(publisher.of_type(CRIME_REVIEW)) == 1

    def test_an_incident_with_no_crime_disclosed_is_never_reviewed(
        self, service: ReferralService, scheduled: ScheduledWork, ledger: Ledger, clock: FakeClock
    ) -> None:
        service.handle(incident_message(make_incident()))
        clock.advance(timedelta(days=3))

        assert scheduled.review_crime_recording() == 0
        assert review_row(ledger) is None


class TestCancelledCrime:
    def test_a_referral_not_yet_delivered_is_cancelled_when_the_crime_is_cancelled(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        publisher = RecordingPublisher(fail_times=1)  # the referral is parked, not delivered
        layer = make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
        service = layer.service
        service.handle(crime_message(make_crime()))
        assert publisher.sent == []
        cancelled = make_crime(version=2, status=CrimeStatus.CANCELLED)

        service.handle(crime_message(cancelled))
        clock.advance(timedelta(hours=1))
        layer.scheduled.flush()

        assert publisher.sent == []
        [row] = [d for d in ledger.deliveries(state="cancelled")]
        assert row.message_id == ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)

    def test_a_referral_already_delivered_stays_when_the_crime_is_cancelled(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        service.handle(crime_message(make_crime()))

        service.handle(crime_message(make_crime(version=2, status=CrimeStatus.CANCELLED)))

        assert [m.type for m in publisher.sent] == [CREATED]


class TestOrderingPerReferral:
    def test_an_update_never_overtakes_the_referral_it_concerns(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        publisher = RecordingPublisher(fail_times=1)  # the referral is parked
        layer = make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
        service = layer.service
        service.handle(crime_message(make_crime()))
        changed = make_crime(make_victim(phone="07700 900456"), version=2)

        service.handle(crime_message(changed))  # the update waits for its referral
        assert publisher.sent == []
        clock.advance(timedelta(hours=1))
        layer.scheduled.flush()

        referral_id = ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
        assert [(m.type, m.message_id) for m in publisher.sent] == [
            (CREATED, referral_id),
            (UPDATED, ids.update_id(referral_id, 2)),
        ]


# --- upgrading a ledger written by the release before rules version 2 ---------------------------

SCHEMA_3_LEDGER = Path(__file__).parent / "data" / "ledger-schema-3.sqlite3"


class TestUpgradeFromSchema3:
    """A ledger written by the release before rules version 2 (schema 3) keeps working after the
    upgrade: migrated in place at start-up, its referrals are generation 1 with unchanged ids.

    `data/ledger-schema-3.sqlite3` was written by that release's own code (see
    `data/make_ledger_schema_3.py`), not rebuilt from today's tables.
    """

    @pytest.fixture
    def ledger(self, tmp_path: Path) -> Iterator[Ledger]:
        copy = tmp_path / "ledger.sqlite3"
        shutil.copyfile(SCHEMA_3_LEDGER, copy)
        opened = Ledger.open(f"sqlite:///{copy}")
        yield opened
        opened.dispose()

    @pytest.fixture
    def clock(self) -> FakeClock:
        # After everything that release wrote (its clock ran to START + 2 hours).
        return FakeClock(START + timedelta(hours=2))

    def test_the_fixture_is_a_schema_3_ledger(self) -> None:
        import sqlite3

        with sqlite3.connect(SCHEMA_3_LEDGER) as connection:
            (version,) = connection.execute("SELECT value FROM rb_schema_info").fetchone()
        assert version == "3"

    def test_opening_migrates_it_to_this_schema_in_place(self, ledger: Ledger) -> None:
        with ledger.engine.connect() as connection:
            version = connection.execute(select(t.schema_info.c.value)).scalar_one()
            keys = inspect(connection).get_pk_constraint(t.processed_events.name)
            seen = connection.execute(
                select(t.processed_events.c.source, t.processed_events.c.event_id)
            ).all()
        assert version == str(t.SCHEMA_VERSION)
        assert keys["constrained_columns"] == ["source", "event_id"]
        assert {(row.source, row.event_id) for row in seen} == {
            ("", "main-event-1"),
            ("", "main-event-2"),
            ("", "main-event-3"),
        }

    def test_its_referrals_are_generation_1_with_unchanged_ids(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            history = tx.load_state(CRIME_REF, {CRIME_REF}).history
        withdrawn, kept = history["P-0001"], history["P-0002"]
        assert [(r.referral_id, r.generation) for r in withdrawn.referrals] == [
            (ids.referral_id(LANCASHIRE, CRIME_REF, "P-0001"), 1)
        ]
        assert [w.reason for w in withdrawn.withdrawals] == ["withdrawn"]
        assert withdrawn.live() == ()
        assert [(r.referral_id, r.generation) for r in kept.live()] == [
            (ids.referral_id(LANCASHIRE, CRIME_REF, "P-0002"), 1)
        ]

    def test_an_event_it_processed_is_still_a_duplicate(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        crime = make_crime(make_victim("P-0001"), make_victim("P-0002"))
        body = cloudevent(crime, event_type="crime.recorded", event_id="main-event-1")

        assert service.process(parse_inbound(body)).result == "duplicate"
        assert publisher.sent == []

    def test_a_referral_it_sent_is_updated_under_its_own_id(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        changed = make_victim("P-0002", phone=FAKE_PHONE.replace("123", "456"))
        crime = make_crime(make_victim("P-0001"), changed, version=2)

        service.handle(inbound(cloudevent(crime, event_type="crime.recorded")))

        [update] = publisher.sent
        referral_id = ids.referral_id(LANCASHIRE, CRIME_REF, "P-0002")
        assert update.type == "victim.referral.updated"
        assert update.message_id == ids.update_id(referral_id, 2)

    def test_a_victim_it_withdrew_who_agrees_again_is_referred_as_generation_2(
        self, service: ReferralService, publisher: RecordingPublisher, clock: FakeClock
    ) -> None:
        consent = {
            "case_ref": CRIME_REF,
            "victim_id": "P-0001",
            "referral": ConsentState.GIVEN.value,
            "recorded_at": clock.now().isoformat(),
            "recorded_by": "PC 0000",
            "lawful_basis": None,
        }

        service.handle(
            inbound(
                cloudevent(consent, event_type="consent.updated"), routing_key="consent.updated"
            )
        )

        created = [m for m in publisher.sent if m.type == "victim.referral.created"]
        assert [m.message_id for m in created] == [
            ids.referral_id_for(LANCASHIRE, CRIME_REF, "P-0001", 2)
        ]

    def test_a_victim_it_held_is_asked_for_consent_when_its_old_hold_ends(
        self,
        holds: HoldExpiry,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        """The old release held for 1 working day with no task; now the officer is asked."""
        clock.advance(timedelta(days=2))

        assert holds.expire() == 1

        [task] = publisher.sent
        assert task.event["data"]["reason"] == "consent_needed"
        assert task.event["data"]["victim_id"] == "P-0003"
