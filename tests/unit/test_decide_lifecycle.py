"""decide() over the whole life of a referral (rules.md version 2, changes 1 and 2).

Each test carries out the decisions of one snapshot (as the ledger would) and decides the next,
so what is checked is what the provider is left with after a sequence of events.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import ConsentChange, ConsentState, ContactMethod, Relationship
from referral_bridge.core.history import VictimHistory
from referral_bridge.core.replay import carry_out
from tests.unit.factories import (
    CRIME_REF,
    INCIDENT_REF,
    REPORTED_AT,
    consent_update,
    crime_case,
    default_policy,
    incident_case,
    make_crime,
    make_victim,
)

CALENDAR = WorkingDayCalendar()
LVS = "lancashire-victim-services"
VICTIM = "P-0001"
LATER = REPORTED_AT + timedelta(hours=4)


class Life:
    """One victim's history through a sequence of snapshots and consent changes."""

    def __init__(self) -> None:
        self.history: dict[str, VictimHistory] = {}
        self.now = REPORTED_AT

    def decide(self, case: CaseSnapshot, *, at: datetime | None = None) -> list[Decision]:
        self.now = at or self.now + timedelta(minutes=30)
        decisions = decide(case, self.history, default_policy(), self.now, CALENDAR)
        self.history = carry_out(self.history, decisions, self.now)
        return [d for d in decisions if d.victim_id == VICTIM]

    def consent(self, change: ConsentChange) -> None:
        self.now += timedelta(minutes=30)
        past = self.history.get(VICTIM, VictimHistory())
        record = consent_update(change, self.now)
        self.history[VICTIM] = past.model_copy(update={"consent": record})


def outcomes(decisions: list[Decision]) -> list[tuple[Outcome, str]]:
    return [(d.outcome, d.reason) for d in decisions]


class TestConsentAfterAReferral:
    def test_declined_after_an_opt_out_referral_withdraws_it(self) -> None:
        life = Life()
        (refer,) = life.decide(crime_case(make_victim()))
        life.consent(ConsentChange.DECLINED)

        withdraw, leaflet = life.decide(crime_case(make_victim(), version=2))

        assert (withdraw.outcome, withdraw.reason) == (Outcome.WITHDRAW, "declined")
        assert withdraw.referral_id == refer.referral_id
        assert withdraw.provider == LVS
        assert (leaflet.outcome, leaflet.reason) == (Outcome.LEAFLET, "declined")

    def test_consent_given_again_after_a_withdrawal_refers_again_with_a_new_id(self) -> None:
        life = Life()
        (first,) = life.decide(crime_case(make_victim()))
        life.consent(ConsentChange.WITHDRAWN)
        assert outcomes(life.decide(crime_case(make_victim()))) == [(Outcome.WITHDRAW, "withdrawn")]
        life.consent(ConsentChange.GIVEN)

        (again,) = life.decide(crime_case(make_victim()))

        assert (again.outcome, again.generation) == (Outcome.REFER, 2)
        assert again.referral_id == ids.referral_id_for(LVS, CRIME_REF, VICTIM, 2)
        assert again.referral_id != first.referral_id
        assert first.referral_id == ids.referral_id(LVS, CRIME_REF, VICTIM)

    def test_a_repeated_decision_after_a_re_referral_sends_nothing(self) -> None:
        life = Life()
        life.decide(crime_case(make_victim()))
        life.consent(ConsentChange.WITHDRAWN)
        life.decide(crime_case(make_victim()))
        life.consent(ConsentChange.GIVEN)
        life.decide(crime_case(make_victim()))

        assert outcomes(life.decide(crime_case(make_victim()))) == [
            (Outcome.NONE, "already_referred")
        ]


class TestContactAfterAReferral:
    def test_a_victim_who_becomes_unsafe_to_contact_is_withdrawn_and_leafleted(self) -> None:
        life = Life()
        (refer,) = life.decide(crime_case(make_victim(), flags={"hate": True}))

        withdraw, leaflet = life.decide(
            crime_case(make_victim(safe_to_contact=False), version=2, flags={"hate": True})
        )

        assert (withdraw.outcome, withdraw.reason) == (Outcome.WITHDRAW, "not_safe_to_contact")
        assert withdraw.referral_id == refer.referral_id
        assert (leaflet.outcome, leaflet.reason) == (Outcome.LEAFLET, "no_safe_contact")
        assert leaflet.due_by == CALENDAR.add_working_days(REPORTED_AT, 1)

    def test_a_new_phone_number_is_sent_as_an_update_with_the_next_revision(self) -> None:
        life = Life()
        (refer,) = life.decide(crime_case(make_victim()))

        (update,) = life.decide(crime_case(make_victim(phone="07700 900456"), version=2))
        (second,) = life.decide(crime_case(make_victim(phone="07700 900789"), version=3))

        assert (update.outcome, update.reason) == (Outcome.UPDATE, "referral_changed")
        assert (update.referral_id, update.revision) == (refer.referral_id, 2)
        assert update.deadline == refer.deadline
        assert second.revision == 3

    def test_an_unchanged_snapshot_sends_no_update(self) -> None:
        life = Life()
        life.decide(crime_case(make_victim()))

        assert outcomes(life.decide(crime_case(make_victim(), version=2))) == [
            (Outcome.NONE, "already_referred")
        ]

    def test_a_change_the_provider_does_not_hold_sends_no_update(self) -> None:
        """Flags that do not shape support stay with the force (data minimisation)."""
        life = Life()
        life.decide(crime_case(make_victim()))
        changed = crime_case(make_victim(), version=2, flags={"cyber": True})

        assert outcomes(life.decide(changed)) == [(Outcome.NONE, "already_referred")]

    def test_a_change_of_preferred_method_is_an_update(self) -> None:
        life = Life()
        life.decide(crime_case(make_victim()))

        (update,) = life.decide(crime_case(make_victim(preferred=ContactMethod.EMAIL)))

        assert update.outcome is Outcome.UPDATE


class TestReclassification:
    def test_to_sexual_without_explicit_consent_withdraws_then_asks_for_consent(self) -> None:
        life = Life()
        (refer,) = life.decide(crime_case(make_victim()))

        steps = life.decide(crime_case(make_victim(), version=2, category="sexual"))

        assert outcomes(steps) == [
            (Outcome.WITHDRAW, "consent_regime_changed"),
            (Outcome.HOLD, "awaiting_consent"),
            (Outcome.LEAFLET, "consent_needed"),
        ]
        assert steps[0].referral_id == refer.referral_id

    def test_to_domestic_abuse_and_unsafe_withdraws(self) -> None:
        life = Life()
        life.decide(crime_case(make_victim()))

        steps = life.decide(
            crime_case(
                make_victim(safe_to_contact=False), version=2, flags={"domestic_abuse": True}
            )
        )

        assert outcomes(steps)[0] == (Outcome.WITHDRAW, "consent_regime_changed")
        assert (Outcome.LEAFLET, "consent_needed") in outcomes(steps)

    def test_with_consent_given_same_provider_another_service_is_an_update(self) -> None:
        life = Life()
        victim = make_victim(consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        (refer,) = life.decide(crime_case(victim))

        (update,) = life.decide(crime_case(victim, version=2, category="sexual"))

        assert (update.outcome, update.service, update.referral_id) == (
            Outcome.UPDATE,
            "sexual_violence",
            refer.referral_id,
        )

    def test_with_consent_given_another_provider_withdraws_and_refers_there(self) -> None:
        life = Life()
        victim = make_victim(consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        bereaved = make_victim(
            consent=ConsentState.GIVEN,
            consent_at=REPORTED_AT,
            relationship=Relationship.BEREAVED_RELATIVE,
        )
        (refer,) = life.decide(crime_case(victim, category="vehicle"))

        withdraw, again = life.decide(crime_case(bereaved, version=2, category="homicide"))

        assert (withdraw.outcome, withdraw.reason, withdraw.referral_id) == (
            Outcome.WITHDRAW,
            "rerouted",
            refer.referral_id,
        )
        assert (again.outcome, again.provider, again.service) == (
            Outcome.REFER,
            "homicide-service",
            "homicide",
        )

    def test_a_rape_report_sent_as_other_is_never_referred_without_consent(self) -> None:
        life = Life()
        steps = life.decide(crime_case(make_victim(), category="other", ho_class="n100"))
        assert Outcome.REFER not in [d.outcome for d in steps]


class TestExplicitConsentTiming:
    def test_the_consent_needed_task_is_due_before_the_consent_wait_ends(self) -> None:
        hold, task = Life().decide(crime_case(make_victim(), category="sexual"), at=REPORTED_AT)
        assert task.reason == "consent_needed"
        assert task.due_by is not None
        assert hold.hold_until is not None
        assert REPORTED_AT < task.due_by < hold.hold_until
        assert task.due_by == CALENDAR.add_working_days(REPORTED_AT, 1)
        assert hold.hold_until == CALENDAR.add_working_days(REPORTED_AT, 5)

    def test_consent_after_the_wait_still_refers_and_is_not_late(self) -> None:
        life = Life()
        life.decide(crime_case(make_victim(), category="sexual"), at=REPORTED_AT)
        after_wait = CALENDAR.add_working_days(REPORTED_AT, 6)
        assert outcomes(life.decide(crime_case(make_victim(), category="sexual"), at=after_wait))
        life.consent(ConsentChange.GIVEN)

        (refer,) = life.decide(crime_case(make_victim(), category="sexual"))

        assert refer.outcome is Outcome.REFER
        assert not refer.late


class TestChildAndParent:
    def test_the_parent_is_held_with_the_child_not_referred_under_opt_out(self) -> None:
        child = make_victim("C-0001", date_of_birth=date(2014, 3, 3))
        parent = make_victim(VICTIM, relationship=Relationship.PARENT_OR_GUARDIAN)
        case = crime_case(child, parent)

        decisions = decide(case, {}, default_policy(), REPORTED_AT, CALENDAR)

        assert {d.victim_id: d.outcome for d in decisions if d.outcome is not Outcome.LEAFLET} == {
            "C-0001": Outcome.HOLD,
            VICTIM: Outcome.HOLD,
        }


class TestBereaved:
    def test_one_task_per_case_for_the_first_deceased_victim(self) -> None:
        case = crime_case(
            make_victim("D-0001", deceased=True),
            make_victim("D-0002", deceased=True),
            category="homicide",
        )
        decisions = decide(case, {}, default_policy(), REPORTED_AT, CALENDAR)
        assert [(d.victim_id, d.outcome, d.reason) for d in decisions] == [
            ("D-0001", Outcome.LEAFLET, "bereaved_not_recorded"),
            ("D-0002", Outcome.NONE, "deceased"),
        ]


class TestIncidents:
    def test_a_crime_disclosed_incident_referral_is_updated_by_the_crime(self) -> None:
        life = Life()
        (refer,) = life.decide(incident_case(make_victim(), crime_disclosed=True))
        crime = make_crime(make_victim()).model_copy(
            update={"linked_incident_refs": (INCIDENT_REF,)}
        )

        (update,) = life.decide(CaseSnapshot.from_crime(crime))

        assert (update.outcome, update.referral_id) == (Outcome.UPDATE, refer.referral_id)
