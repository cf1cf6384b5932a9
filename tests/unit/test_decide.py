"""decide(): every rule row and every regime line of rules.md, plus the project's decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import (
    ConsentChange,
    ConsentState,
    ContactMethod,
    CrimeStatus,
    Relationship,
    VictimKind,
)
from referral_bridge.core.history import (
    Hold,
    IssuedLeaflet,
    SentReferral,
    SentWithdrawal,
    VictimHistory,
)
from referral_bridge.core.replay import carry_out
from tests.unit.factories import (
    ADULT_DOB,
    CRIME_REF,
    FAKE_ADDRESS_LINE,
    FAKE_CONTACT_PERSON,
    FAKE_EMAIL,
    FAKE_NAME,
    FAKE_PHONE,
    FAKE_POSTCODE,
    REPORTED_AT,
    consent_update,
    crime_case,
    default_policy,
    incident_case,
    make_victim,
)

CALENDAR = WorkingDayCalendar()
LVS = "lancashire-victim-services"
HOMICIDE = "homicide-service"
CHILD_DOB = date(2012, 5, 1)
GIVEN = ConsentState.GIVEN
DECLINED = ConsentState.DECLINED
NOT_ASKED = ConsentState.NOT_ASKED
WITHDRAWN = ConsentState.WITHDRAWN
#: Same instant as the report: any hold is still open.
NOW = REPORTED_AT
#: Well after any hold has ended.
LATER = REPORTED_AT + timedelta(days=10)


def wd(days: int, start: datetime = REPORTED_AT) -> datetime:
    return CALENDAR.add_working_days(start, days)


def decide_all(
    case: CaseSnapshot, past: VictimHistory | None = None, *, now: datetime = NOW
) -> tuple[Decision, ...]:
    """Every decision for the case's first victim."""
    history: Mapping[str, VictimHistory] = {case.victims[0].victim_id: past} if past else {}
    decisions = decide(case, history, default_policy(), now, CALENDAR)
    return tuple(d for d in decisions if d.victim_id == case.victims[0].victim_id)


def decide_one(
    case: CaseSnapshot, past: VictimHistory | None = None, *, now: datetime = NOW
) -> Decision:
    (decision,) = decide_all(case, past, now=now)
    return decision


def referred(case: CaseSnapshot, *, now: datetime = NOW) -> VictimHistory:
    """The first victim's history after the case was decided and carried out at `now`."""
    decisions = decide(case, {}, default_policy(), now, CALENDAR)
    return carry_out({}, decisions, now).get(case.victims[0].victim_id, VictimHistory())


def referral(provider: str = LVS, service: str = "general") -> SentReferral:
    return SentReferral(
        referral_id=ids.referral_id(provider, CRIME_REF, "P-0001"),
        provider=provider,
        service=service,
        case_ref=CRIME_REF,
        at=REPORTED_AT,
    )


@dataclass(frozen=True)
class Row:
    """One case and what the policy table says about it."""

    case: CaseSnapshot
    rule: str
    outcome: Outcome
    reason: str
    provider: str | None = None
    service: str | None = None
    past: VictimHistory | None = None
    now: datetime = NOW
    extra: dict[str, object] = field(default_factory=dict)
    #: Further decisions for the same victim, (outcome, reason), in order.
    also: tuple[tuple[Outcome, str], ...] = ()


def check(row: Row) -> Decision:
    decision, *more = decide_all(row.case, row.past, now=row.now)
    got = (decision.rule, decision.outcome, decision.reason, decision.provider, decision.service)
    assert got == (row.rule, row.outcome, row.reason, row.provider, row.service)
    for name, value in row.extra.items():
        assert getattr(decision, name) == value, name
    assert [(d.outcome, d.reason) for d in more] == list(row.also)
    return decision


# --- Rules, first match wins --------------------------------------------------------------------

ORG = VictimKind.ORGANISATION
RULE_ROWS = {
    "1: an organisation consenting through its contact person is referred to business": Row(
        crime_case(make_victim(kind=ORG, consent=GIVEN, contact_person=FAKE_CONTACT_PERSON)),
        "1", Outcome.REFER, "consent_given", LVS, "business",
    ),
    "2: a deceased victim with no bereaved relative recorded: one task to record the family": Row(
        crime_case(make_victim(deceased=True, consent=GIVEN), category="homicide"),
        "2", Outcome.LEAFLET, "bereaved_not_recorded", LVS, extra={"due_by": wd(1)},
    ),
    "2: a deceased victim with a bereaved relative recorded gets nothing": Row(
        crime_case(
            make_victim(deceased=True),
            make_victim("P-0002", relationship=Relationship.BEREAVED_RELATIVE),
            category="homicide",
        ),
        "2", Outcome.NONE, "deceased",
    ),
    "3: a relative bereaved by homicide goes to the homicide service": Row(
        crime_case(
            make_victim(consent=GIVEN, relationship=Relationship.BEREAVED_RELATIVE),
            category="homicide",
        ),
        "3", Outcome.REFER, "consent_given", HOMICIDE, "homicide",
    ),
    "4: a relative bereaved by dangerous driving goes to bereaved support, not homicide": Row(
        crime_case(
            make_victim(consent=GIVEN, relationship=Relationship.BEREAVED_RELATIVE),
            category="vehicle",
        ),
        "4", Outcome.REFER, "consent_given", LVS, "bereaved",
    ),
    "a living victim of a homicide case who is not bereaved is another victim of crime": Row(
        crime_case(make_victim(consent=GIVEN), category="homicide", ho_class="2"),
        "8", Outcome.REFER, "consent_given", LVS, "general",
    ),
    "5: a sexual offence goes to sexual violence": Row(
        crime_case(make_victim(consent=GIVEN), category="sexual"),
        "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
    ),
    "5: a rape report (N100) sent as other is a sexual offence": Row(
        crime_case(make_victim(), category="other", ho_class="N100"),
        "5", Outcome.HOLD, "awaiting_consent", LVS, "sexual_violence",
        also=((Outcome.LEAFLET, "consent_needed"),),
    ),
    "5: a mapped class is compared normalised (019c is 19C)": Row(
        crime_case(make_victim(consent=GIVEN), category="violence_with_injury", ho_class="019c"),
        "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
    ),
    "6: a domestic abuse flag goes to domestic abuse": Row(
        crime_case(make_victim(consent=GIVEN), flags={"domestic_abuse": True}),
        "6", Outcome.REFER, "consent_given", LVS, "domestic_abuse",
    ),
    "7: a child goes to children and young people": Row(
        crime_case(make_victim(consent=GIVEN, date_of_birth=CHILD_DOB)),
        "7", Outcome.REFER, "consent_given", LVS, "children_young_people",
    ),
    "7: a parent on a child's crime follows the child's rule": Row(
        crime_case(
            make_victim(relationship=Relationship.PARENT_OR_GUARDIAN),
            make_victim("C-0001", date_of_birth=CHILD_DOB),
        ),
        "7", Outcome.HOLD, "awaiting_consent", LVS, "children_young_people",
        also=((Outcome.LEAFLET, "consent_needed"),),
    ),
    "a parent on an adult's crime is another victim of crime": Row(
        crime_case(make_victim(relationship=Relationship.PARENT_OR_GUARDIAN)),
        "8", Outcome.REFER, "not_objected", LVS, "general",
    ),
    "8: any other crime goes to general": Row(
        crime_case(make_victim(consent=GIVEN)),
        "8", Outcome.REFER, "consent_given", LVS, "general",
    ),
    "9: a domestic incident goes to domestic abuse with consent": Row(
        incident_case(make_victim(consent=GIVEN), category="domestic_incident"),
        "9", Outcome.REFER, "consent_given", LVS, "domestic_abuse",
    ),
    "10: an incident goes to general": Row(
        incident_case(make_victim(consent=GIVEN)),
        "10", Outcome.REFER, "consent_given", LVS, "general",
    ),
    # Precedence: the first matching row decides.
    "a bereaved child of a homicide goes to the homicide service": Row(
        crime_case(
            make_victim(
                consent=GIVEN,
                date_of_birth=CHILD_DOB,
                relationship=Relationship.BEREAVED_RELATIVE,
            ),
            category="homicide",
            flags={"domestic_abuse": True},
        ),
        "3", Outcome.REFER, "consent_given", HOMICIDE, "homicide",
    ),
    "sexual wins over domestic abuse": Row(
        crime_case(make_victim(consent=GIVEN), category="sexual", flags={"domestic_abuse": True}),
        "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
    ),
    "domestic abuse wins over child": Row(
        crime_case(
            make_victim(consent=GIVEN, date_of_birth=CHILD_DOB), flags={"domestic_abuse": True}
        ),
        "6", Outcome.REFER, "consent_given", LVS, "domestic_abuse",
    ),
    "organisation wins over a crime category rule": Row(
        crime_case(make_victim(kind=ORG, consent=GIVEN), category="sexual"),
        "1", Outcome.NONE, "organisation_no_explicit_consent",
    ),
    "an unknown date of birth is not a child": Row(
        crime_case(make_victim(date_of_birth=None)),
        "8", Outcome.REFER, "not_objected", LVS, "general",
    ),
    # Incidents with no crime disclosed follow only the incident rules.
    "an incident with a child victim follows the incident rule, not the child rule": Row(
        incident_case(make_victim(date_of_birth=CHILD_DOB)),
        "10", Outcome.LEAFLET, "incident_information", LVS,
    ),
    # An incident where a crime was disclosed is decided by the crime rules.
    "an incident where a crime was disclosed is a crime (opt-out)": Row(
        incident_case(make_victim(), crime_disclosed=True, category="crime_reported"),
        "8", Outcome.REFER, "not_objected", LVS, "general",
    ),
    "a disclosed crime in a domestic incident is domestic abuse (explicit)": Row(
        incident_case(make_victim(), crime_disclosed=True, category="domestic_incident"),
        "6", Outcome.HOLD, "awaiting_consent", LVS, "domestic_abuse",
        also=((Outcome.LEAFLET, "consent_needed"),),
    ),
    "a child victim of a disclosed crime follows the child rule": Row(
        incident_case(make_victim(date_of_birth=CHILD_DOB), crime_disclosed=True),
        "7", Outcome.HOLD, "awaiting_consent", LVS, "children_young_people",
        also=((Outcome.LEAFLET, "consent_needed"),),
    ),
    "a deceased victim of an incident with no bereaved relative: the family is recorded": Row(
        incident_case(make_victim(deceased=True)),
        "2", Outcome.LEAFLET, "bereaved_not_recorded", LVS,
    ),
    "an organisation victim of an incident without consent gets nothing": Row(
        incident_case(make_victim(kind=ORG, contact_person=FAKE_CONTACT_PERSON)),
        "1", Outcome.NONE, "organisation_no_explicit_consent",
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", RULE_ROWS.values(), ids=RULE_ROWS.keys())
def test_the_first_matching_rule_decides(row: Row) -> None:
    check(row)


class TestChildOnTheLondonDateOfTheReport:
    # 23:30 UTC on 30 June is 00:30 BST on 1 July in London.
    REPORTED = datetime(2026, 6, 30, 23, 30, tzinfo=UTC)

    def test_a_victim_turning_18_that_london_day_is_not_a_child(self) -> None:
        case = crime_case(make_victim(date_of_birth=date(2008, 7, 1)), reported_at=self.REPORTED)
        assert decide_one(case).rule == "8"

    def test_a_victim_turning_18_the_next_day_is_a_child(self) -> None:
        case = crime_case(make_victim(date_of_birth=date(2008, 7, 2)), reported_at=self.REPORTED)
        assert decide_all(case)[0].rule == "7"


# --- Regimes ------------------------------------------------------------------------------------


def sexual(consent: ConsentState = NOT_ASKED, **victim: Any) -> CaseSnapshot:
    return crime_case(make_victim(consent=consent, **victim), category="sexual")


def burglary(consent: ConsentState = NOT_ASKED, **victim: Any) -> CaseSnapshot:
    return crime_case(make_victim(consent=consent, **victim))


def asb(consent: ConsentState = NOT_ASKED) -> CaseSnapshot:
    return incident_case(make_victim(consent=consent))


ASKED = (
    IssuedLeaflet(
        task_id=ids.leaflet_task_id(CRIME_REF, "P-0001", "consent_needed"),
        reason="consent_needed",
        provider=LVS,
        at=NOW,
    ),
)
OPEN_HOLD = VictimHistory(hold=Hold(until=wd(5)), leaflets=ASKED)
EXPIRED = VictimHistory(hold=Hold(until=wd(5), open=False), leaflets=ASKED)

REGIME_ROWS = {
    "explicit, given: refer": Row(
        sexual(GIVEN), "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
        extra={"deadline": wd(2)},
    ),
    "explicit, declined: leaflet declined": Row(
        sexual(DECLINED), "5", Outcome.LEAFLET, "declined", LVS, extra={"due_by": wd(1)}
    ),
    "explicit, not asked: consent_needed task at once, due by the leaflet deadline, and hold": Row(
        sexual(), "5", Outcome.HOLD, "awaiting_consent", LVS, "sexual_violence",
        extra={"hold_until": wd(5), "ends_hold": False},
        also=((Outcome.LEAFLET, "consent_needed"),),
    ),
    "explicit, not asked, hold already open and the officer asked: still hold, no new task": Row(
        sexual(), "5", Outcome.HOLD, "awaiting_consent", LVS, "sexual_violence",
        past=OPEN_HOLD, now=wd(5) - timedelta(seconds=1), extra={"ends_hold": False},
    ),
    "explicit, not asked, consent wait has just ended: none, no second task": Row(
        sexual(), "5", Outcome.NONE, "consent_not_obtained",
        past=OPEN_HOLD, now=wd(5), extra={"ends_hold": True, "task_id": None},
    ),
    "explicit, not asked, first seen after the wait: the officer is still asked": Row(
        sexual(), "5", Outcome.LEAFLET, "consent_needed", LVS,
        now=LATER, extra={"ends_hold": False, "due_by": wd(1)},
        also=((Outcome.NONE, "consent_not_obtained"),),
    ),
    "explicit, consent while the hold is open: refer and end the hold": Row(
        sexual(GIVEN, consent_at=REPORTED_AT + timedelta(hours=3)),
        "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
        past=OPEN_HOLD, extra={"ends_hold": True},
    ),
    "explicit, consent after the hold ended still refers": Row(
        sexual(),
        "5", Outcome.REFER, "consent_given", LVS, "sexual_violence",
        past=EXPIRED.model_copy(
            update={"consent": consent_update(ConsentChange.GIVEN, REPORTED_AT + timedelta(days=4))}
        ),
        now=LATER, extra={"ends_hold": False},
    ),
    "opt-out, given: refer": Row(
        burglary(GIVEN), "8", Outcome.REFER, "consent_given", LVS, "general",
        extra={"deadline": wd(2), "late": False},
    ),
    "opt-out, not asked, decided after the deadline: refer, recorded as late": Row(
        burglary(), "8", Outcome.REFER, "not_objected", LVS, "general", now=LATER,
        extra={"deadline": wd(2), "hold_until": None, "late": True},
    ),
    "opt-out, declined: leaflet declined": Row(
        burglary(DECLINED), "8", Outcome.LEAFLET, "declined", LVS, extra={"due_by": wd(5)}
    ),
    "incident, given: refer": Row(
        asb(GIVEN), "10", Outcome.REFER, "consent_given", LVS, "general",
        extra={"deadline": wd(2)},
    ),
    "incident, not asked: leaflet at once, never a hold": Row(
        asb(), "10", Outcome.LEAFLET, "incident_information", LVS, extra={"due_by": wd(5)}
    ),
    "incident, declined: leaflet declined": Row(
        asb(DECLINED), "10", Outcome.LEAFLET, "declined", LVS
    ),
    "organisation, given without a contact person: nothing": Row(
        crime_case(make_victim(kind=ORG, consent=GIVEN)),
        "1", Outcome.NONE, "organisation_no_explicit_consent",
    ),
    "organisation, not asked: nothing, and no hold": Row(
        crime_case(make_victim(kind=ORG, contact_person=FAKE_CONTACT_PERSON)),
        "1", Outcome.NONE, "organisation_no_explicit_consent", extra={"hold_until": None},
    ),
    "organisation, declined: nothing, and no leaflet": Row(
        crime_case(make_victim(kind=ORG, consent=DECLINED, contact_person=FAKE_CONTACT_PERSON)),
        "1", Outcome.NONE, "organisation_no_explicit_consent", extra={"task_id": None},
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", REGIME_ROWS.values(), ids=REGIME_ROWS.keys())
def test_each_regime_turns_consent_into_an_outcome(row: Row) -> None:
    check(row)


SENT = referred(crime_case(make_victim(consent=GIVEN, consent_at=REPORTED_AT)))
REFERRAL_ID = ids.referral_id(LVS, CRIME_REF, "P-0001")
WITHDRAWN_SENT = SENT.model_copy(
    update={
        "withdrawals": (
            SentWithdrawal(referral_id=REFERRAL_ID, provider=LVS, at=NOW, reason="withdrawn"),
        )
    }
)
WITHDRAWN_ROWS = {
    "withdrawn after a referral: withdraw it from its provider": Row(
        burglary(WITHDRAWN), "8", Outcome.WITHDRAW, "withdrawn", LVS, "general",
        past=SENT, extra={"referral_id": REFERRAL_ID},
    ),
    "withdrawn by a later consent.updated: withdraw, as of the consent's time": Row(
        burglary(GIVEN, consent_at=REPORTED_AT), "8", Outcome.WITHDRAW, "withdrawn",
        LVS, "general",
        past=SENT.model_copy(
            update={"consent": consent_update(ConsentChange.WITHDRAWN, LATER)}
        ),
        now=LATER + timedelta(hours=1), extra={"arose_at": LATER},
    ),
    "declined after a referral: withdraw it, and the officer gives a leaflet": Row(
        burglary(GIVEN, consent_at=REPORTED_AT), "8", Outcome.WITHDRAW, "declined",
        LVS, "general",
        past=SENT.model_copy(update={"consent": consent_update(ConsentChange.DECLINED, LATER)}),
        also=((Outcome.LEAFLET, "declined"),),
    ),
    "withdrawn before any referral: nothing": Row(
        burglary(WITHDRAWN), "8", Outcome.NONE, "withdrawn", extra={"referral_id": None}
    ),
    "withdrawn while held: nothing, and the hold ends": Row(
        sexual(WITHDRAWN), "5", Outcome.NONE, "withdrawn", past=OPEN_HOLD,
        extra={"ends_hold": True},
    ),
    "withdrawn again after the withdrawal went out: nothing": Row(
        burglary(WITHDRAWN), "8", Outcome.NONE, "withdrawn", past=WITHDRAWN_SENT,
    ),
    "withdrawn on a cancelled crime: the withdrawal still goes out": Row(
        crime_case(make_victim(consent=WITHDRAWN), status=CrimeStatus.CANCELLED),
        "8", Outcome.WITHDRAW, "withdrawn", LVS, "general", past=SENT,
    ),
    "a snapshot that no longer says withdrawn does not refer again without consent": Row(
        burglary(NOT_ASKED), "8", Outcome.NONE, "previously_withdrawn", past=WITHDRAWN_SENT,
    ),
    "consent given after a withdrawal refers again, under a new referral id": Row(
        burglary(GIVEN, consent_at=LATER), "8", Outcome.REFER, "consent_given", LVS, "general",
        past=WITHDRAWN_SENT, now=LATER,
        extra={
            "generation": 2,
            "referral_id": ids.referral_id_for(LVS, CRIME_REF, "P-0001", 2),
            "deadline": wd(2, LATER),
            "late": False,
        },
    ),
    "consent given for the first time after a snapshot said withdrawn refers": Row(
        burglary(WITHDRAWN, consent_at=REPORTED_AT), "8", Outcome.REFER, "consent_given", LVS,
        "general", past=VictimHistory(consent=consent_update(ConsentChange.GIVEN, LATER)),
        extra={"generation": 1, "referral_id": REFERRAL_ID},
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", WITHDRAWN_ROWS.values(), ids=WITHDRAWN_ROWS.keys())
def test_withdrawal_is_honoured_at_any_time(row: Row) -> None:
    check(row)


CONTACT_ROWS = {
    "preferred none": burglary(preferred=ContactMethod.NONE),
    "preferred phone, no phone": burglary(phone=None),
    "preferred email, no email": burglary(preferred=ContactMethod.EMAIL, email=None),
    "preferred post, no address": burglary(preferred=ContactMethod.POST, with_address=False),
    "not safe to contact": burglary(safe_to_contact=False),
    "domestic abuse, not safe to contact": crime_case(
        make_victim(consent=GIVEN, safe_to_contact=False), flags={"domestic_abuse": True}
    ),
    "incident, consent given, not safe to contact": incident_case(
        make_victim(consent=GIVEN, safe_to_contact=False)
    ),
}


@pytest.mark.parametrize("case", CONTACT_ROWS.values(), ids=CONTACT_ROWS.keys())
def test_no_usable_contact_gives_a_leaflet_instead_of_a_referral(case: CaseSnapshot) -> None:
    decision = decide_one(case)
    assert (decision.outcome, decision.reason) == (Outcome.LEAFLET, "no_safe_contact")


@pytest.mark.parametrize(
    "preferred", [ContactMethod.PHONE, ContactMethod.EMAIL, ContactMethod.POST]
)
def test_each_preferred_channel_that_is_present_is_usable(preferred: ContactMethod) -> None:
    assert decide_one(burglary(preferred=preferred)).outcome is Outcome.REFER


class TestCancelledOrTransferredCrime:
    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (CrimeStatus.CANCELLED, "crime_cancelled"),
            (CrimeStatus.TRANSFERRED, "crime_transferred"),
        ],
    )
    def test_nothing_new_is_sent(self, status: CrimeStatus, reason: str) -> None:
        decision = decide_one(crime_case(make_victim(), status=status))
        assert (decision.outcome, decision.reason) == (Outcome.NONE, reason)

    def test_an_open_hold_ends_with_none(self) -> None:
        case = crime_case(make_victim(), category="sexual", status=CrimeStatus.CANCELLED)
        decision = decide_one(case, OPEN_HOLD)
        assert (decision.outcome, decision.ends_hold) == (Outcome.NONE, True)

    def test_a_referral_already_sent_is_not_withdrawn(self) -> None:
        case = crime_case(make_victim(consent=GIVEN), status=CrimeStatus.TRANSFERRED)
        assert decide_one(case, SENT).outcome is Outcome.NONE


class TestWhatWasAlreadyDone:
    def test_a_referred_victim_is_not_referred_again(self) -> None:
        decision = decide_one(burglary(GIVEN, consent_at=REPORTED_AT), SENT)
        assert (decision.outcome, decision.reason) == (Outcome.NONE, "already_referred")

    def test_reclassification_re_decides_a_victim_not_yet_referred(self) -> None:
        # Version 1 (burglary) gave a leaflet for lack of contact; version 2 is a sexual offence.
        past = VictimHistory(
            leaflets=(IssuedLeaflet(task_id="t", reason="no_safe_contact", provider=LVS, at=NOW),)
        )
        assert decide_all(sexual(), past)[0].outcome is Outcome.HOLD

    def test_a_leaflet_for_the_same_reason_is_not_repeated(self) -> None:
        past = VictimHistory(
            leaflets=(IssuedLeaflet(task_id="t", reason="declined", provider=LVS, at=NOW),)
        )
        decision = decide_one(burglary(DECLINED), past)
        assert (decision.outcome, decision.reason, decision.task_id) == (
            Outcome.NONE,
            "already_leafleted",
            None,
        )

    def test_a_leaflet_for_another_reason_is_still_issued(self) -> None:
        past = VictimHistory(
            leaflets=(IssuedLeaflet(task_id="t", reason="no_safe_contact", provider=LVS, at=NOW),)
        )
        decision = decide_one(burglary(DECLINED), past)
        assert (decision.outcome, decision.reason) == (Outcome.LEAFLET, "declined")


class TestEffectiveConsent:
    def test_a_later_update_overrides_the_snapshot(self) -> None:
        past = VictimHistory(consent=consent_update(ConsentChange.DECLINED, LATER))
        assert decide_one(burglary(GIVEN, consent_at=NOW), past).reason == "declined"

    def test_a_later_snapshot_overrides_the_update(self) -> None:
        past = VictimHistory(consent=consent_update(ConsentChange.DECLINED, NOW))
        assert decide_one(burglary(GIVEN, consent_at=LATER), past).reason == "consent_given"

    def test_on_a_tie_the_update_wins(self) -> None:
        past = VictimHistory(consent=consent_update(ConsentChange.DECLINED, NOW))
        assert decide_one(burglary(GIVEN, consent_at=NOW), past).reason == "declined"

    def test_a_snapshot_consent_without_a_time_loses_to_any_update(self) -> None:
        past = VictimHistory(consent=consent_update(ConsentChange.GIVEN, NOW))
        assert decide_one(sexual(DECLINED), past).outcome is Outcome.REFER


class TestDeadlines:
    def test_an_explicit_referral_runs_from_consent_recorded_later(self) -> None:
        consent_at = REPORTED_AT + timedelta(days=3)
        decision = decide_one(sexual(GIVEN, consent_at=consent_at))
        assert decision.deadline == wd(2, consent_at)

    def test_an_explicit_referral_runs_from_the_report_if_consent_came_first(self) -> None:
        decision = decide_one(sexual(GIVEN, consent_at=REPORTED_AT - timedelta(hours=1)))
        assert decision.deadline == wd(2)

    def test_an_opt_out_referral_runs_from_the_report(self) -> None:
        decision = decide_one(burglary(GIVEN, consent_at=REPORTED_AT + timedelta(days=3)))
        assert decision.deadline == wd(2)

    def test_an_ordinary_leaflet_is_due_in_five_working_days(self) -> None:
        assert decide_one(burglary(DECLINED)).due_by == wd(5)

    @pytest.mark.parametrize(
        "case",
        [
            pytest.param(burglary(DECLINED, vulnerable=True), id="vulnerable"),
            pytest.param(burglary(DECLINED, intimidated=True), id="intimidated"),
            pytest.param(burglary(DECLINED, persistently_targeted=True), id="persistent"),
            pytest.param(burglary(DECLINED, date_of_birth=CHILD_DOB), id="under-18"),
            pytest.param(sexual(DECLINED), id="sexual"),
            pytest.param(
                crime_case(make_victim(consent=DECLINED), category="homicide"), id="homicide"
            ),
            *(
                pytest.param(crime_case(make_victim(consent=DECLINED), flags={flag: True}), id=flag)
                for flag in ("domestic_abuse", "hate", "terrorism", "trafficking")
            ),
            *(
                pytest.param(
                    crime_case(
                        make_victim(consent=DECLINED),
                        category="violence_with_injury",
                        ho_class=ho_class,
                    ),
                    id=f"ho-{ho_class}",
                )
                for ho_class in ("2", "5A", "5a", "36", "56A")
            ),
        ],
    )
    def test_an_enhanced_rights_leaflet_is_due_in_one_working_day(self, case: CaseSnapshot) -> None:
        decision = decide_one(case)
        assert (decision.outcome, decision.due_by) == (Outcome.LEAFLET, wd(1))

    def test_a_leaflet_names_the_matched_rules_provider(self) -> None:
        case = crime_case(
            make_victim(consent=DECLINED, relationship=Relationship.BEREAVED_RELATIVE),
            category="homicide",
        )
        assert decide_one(case).provider == HOMICIDE

    @pytest.mark.parametrize(
        "case",
        [
            pytest.param(
                burglary(DECLINED, relationship=Relationship.BEREAVED_RELATIVE), id="bereaved"
            ),
            pytest.param(
                crime_case(
                    make_victim(consent=DECLINED, relationship=Relationship.PARENT_OR_GUARDIAN),
                    make_victim("C-0001", date_of_birth=CHILD_DOB),
                ),
                id="parent-of-a-child",
            ),
            pytest.param(
                crime_case(make_victim(consent=DECLINED), flags={"modern_slavery": True}),
                id="modern-slavery",
            ),
            pytest.param(
                crime_case(make_victim(consent=DECLINED), category="other", ho_class="05a"),
                id="class-compared-normalised",
            ),
        ],
    )
    def test_version_2_enhanced_rights_are_due_in_one_working_day(self, case: CaseSnapshot) -> None:
        decision = decide_one(case)
        assert (decision.outcome, decision.due_by) == (Outcome.LEAFLET, wd(1))


class TestIds:
    def test_a_referral_id_is_deterministic_per_provider_case_and_victim(self) -> None:
        decision = decide_one(burglary())
        assert decision.referral_id == ids.referral_id(LVS, CRIME_REF, "P-0001")

    def test_a_task_id_is_deterministic_per_case_victim_and_reason(self) -> None:
        decision = decide_one(burglary(DECLINED))
        assert decision.task_id == ids.leaflet_task_id(CRIME_REF, "P-0001", "declined")


class TestDecideAsAWhole:
    def test_gives_one_decision_per_victim_in_snapshot_order(self) -> None:
        case = crime_case(
            make_victim("P-0003"), make_victim("P-0001", deceased=True), make_victim("P-0002")
        )
        decisions = decide(case, {}, default_policy(), NOW, CALENDAR)
        assert [d.victim_id for d in decisions] == ["P-0003", "P-0001", "P-0002"]

    def test_uses_each_victims_own_history(self) -> None:
        case = crime_case(make_victim("P-0001"), make_victim("P-0002"))
        past = referred(case)
        decisions = decide(case, {"P-0001": past}, default_policy(), NOW, CALENDAR)
        assert [d.reason for d in decisions] == ["already_referred", "not_objected"]

    def test_is_deterministic(self) -> None:
        case = crime_case(make_victim("P-0001"), make_victim("P-0002", consent=DECLINED))
        first = decide(case, {}, default_policy(), NOW, CALENDAR)
        assert first == decide(case, {}, default_policy(), NOW, CALENDAR)

    def test_rejects_a_naive_now(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            decide(burglary(), {}, default_policy(), datetime(2026, 11, 23), CALENDAR)


PII = (*FAKE_NAME, FAKE_PHONE, FAKE_EMAIL, FAKE_POSTCODE, FAKE_ADDRESS_LINE, FAKE_CONTACT_PERSON)
ALL_ROWS = {**RULE_ROWS, **REGIME_ROWS, **WITHDRAWN_ROWS}


@pytest.mark.parametrize("row", ALL_ROWS.values(), ids=ALL_ROWS.keys())
def test_the_explanation_names_rule_and_reason_but_no_personal_data(row: Row) -> None:
    for decision in decide_all(row.case, row.past, now=row.now):
        text = decision.explanation
        assert f"rule {decision.rule}" in text
        assert decision.victim_id in text
        assert not [value for value in PII if value in text]
        assert ADULT_DOB.isoformat() not in text
