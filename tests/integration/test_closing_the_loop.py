"""Provider outcomes, task completions and escalations through ReferralService over the real
ledger (SQLite and PostgreSQL), with real sealing and a recording publisher (issue 8)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import ConsentState, DeadLetterReason
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.scheduled import ScheduledWork
from referral_bridge.transport import Ack, DeadLetter
from tests.fakes import (
    START,
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    ledger_url_for,
    make_layer,
)
from tests.integration.test_service import (
    CRIME_REVIEW,
    LANCASHIRE,
    LEAFLET,
    PERSONAL_MARKERS,
    VICTIM,
    crime_message,
    disclosed_incident,
    incident_message,
)
from tests.unit.factories import CRIME_REF, INCIDENT_REF, make_crime, make_victim

pytestmark = pytest.mark.integration

ESCALATION = "officer.task.escalation"
HOMICIDE = "homicide-service"
CALENDAR = WorkingDayCalendar()
REFERRAL_ID = ids.referral_id(LANCASHIRE, CRIME_REF, VICTIM)
DECLINED_TASK = ids.leaflet_task_id(CRIME_REF, VICTIM, "declined")


def outcome_message(
    outcome: str,
    *,
    at: datetime,
    referral_id: str = REFERRAL_ID,
    provider: str = LANCASHIRE,
    routing_key: str | None = None,
    event_id: str | None = None,
) -> Any:
    data = {"referral_id": referral_id, "provider": provider, "outcome": outcome, "at": at}
    body = cloudevent(
        {**data, "at": at.isoformat()}, event_type="victim.referral.outcome", event_id=event_id
    )
    return inbound(body, routing_key=routing_key or provider)


def completion_message(
    task_id: str,
    *,
    at: datetime,
    result: str = "leaflet_given",
    by: str = "PC 0000",
    event_id: str | None = None,
) -> Any:
    data = {
        "task_id": task_id,
        "completed_at": at.isoformat(),
        "completed_by": by,
        "result": result,
    }
    return inbound(
        cloudevent(data, event_type="task.completed", event_id=event_id),
        routing_key="task.completed",
    )


def referred(service: ReferralService) -> None:
    """A burglary (opt-out regime): its victim is referred to Lancashire."""
    assert service.handle(crime_message(make_crime())) == Ack()


def declined(service: ReferralService) -> None:
    """A burglary whose victim declined: a leaflet task (`declined`), due in 5 working days."""
    victim = make_victim(consent=ConsentState.DECLINED, consent_at=START - timedelta(minutes=30))
    assert service.handle(crime_message(make_crime(victim))) == Ack()


def outcome_row(ledger: Ledger) -> Any:
    with ledger.engine.connect() as connection:
        return connection.execute(
            select(t.referral_outcomes).where(t.referral_outcomes.c.referral_id == REFERRAL_ID)
        ).first()


def task_rows(ledger: Ledger) -> dict[str, Any]:
    with ledger.engine.connect() as connection:
        return {row.task_id: row for row in connection.execute(select(t.tasks))}


def dead_letter_reason(verdict: object) -> DeadLetterReason:
    assert isinstance(verdict, DeadLetter), verdict
    return verdict.reason


class TestOutcomes:
    def test_contacted_is_recorded_with_when_the_victim_was_first_contacted(
        self, service: ReferralService, ledger: Ledger, publisher: RecordingPublisher
    ) -> None:
        referred(service)
        at = START + timedelta(hours=5)

        assert service.handle(outcome_message("contacted", at=at)) == Ack()

        row = outcome_row(ledger)
        assert (row.provider, row.case_ref, row.victim_id) == (LANCASHIRE, CRIME_REF, VICTIM)
        assert (row.outcome, row.at, row.first_contacted_at) == ("contacted", at, at)
        assert publisher.of_type(LEAFLET) == []

    def test_unable_to_contact_gives_one_leaflet_task_due_a_working_day_later(
        self,
        service: ReferralService,
        ledger: Ledger,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        referred(service)
        at = START + timedelta(days=1)
        clock.set(at + timedelta(minutes=5))

        service.handle(outcome_message("unable_to_contact", at=at))
        service.handle(outcome_message("unable_to_contact", at=at + timedelta(hours=2)))

        [task] = publisher.of_type(LEAFLET)
        data = task.event["data"]
        task_id = ids.leaflet_task_id(CRIME_REF, VICTIM, "provider_unable_to_contact")
        assert (data["task_id"], data["reason"], data["provider"]) == (
            task_id,
            "provider_unable_to_contact",
            LANCASHIRE,
        )
        assert datetime.fromisoformat(data["due_by"]) == CALENDAR.add_working_days(at, 1)
        assert data["officer"] == {"collar": "PC 0000", "unit": "Test Unit"}
        assert not [marker for marker in PERSONAL_MARKERS if marker in task.body.decode()]
        row = task_rows(ledger)[task_id]
        assert (row.kind, row.reason, row.case_ref, row.victim_id, row.officer_unit) == (
            "leaflet",
            "provider_unable_to_contact",
            CRIME_REF,
            VICTIM,
            "Test Unit",
        )
        assert (row.issued_at, row.due_by) == (clock.now(), CALENDAR.add_working_days(at, 1))
        assert outcome_row(ledger).at == at + timedelta(hours=2)

    def test_returned_gives_a_provider_returned_leaflet_task(
        self, service: ReferralService, publisher: RecordingPublisher
    ) -> None:
        referred(service)

        service.handle(outcome_message("returned", at=START + timedelta(hours=3)))

        [task] = publisher.of_type(LEAFLET)
        assert task.event["data"]["reason"] == "provider_returned"

    def test_a_repeat_and_an_older_outcome_change_nothing(
        self, service: ReferralService, ledger: Ledger, publisher: RecordingPublisher
    ) -> None:
        referred(service)
        later, earlier = START + timedelta(hours=6), START + timedelta(hours=2)
        service.handle(outcome_message("contacted", at=later, event_id="outcome-1"))

        service.handle(outcome_message("unable_to_contact", at=later, event_id="outcome-1"))
        service.handle(outcome_message("unable_to_contact", at=earlier, event_id="outcome-2"))

        row = outcome_row(ledger)
        assert (row.outcome, row.at, row.event_id) == ("contacted", later, "outcome-1")
        assert publisher.of_type(LEAFLET) == []

    def test_an_outcome_arriving_before_an_older_one_wins(
        self, service: ReferralService, ledger: Ledger
    ) -> None:
        referred(service)
        contacted_at = START + timedelta(hours=2)
        service.handle(outcome_message("declined_by_victim", at=START + timedelta(hours=8)))
        service.handle(outcome_message("accepted", at=START + timedelta(hours=1)))
        service.handle(outcome_message("contacted", at=contacted_at))

        row = outcome_row(ledger)
        assert (row.outcome, row.first_contacted_at) == ("declined_by_victim", None)

    @pytest.mark.parametrize(
        ("referral_id", "provider", "routing_key"),
        [
            (ids.referral_id(LANCASHIRE, "LC-99-9999999", VICTIM), LANCASHIRE, LANCASHIRE),
            (REFERRAL_ID, HOMICIDE, HOMICIDE),
            (REFERRAL_ID, LANCASHIRE, HOMICIDE),
            (ids.withdrawal_id(REFERRAL_ID), LANCASHIRE, LANCASHIRE),
        ],
        ids=["never-sent", "sent-to-another-provider", "routing-key-of-another", "not-a-referral"],
    )
    def test_an_outcome_for_no_referral_of_that_provider_is_dead_lettered(
        self,
        service: ReferralService,
        ledger: Ledger,
        referral_id: str,
        provider: str,
        routing_key: str,
    ) -> None:
        referred(service)
        message = outcome_message(
            "unable_to_contact",
            at=START,
            referral_id=referral_id,
            provider=provider,
            routing_key=routing_key,
        )

        verdict = service.handle(message)

        assert dead_letter_reason(verdict) is DeadLetterReason.UNKNOWN_REFERRAL
        assert isinstance(verdict, DeadLetter)
        assert not [marker for marker in PERSONAL_MARKERS if marker in verdict.detail]
        assert outcome_row(ledger) is None

    def test_only_outcomes_may_come_with_a_provider_routing_key(
        self, service: ReferralService, ledger: Ledger
    ) -> None:
        body = cloudevent(make_crime(), event_type="crime.recorded")

        verdict = service.handle(inbound(body, routing_key=LANCASHIRE))

        assert dead_letter_reason(verdict) is DeadLetterReason.SCHEMA_VIOLATION
        assert task_rows(ledger) == {}


class TestCompletions:
    def test_a_completion_closes_its_task_once(
        self, service: ReferralService, ledger: Ledger
    ) -> None:
        declined(service)
        first, second = START + timedelta(hours=2), START + timedelta(hours=3)

        assert service.handle(completion_message(DECLINED_TASK, at=first)) == Ack()
        service.handle(completion_message(DECLINED_TASK, at=second, result="not_required"))

        row = task_rows(ledger)[DECLINED_TASK]
        assert (row.completed_at, row.completed_by, row.result) == (
            first,
            "PC 0000",
            "leaflet_given",
        )
        with ledger.engine.connect() as connection:
            results = sorted(
                connection.execute(
                    select(t.processed_events.c.result).where(
                        t.processed_events.c.event_type == "task.completed"
                    )
                ).scalars()
            )
        assert results == ["task_already_completed", "task_completed"]

    def test_a_completion_for_an_unknown_task_is_dead_lettered(
        self, service: ReferralService
    ) -> None:
        verdict = service.handle(completion_message(ids.leaflet_task_id("X", "Y", "Z"), at=START))

        assert dead_letter_reason(verdict) is DeadLetterReason.UNKNOWN_TASK


class TestEscalation:
    def test_a_leaflet_task_open_at_its_due_time_is_escalated_once(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        ledger: Ledger,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        declined(service)
        due_by = task_rows(ledger)[DECLINED_TASK].due_by
        clock.set(due_by - timedelta(minutes=1))
        assert scheduled.escalate_overdue_tasks() == 0
        clock.set(due_by)

        assert scheduled.escalate_overdue_tasks() == 1
        assert scheduled.escalate_overdue_tasks() == 0

        [message] = publisher.of_type(ESCALATION)
        assert (message.routing_key, message.message_id) == (
            "task.escalation",
            ids.escalation_task_id(DECLINED_TASK),
        )
        assert message.event["data"] == {
            "task_id": ids.escalation_task_id(DECLINED_TASK),
            "escalates": DECLINED_TASK,
            "task_kind": "leaflet",
            "reason": "declined",
            "case_ref": CRIME_REF,
            "officer": {"collar": "PC 0000", "unit": "Test Unit"},
            "due_by": message.event["data"]["due_by"],
            "escalated_at": message.event["data"]["escalated_at"],
        }
        assert datetime.fromisoformat(message.event["data"]["due_by"]) == due_by
        rows = task_rows(ledger)
        assert rows[DECLINED_TASK].escalated_at == due_by
        assert rows[DECLINED_TASK].escalation_task_id == ids.escalation_task_id(DECLINED_TASK)
        escalation = rows[ids.escalation_task_id(DECLINED_TASK)]
        assert (escalation.kind, escalation.reason, escalation.due_by) == (
            "escalation",
            "declined",
            None,
        )

    def test_a_task_completed_in_time_is_not_escalated(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        declined(service)
        service.handle(completion_message(DECLINED_TASK, at=START + timedelta(hours=1)))
        clock.advance(timedelta(days=14))

        assert scheduled.escalate_overdue_tasks() == 0
        assert publisher.of_type(ESCALATION) == []

    def test_an_overdue_crime_review_is_escalated_and_a_resolved_one_is_not(
        self,
        service: ReferralService,
        scheduled: ScheduledWork,
        ledger: Ledger,
        publisher: RecordingPublisher,
        clock: FakeClock,
    ) -> None:
        other = "INC-20261123-0002"
        service.handle(incident_message(disclosed_incident()))
        service.handle(incident_message(disclosed_incident(incident_ref=other)))
        clock.advance(timedelta(hours=25))
        assert scheduled.review_crime_recording() == 2
        # A crime is recorded from the second incident: its review task is done.
        resolved = disclosed_incident(incident_ref=other, version=2, linked_crime_ref=CRIME_REF)
        service.handle(incident_message(resolved))
        clock.advance(timedelta(days=7))

        assert scheduled.escalate_overdue_tasks() == 1

        [message] = publisher.of_type(ESCALATION)
        data = message.event["data"]
        assert (data["escalates"], data["task_kind"], data["reason"], data["case_ref"]) == (
            ids.crime_review_task_id(INCIDENT_REF),
            "crime_review",
            "crime_not_recorded",
            INCIDENT_REF,
        )
        closed = task_rows(ledger)[ids.crime_review_task_id(other)]
        assert (closed.completed_by, closed.result, closed.escalated_at) == (
            None,
            "crime_recorded",
            None,
        )
        assert len(publisher.of_type(CRIME_REVIEW)) == 2


@pytest.mark.integration
def test_two_workers_escalating_at_once_on_postgresql_send_each_escalation_once(
    request: pytest.FixtureRequest, tmp_path: Path, keys: KeyMaterial
) -> None:
    """Several schedulers on one PostgreSQL ledger: each overdue task gives one escalation."""
    url = ledger_url_for("postgresql", request, tmp_path)
    ledgers = [Ledger.open(url) for _ in range(3)]
    clock = FakeClock(START)
    publishers = [RecordingPublisher() for _ in ledgers]
    services = [
        make_layer(ledger=lg, sealer=keys.sealer(), publisher=pub, clock=clock)
        for lg, pub in zip(ledgers, publishers, strict=True)
    ]
    try:
        for number in range(30):
            victim = make_victim(
                consent=ConsentState.DECLINED, consent_at=START - timedelta(minutes=30)
            )
            crime = make_crime(victim, crime_ref=f"LC-26-{number:07d}")
            services[0].service.handle(crime_message(crime))
        clock.advance(timedelta(days=14))
        start = threading.Barrier(len(services))
        counts: list[int] = []

        def escalate(layer: ServiceLayer) -> None:
            start.wait()
            counts.append(layer.scheduled.escalate_overdue_tasks())

        threads = [threading.Thread(target=escalate, args=(s,)) for s in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        sent = [m.message_id for p in publishers for m in p.of_type(ESCALATION)]
        assert sum(counts) == 30
        assert len(sent) == len(set(sent)) == 30
    finally:
        for opened in ledgers:
            opened.dispose()
