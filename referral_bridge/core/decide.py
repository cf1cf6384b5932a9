"""The decision for each victim of a case: a pure function of snapshot, history, policy and time.

The shell loads the case's latest snapshot and what was already done for each victim (the
ledger), calls `decide`, and carries out the decisions. Deciding again with the same inputs
gives the same decisions, and deciding after a decision was carried out never repeats it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from referral_bridge.core import ids
from referral_bridge.core.calendar import LONDON, WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import (
    ConsentChange,
    ConsentState,
    ContactMethod,
    CrimeStatus,
    Victim,
)
from referral_bridge.core.history import EMPTY_HISTORY, ConsentRecord, SentReferral, VictimHistory
from referral_bridge.core.messages import effective_consent
from referral_bridge.core.policy import Conditions, Policy, Regime, Rule

#: What each reason code means, for `Decision.explanation`. Every code `decide` returns is here
#: except a regime-"none" rule's name, which is its own reason.
REASONS: Mapping[str, str] = {
    # refer
    "consent_given": "consent was given, so refer",
    "not_objected": "the rule refers unless the victim declines, and they have not, so refer",
    # leaflet
    "declined": "the victim declined a referral, so the officer gives a leaflet",
    "consent_not_obtained": (
        "explicit consent was not obtained before the hold ended, so the officer gives a leaflet"
    ),
    "incident_information": (
        "an incident is referred only with consent, so the officer gives a leaflet"
    ),
    "no_safe_contact": (
        "there is no safe, usable contact by the preferred method, so the officer gives a "
        "leaflet instead of a referral"
    ),
    # hold
    "awaiting_consent": "explicit consent is needed and has not been asked yet, so wait for it",
    # withdraw
    "consent_withdrawn": "consent was withdrawn after a referral was sent, so withdraw it",
    # none
    "withdrawn": "consent was withdrawn and no referral is outstanding, so nothing is sent",
    "previously_withdrawn": (
        "consent was withdrawn earlier for this case, and later consent never re-refers"
    ),
    "already_referred": "the victim was already referred for this case, so nothing new is sent",
    "already_leafleted": "a leaflet task for this reason already exists",
    "crime_cancelled": "the crime was cancelled, so nothing new is sent",
    "crime_transferred": "the crime was transferred to another force, so nothing new is sent",
    "organisation_no_explicit_consent": (
        "an organisation is referred only with consent given through a named contact person"
    ),
}


class DecisionError(Exception):
    """Raised when no policy rule matches a victim: a validated Policy prevents it; report a bug."""


@dataclass(frozen=True)
class _Consent:
    state: ConsentState
    recorded_at: datetime | None


@dataclass(frozen=True)
class _Verdict:
    """An outcome before deduplication against history and the filling in of ids and times."""

    outcome: Outcome
    reason: str
    referral: SentReferral | None = None


def decide(
    case: CaseSnapshot,
    history: Mapping[str, VictimHistory],
    policy: Policy,
    now: datetime,
    calendar: WorkingDayCalendar,
) -> tuple[Decision, ...]:
    """One decision per victim of `case`, in snapshot order.

    `history` maps victim ids to what was already done for them in this case (missing: nothing).
    An incident follows the incident rules even when the caller disclosed a crime
    (`crime_disclosed`): it becomes a crime case only when a crime is recorded from it.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("decide needs a timezone-aware `now`")
    return tuple(
        _decide_victim(
            case, victim, history.get(victim.victim_id, EMPTY_HISTORY), policy, now, calendar
        )
        for victim in case.victims
    )


def _decide_victim(
    case: CaseSnapshot,
    victim: Victim,
    past: VictimHistory,
    policy: Policy,
    now: datetime,
    calendar: WorkingDayCalendar,
) -> Decision:
    rule = _matching_rule(case, victim, policy)
    consent = _effective_consent(victim, past.consent)
    verdict = _verdict(case, victim, past, rule, consent, now, policy, calendar)
    return _finish(case, victim, past, rule, consent, verdict, policy, calendar)


def _verdict(
    case: CaseSnapshot,
    victim: Victim,
    past: VictimHistory,
    rule: Rule,
    consent: _Consent,
    now: datetime,
    policy: Policy,
    calendar: WorkingDayCalendar,
) -> _Verdict:
    # Withdrawal comes first: it is honoured whatever the rule, status or history.
    if consent.state is ConsentState.WITHDRAWN:
        outstanding = next((r for r in past.referrals if not past.withdrawn(r.referral_id)), None)
        if outstanding is not None:
            return _Verdict(Outcome.WITHDRAW, "consent_withdrawn", outstanding)
        return _Verdict(Outcome.NONE, "withdrawn")
    if _previously_withdrawn(victim, past):
        return _Verdict(Outcome.NONE, "previously_withdrawn")
    if case.status is CrimeStatus.CANCELLED:
        return _Verdict(Outcome.NONE, "crime_cancelled")
    if case.status is CrimeStatus.TRANSFERRED:
        return _Verdict(Outcome.NONE, "crime_transferred")
    if rule.regime is Regime.NONE:
        return _Verdict(Outcome.NONE, rule.name)
    # Reclassification re-decides only victims not yet referred (rules.md).
    if past.referrals:
        return _Verdict(Outcome.NONE, "already_referred")

    verdict = _apply_regime(case, victim, rule, consent, now, policy, calendar)
    if verdict.outcome is Outcome.REFER and not _can_contact(victim):
        return _Verdict(Outcome.LEAFLET, "no_safe_contact")
    return verdict


def _apply_regime(
    case: CaseSnapshot,
    victim: Victim,
    rule: Rule,
    consent: _Consent,
    now: datetime,
    policy: Policy,
    calendar: WorkingDayCalendar,
) -> _Verdict:
    given = consent.state is ConsentState.GIVEN
    if rule.requires_contact_person:
        if given and (victim.name.contact_person or "").strip():
            return _Verdict(Outcome.REFER, "consent_given")
        return _Verdict(Outcome.NONE, "organisation_no_explicit_consent")
    if given:
        return _Verdict(Outcome.REFER, "consent_given")
    if rule.regime is Regime.INCIDENT:
        return _Verdict(Outcome.LEAFLET, "incident_information")
    if consent.state is ConsentState.DECLINED:
        return _Verdict(Outcome.LEAFLET, "declined")
    if rule.regime is Regime.OPT_OUT:
        return _Verdict(Outcome.REFER, "not_objected")
    # Explicit consent, not asked yet: hold until the hold ends, then a leaflet.
    if now >= _hold_until(case, policy, calendar):
        return _Verdict(Outcome.LEAFLET, "consent_not_obtained")
    return _Verdict(Outcome.HOLD, "awaiting_consent")


def _finish(
    case: CaseSnapshot,
    victim: Victim,
    past: VictimHistory,
    rule: Rule,
    consent: _Consent,
    verdict: _Verdict,
    policy: Policy,
    calendar: WorkingDayCalendar,
) -> Decision:
    """Turn a verdict into a Decision: drop repeats, add ids, deadlines and the explanation."""
    vid = victim.victim_id
    outcome, reason = verdict.outcome, verdict.reason
    repeated: str | None = None
    if outcome is Outcome.LEAFLET and past.has_leaflet(reason):
        repeated, outcome, reason = reason, Outcome.NONE, "already_leafleted"

    provider = service = referral_id = task_id = None
    deadline = due_by = hold_until = None
    if outcome is Outcome.REFER:
        provider, service = _destination(rule)
        referral_id = ids.referral_id(provider, case.case_ref, vid)
        start = case.reported_at
        if rule.regime is Regime.EXPLICIT and consent.recorded_at is not None:
            start = max(start, consent.recorded_at)
        deadline = calendar.add_working_days(start, policy.deadlines.referral_working_days)
    elif outcome is Outcome.LEAFLET:
        provider = rule.provider
        task_id = ids.leaflet_task_id(case.case_ref, vid, reason)
        days = (
            policy.deadlines.leaflet_enhanced_working_days
            if _has_enhanced_rights(case, victim, policy)
            else policy.deadlines.leaflet_working_days
        )
        due_by = calendar.add_working_days(case.reported_at, days)
    elif outcome is Outcome.HOLD:
        provider, service = rule.provider, rule.service
        hold_until = _hold_until(case, policy, calendar)
    elif outcome is Outcome.WITHDRAW and verdict.referral is not None:
        provider, service = verdict.referral.provider, verdict.referral.service
        referral_id = verdict.referral.referral_id
    decision = Decision(
        case_ref=case.case_ref,
        victim_id=vid,
        outcome=outcome,
        rule=rule.id,
        regime=rule.regime.value,
        reason=reason,
        explanation="",
        provider=provider,
        service=service,
        referral_id=referral_id,
        task_id=task_id,
        deadline=deadline,
        due_by=due_by,
        hold_until=hold_until,
        ends_hold=past.hold is not None and past.hold.open and outcome is not Outcome.HOLD,
    )
    return decision.model_copy(
        update={"explanation": _explain(decision, rule, consent, repeated=repeated)}
    )


def _destination(rule: Rule) -> tuple[str, str]:
    if rule.provider is None or rule.service is None:
        # Rule validation requires both for every regime that sends anything.
        raise DecisionError(f"rule {rule.id} refers but names no provider or service")
    return rule.provider, rule.service


def _explain(decision: Decision, rule: Rule, consent: _Consent, *, repeated: str | None) -> str:
    """PII-free prose: ids, rule names, codes and instants only."""
    parts = [
        f"Case {decision.case_ref}, victim {decision.victim_id}: rule {rule.id} ({rule.name}, "
        f"regime {rule.regime.value}); consent {consent.state.value}.",
    ]
    reason = REASONS.get(decision.reason, f"rule {rule.name} sends nothing")
    if repeated is not None:
        reason = f"a leaflet task for reason {repeated} already exists, so it is not repeated"
    parts.append(reason[0].upper() + reason[1:] + ".")
    if decision.outcome is Outcome.REFER:
        parts.append(
            f"Refer to {decision.provider} ({decision.service}) as {decision.referral_id}; "
            f"Victims' Code deadline {_iso(decision.deadline)}."
        )
    elif decision.outcome is Outcome.LEAFLET:
        parts.append(
            f"Leaflet task {decision.task_id} ({decision.provider}) due by {_iso(decision.due_by)}."
        )
    elif decision.outcome is Outcome.HOLD:
        parts.append(f"Hold until {_iso(decision.hold_until)}.")
    elif decision.outcome is Outcome.WITHDRAW:
        parts.append(f"Withdraw referral {decision.referral_id} from {decision.provider}.")
    if decision.ends_hold:
        parts.append("The open hold ends.")
    return " ".join(parts)


def _iso(instant: datetime | None) -> str:
    return instant.isoformat() if instant is not None else "-"


def _matching_rule(case: CaseSnapshot, victim: Victim, policy: Policy) -> Rule:
    for rule in policy.rules:
        if case.kind in rule.applies_to and _matches(rule, case, victim):
            return rule
    raise DecisionError(f"no policy rule applies to a {case.kind.value} victim {victim.victim_id}")


def _matches(rule: Rule, case: CaseSnapshot, victim: Victim) -> bool:
    checks = _checks(rule.when, case, victim)
    if not checks:
        return True
    return any(checks) if rule.match == "any" else all(checks)


def _checks(when: Conditions, case: CaseSnapshot, victim: Victim) -> list[bool]:
    checks: list[bool] = []
    if when.victim_kind is not None:
        checks.append(victim.kind is when.victim_kind)
    if when.deceased is not None:
        checks.append(victim.deceased is when.deceased)
    if when.categories:
        checks.append(case.category in when.categories)
    if when.relationships:
        checks.append(victim.relationship in when.relationships)
    if when.flags:
        checks.append(any(case.flags.get(flag, False) for flag in when.flags))
    if when.under_age is not None:
        checks.append(_younger_than(victim, when.under_age, case))
    return checks


def _younger_than(victim: Victim, years: int, case: CaseSnapshot) -> bool:
    """Under `years` on the London date of the report; an unknown date of birth is not."""
    if victim.date_of_birth is None:
        return False
    return _age(victim.date_of_birth, case.reported_at.astimezone(LONDON).date()) < years


def _age(born: date, on: date) -> int:
    # Someone born on 29 February is a year older on 1 March in a common year.
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _effective_consent(victim: Victim, update: ConsentRecord | None) -> _Consent:
    """The consent in effect, as messages.effective_consent (one rule for deciding and stating)."""
    consent = effective_consent(victim, update)
    return _Consent(consent.referral, consent.recorded_at)


def _previously_withdrawn(victim: Victim, past: VictimHistory) -> bool:
    """Whether consent was withdrawn before the consent now in effect (never re-refer)."""
    return (
        bool(past.withdrawals)
        or victim.consent.referral is ConsentState.WITHDRAWN
        or (past.consent is not None and past.consent.referral is ConsentChange.WITHDRAWN)
    )


def _hold_until(case: CaseSnapshot, policy: Policy, calendar: WorkingDayCalendar) -> datetime:
    return calendar.add_working_days(case.reported_at, policy.deadlines.hold_working_days)


def _can_contact(victim: Victim) -> bool:
    """A referral needs a safe way to reach the victim by the method they prefer.

    safe_to_contact is required for every referral (rules.md), which also satisfies any rule
    with `requires_safe_to_contact` (domestic abuse), so that flag needs no check of its own.
    """
    contact = victim.contact
    if not contact.safe_to_contact:
        return False
    if contact.preferred is ContactMethod.PHONE:
        return bool((contact.phone or "").strip())
    if contact.preferred is ContactMethod.EMAIL:
        return bool((contact.email or "").strip())
    if contact.preferred is ContactMethod.POST:
        return contact.address is not None
    return False


def _has_enhanced_rights(case: CaseSnapshot, victim: Victim, policy: Policy) -> bool:
    rights = policy.enhanced_rights
    ho_class = (case.ho_class or "").strip().upper()
    return (
        case.category in rights.categories
        or any(case.flags.get(flag, False) for flag in rights.flags)
        or (bool(ho_class) and ho_class in {c.upper() for c in rights.ho_classes})
        or _younger_than(victim, rights.under_age, case)
        or any(getattr(victim.needs, need) for need in rights.needs)
    )
