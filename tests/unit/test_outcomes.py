"""The pure decisions of closing the loop: outcomes, completions and escalations (issue 8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import (
    ProviderOutcome,
    ReferralOutcome,
    TaskCompleted,
    TaskKind,
    TaskOfficer,
    TaskResult,
)
from referral_bridge.core.outcomes import (
    CompletionResult,
    IssuedTask,
    OutcomeResult,
    RecordedOutcome,
    SentReferralFacts,
    decide_completion,
    decide_outcome,
    escalation_task,
    needs_escalation,
    outcome_source_problem,
)

CALENDAR = WorkingDayCalendar()
LANCASHIRE = "lancashire-victim-services"
#: Monday 23 November 2026, 14:00 UTC.
MONDAY = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
REFERRAL = SentReferralFacts(
    referral_id="ref-1", provider=LANCASHIRE, case_ref="LC-1", victim_id="P-1", withdrawn=False
)
OFFICER = TaskOfficer(collar="PC 1", unit="Response A")


def outcome(kind: ProviderOutcome, at: datetime = MONDAY, **changes: str) -> ReferralOutcome:
    fields = {"referral_id": "ref-1", "provider": LANCASHIRE, **changes}
    return ReferralOutcome(**fields, outcome=kind, at=at)


def decided(
    kind: ProviderOutcome,
    *,
    recorded: RecordedOutcome | None = None,
    referral: SentReferralFacts = REFERRAL,
    leaflet_issued: bool = False,
    at: datetime = MONDAY,
    received_at: datetime | None = None,
) -> tuple[OutcomeResult, str | None, datetime | None]:
    effect = decide_outcome(
        outcome(kind, at),
        recorded,
        referral,
        leaflet_issued=leaflet_issued,
        received_at=received_at or at + timedelta(minutes=1),
        calendar=CALENDAR,
    )
    return effect.result, effect.leaflet_reason, effect.leaflet_due_by


TUESDAY_14 = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


class TestOutcomeDecision:
    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            (ProviderOutcome.ACCEPTED, (OutcomeResult.RECORDED, None, None)),
            (ProviderOutcome.CONTACTED, (OutcomeResult.RECORDED, None, None)),
            (ProviderOutcome.DECLINED_BY_VICTIM, (OutcomeResult.RECORDED, None, None)),
            (
                ProviderOutcome.UNABLE_TO_CONTACT,
                (OutcomeResult.RECORDED, "provider_unable_to_contact", TUESDAY_14),
            ),
            (ProviderOutcome.RETURNED, (OutcomeResult.RECORDED, "provider_returned", TUESDAY_14)),
        ],
    )
    def test_each_outcome_on_a_fresh_referral(
        self, kind: ProviderOutcome, expected: tuple[OutcomeResult, str | None, datetime | None]
    ) -> None:
        assert decided(kind) == expected

    def test_the_leaflet_is_due_a_working_day_after_a_friday_outcome_on_monday(self) -> None:
        friday = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)

        _, _, due_by = decided(ProviderOutcome.RETURNED, at=friday)

        assert due_by == datetime(2026, 11, 30, 16, 30, tzinfo=UTC)

    def test_an_outcome_stamped_in_the_future_counts_from_its_arrival(self) -> None:
        arrived = MONDAY
        _, _, due_by = decided(
            ProviderOutcome.UNABLE_TO_CONTACT, at=MONDAY + timedelta(days=3), received_at=arrived
        )

        assert due_by == TUESDAY_14

    @pytest.mark.parametrize(
        ("referral", "leaflet_issued", "reason"),
        [
            (REFERRAL, True, None),
            (SentReferralFacts("ref-1", LANCASHIRE, "LC-1", "P-1", withdrawn=True), False, None),
            (REFERRAL, False, "provider_unable_to_contact"),
        ],
        ids=["issued-already", "withdrawn", "first"],
    )
    def test_at_most_one_leaflet_and_none_for_a_withdrawn_referral(
        self, referral: SentReferralFacts, leaflet_issued: bool, reason: str | None
    ) -> None:
        result, leaflet, _ = decided(
            ProviderOutcome.UNABLE_TO_CONTACT, referral=referral, leaflet_issued=leaflet_issued
        )

        assert (result, leaflet) == (OutcomeResult.RECORDED, reason)

    def test_first_contact_is_kept_when_later_outcomes_replace_it(self) -> None:
        first = decide_outcome(
            outcome(ProviderOutcome.CONTACTED, MONDAY),
            None,
            REFERRAL,
            leaflet_issued=False,
            received_at=MONDAY,
            calendar=CALENDAR,
        )
        assert first.record is not None
        later = decide_outcome(
            outcome(ProviderOutcome.DECLINED_BY_VICTIM, MONDAY + timedelta(hours=1)),
            first.record,
            REFERRAL,
            leaflet_issued=False,
            received_at=MONDAY,
            calendar=CALENDAR,
        )

        assert later.record == RecordedOutcome(
            outcome=ProviderOutcome.DECLINED_BY_VICTIM,
            at=MONDAY + timedelta(hours=1),
            first_contacted_at=MONDAY,
        )

    @given(
        recorded_kind=st.sampled_from(ProviderOutcome),
        kind=st.sampled_from(ProviderOutcome),
        earlier_by=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    )
    def test_an_outcome_not_newer_than_the_one_recorded_has_no_effect(
        self, recorded_kind: ProviderOutcome, kind: ProviderOutcome, earlier_by: timedelta
    ) -> None:
        recorded = RecordedOutcome(outcome=recorded_kind, at=MONDAY, first_contacted_at=None)

        effect = decide_outcome(
            outcome(kind, MONDAY - earlier_by),
            recorded,
            REFERRAL,
            leaflet_issued=False,
            received_at=MONDAY,
            calendar=CALENDAR,
        )

        assert (effect.result, effect.record, effect.leaflet_reason) == (
            OutcomeResult.OLDER,
            None,
            None,
        )

    @given(
        kinds=st.lists(st.sampled_from(ProviderOutcome), min_size=1, max_size=8),
        hours=st.lists(st.integers(min_value=0, max_value=200), min_size=8, max_size=8),
    )
    def test_whatever_the_order_the_latest_outcome_is_recorded(
        self, kinds: list[ProviderOutcome], hours: list[int]
    ) -> None:
        """Any arrival order ends with the outcome of the latest `at` (the first of equals)."""
        events = [(MONDAY + timedelta(hours=h), k) for k, h in zip(kinds, hours, strict=False)]
        recorded: RecordedOutcome | None = None
        for at, kind in events:
            effect = decide_outcome(
                outcome(kind, at),
                recorded,
                REFERRAL,
                leaflet_issued=False,
                received_at=at,
                calendar=CALENDAR,
            )
            recorded = effect.record or recorded

        latest = max(at for at, _ in events)
        first_latest = next(kind for at, kind in events if at == latest)
        assert recorded is not None
        assert (recorded.at, recorded.outcome) == (latest, first_latest)


class TestOutcomeSource:
    @pytest.mark.parametrize(
        ("routing_key", "referral", "problem"),
        [
            (LANCASHIRE, REFERRAL, None),
            (None, REFERRAL, None),
            ("homicide-service", REFERRAL, "routing key"),
            (LANCASHIRE, None, "no referral ref-1 was sent"),
            (
                LANCASHIRE,
                SentReferralFacts("ref-1", "homicide-service", "LC-1", "P-1", withdrawn=False),
                "sent to another provider",
            ),
        ],
        ids=["matches", "not-from-a-broker", "other-key", "never-sent", "other-provider"],
    )
    def test_the_provider_must_be_the_routing_key_and_the_addressee(
        self, routing_key: str | None, referral: SentReferralFacts | None, problem: str | None
    ) -> None:
        found = outcome_source_problem(outcome(ProviderOutcome.ACCEPTED), routing_key, referral)

        assert (found is None) if problem is None else (found is not None and problem in found)


def task(**changes: object) -> IssuedTask:
    fields: dict[str, object] = {
        "task_id": "task-1",
        "kind": TaskKind.LEAFLET,
        "reason": "declined",
        "case_ref": "LC-1",
        "due_by": MONDAY,
        "victim_id": "P-1",
    }
    return IssuedTask(**(fields | changes))  # type: ignore[arg-type]


class TestCompletionAndEscalation:
    def test_a_completion_closes_an_open_task_and_not_a_closed_one(self) -> None:
        completion = TaskCompleted(
            task_id="task-1",
            completed_at=MONDAY,
            completed_by="PC 1",
            result=TaskResult.LEAFLET_GIVEN,
        )

        assert decide_completion(task(), completion) is CompletionResult.COMPLETED
        assert (
            decide_completion(task(completed_at=MONDAY), completion)
            is CompletionResult.ALREADY_COMPLETED
        )

    @pytest.mark.parametrize(
        ("changes", "now", "expected"),
        [
            ({}, MONDAY, True),
            ({}, MONDAY - timedelta(seconds=1), False),
            ({"kind": TaskKind.CRIME_REVIEW}, MONDAY, True),
            ({"kind": TaskKind.ESCALATION}, MONDAY, False),
            ({"completed_at": MONDAY}, MONDAY, False),
            ({"escalated_at": MONDAY}, MONDAY, False),
            ({"due_by": None}, MONDAY, False),
        ],
        ids=[
            "due",
            "not-yet-due",
            "crime-review",
            "escalations-do-not-escalate",
            "completed",
            "escalated-already",
            "no-due-time",
        ],
    )
    def test_which_tasks_escalate(
        self, changes: dict[str, object], now: datetime, expected: bool
    ) -> None:
        assert needs_escalation(task(**changes), now) is expected

    def test_the_escalation_names_the_overdue_task(self) -> None:
        escalated_at = MONDAY + timedelta(minutes=5)

        message = escalation_task(task(), "esc-1", OFFICER, escalated_at)

        assert message.model_dump(mode="json") == {
            "task_id": "esc-1",
            "escalates": "task-1",
            "task_kind": "leaflet",
            "reason": "declined",
            "case_ref": "LC-1",
            "officer": {"collar": "PC 1", "unit": "Response A"},
            "due_by": "2026-11-23T14:00:00Z",
            "escalated_at": "2026-11-23T14:05:00Z",
        }

    def test_an_escalation_is_not_escalated_again(self) -> None:
        with pytest.raises(ValueError, match="only a leaflet or crime-review task"):
            escalation_task(task(kind=TaskKind.ESCALATION), "esc-2", OFFICER, MONDAY)
