"""The decisions for each victim of a case: a pure function of snapshot, history, policy and time.

The shell loads the case's latest snapshot and what was already done for each victim (the
ledger), calls `decide`, and carries out the decisions. Deciding again with the same inputs
gives the same decisions, and deciding after the decisions were carried out never repeats them.
A referral is followed for its whole life (rules.md version 2): each newer snapshot or consent
is compared with what the provider holds, which gives updates, withdrawals and new referrals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime

from referral_bridge.core import ids
from referral_bridge.core.calendar import LONDON, WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot, as_decided
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import (
    ConsentState,
    ContactMethod,
    CrimeStatus,
    Relationship,
    Victim,
)
from referral_bridge.core.history import EMPTY_HISTORY, SentReferral, VictimHistory
from referral_bridge.core.messages import (
    ConsentInEffect,
    effective_consent,
    fingerprint,
    referral_payload,
)
from referral_bridge.core.policy import Conditions, Policy, Regime, Rule, normalise_class

#: What each reason code means, for `Decision.explanation`. Every code `decide` returns is here
#: except a regime-"none" rule's name, which is its own reason.
REASONS: Mapping[str, str] = {
    # refer
    "consent_given": "consent was given, so refer",
    "not_objected": "the rule refers unless the victim declines, and they have not, so refer",
    # update
    "referral_changed": (
        "what the provider holds for this victim has changed, so send it the current referral"
    ),
    # leaflet
    "declined": "the victim declined a referral, so the officer gives a leaflet",
    "consent_needed": (
        "explicit consent is needed and has not been asked yet, so the officer asks for it and "
        "gives the information now"
    ),
    "incident_information": (
        "an incident is referred only with consent, so the officer gives a leaflet"
    ),
    "no_safe_contact": (
        "there is no safe, usable contact by the preferred method, so the officer gives a "
        "leaflet instead of a referral"
    ),
    "bereaved_not_recorded": (
        "the victim died and no bereaved relative is recorded for the case, so the officer "
        "records the family so they can be offered support"
    ),
    # hold
    "awaiting_consent": "explicit consent is needed and has not been given yet, so wait for it",
    # withdraw (see also _WITHDRAW_REASONS)
    "not_safe_to_contact": "the victim is no longer safe to contact by the preferred method",
    "consent_regime_changed": (
        "the case now needs explicit consent, and the referral was made without it"
    ),
    "rerouted": "the victim's rule now refers to another provider",
    # none
    "withdrawn": "consent was withdrawn and no referral is outstanding, so nothing is sent",
    "consent_not_obtained": (
        "explicit consent was not given within the consent wait; consent recorded later still "
        "refers"
    ),
    "previously_withdrawn": (
        "the victim withdrew or declined earlier, and only consent given again refers again"
    ),
    "already_referred": "the provider already holds the current referral, so nothing is sent",
    "already_leafleted": "a leaflet task for this reason already exists",
    "followed_by_another_case": (
        "the referral is followed by the other crime of this matter it was made or updated under"
    ),
    "crime_cancelled": "the crime was cancelled, so nothing new is sent",
    "crime_transferred": "the crime was transferred to another force, so nothing new is sent",
    "organisation_no_explicit_consent": (
        "an organisation is referred only with consent given through a named contact person"
    ),
}
#: Withdrawal reasons whose explanation is not the leaflet's of the same code.
_WITHDRAW_REASONS = {
    "withdrawn": "consent was withdrawn after a referral was sent, so withdraw it",
    "declined": "the victim declined after a referral was sent, so withdraw it",
}


class DecisionError(Exception):
    """Raised when no policy rule matches a victim: a validated Policy prevents it; report a bug."""


@dataclass(frozen=True)
class _Step:
    """One outcome before ids, deadlines and the explanation are filled in."""

    outcome: Outcome
    reason: str
    #: withdraw, update: the referral concerned.
    referral: SentReferral | None = None
    provider: str | None = None
    service: str | None = None


@dataclass(frozen=True)
class _Context:
    case: CaseSnapshot
    victim: Victim
    past: VictimHistory
    rule: Rule
    consent: ConsentInEffect
    policy: Policy
    now: datetime
    calendar: WorkingDayCalendar


def decide(
    case: CaseSnapshot,
    history: Mapping[str, VictimHistory],
    policy: Policy,
    now: datetime,
    calendar: WorkingDayCalendar,
) -> tuple[Decision, ...]:
    """The decisions for each victim of `case`, in snapshot order (one or more per victim).

    `history` maps victim ids to what was already done for them in this matter (missing:
    nothing). A victim gets several decisions when one change needs several things done, for
    example a withdrawal and the referral to the new provider, or a hold and the officer's
    `consent_needed` task.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("decide needs a timezone-aware `now`")
    decided = as_decided(case, policy)
    decisions: list[Decision] = []
    for victim in decided.victims:
        past = history.get(victim.victim_id, EMPTY_HISTORY)
        context = _Context(
            case=decided,
            victim=victim,
            past=past,
            rule=_matching_rule(decided, victim, policy),
            consent=effective_consent(victim, past.consent),
            policy=policy,
            now=now,
            calendar=calendar,
        )
        decisions.extend(_finish(context, _steps(context)))
    return tuple(decisions)


# --- what should happen ------------------------------------------------------------------------


def _steps(c: _Context) -> list[_Step]:  # noqa: C901 (the rules' steps in rules.md's order, kept in one place)
    live = c.past.live()
    state = c.consent.state
    # The victim's "no" is honoured first, whatever the rule, status or history.
    if state is ConsentState.WITHDRAWN:
        return [_Step(Outcome.WITHDRAW, "withdrawn", referral=r) for r in live] or [
            _Step(Outcome.NONE, "withdrawn")
        ]
    if state is ConsentState.DECLINED:
        withdrawals = [_Step(Outcome.WITHDRAW, "declined", referral=r) for r in live]
        if c.rule.regime is Regime.NONE:
            return [*withdrawals, _none_rule(c)]
        if c.rule.requires_contact_person:
            return [*withdrawals, _Step(Outcome.NONE, "organisation_no_explicit_consent")]
        return [*withdrawals, _Step(Outcome.LEAFLET, "declined", provider=c.rule.provider)]
    if c.case.status is CrimeStatus.CANCELLED:
        return [_Step(Outcome.NONE, "crime_cancelled")]
    if c.case.status is CrimeStatus.TRANSFERRED:
        return [_Step(Outcome.NONE, "crime_transferred")]
    if c.rule.regime is Regime.NONE:
        return [_none_rule(c)]
    wanted = _wanted(c)
    if not live:
        return _without_referral(c, wanted)
    followed = [r for r in live if _follows(c, r)]
    if not followed:
        return [_Step(Outcome.NONE, "followed_by_another_case")]
    steps: list[_Step] = []
    for referral in followed:
        steps.extend(_with_referral(c, wanted, referral))
    return steps


def _follows(c: _Context, referral: SentReferral) -> bool:
    """A case follows a referral made or last updated under it or an incident it was recorded
    from; one made under another crime of the same matter is that crime's to follow (two
    crimes from one incident would otherwise overwrite each other's updates)."""
    _revision, _fingerprint, holder = c.past.held(referral)
    return holder == c.case.case_ref or holder in c.case.linked_refs


def _none_rule(c: _Context) -> _Step:
    """Regime "none": nothing is sent, but a deceased victim's family must be recorded."""
    if c.rule.bereaved_task_provider is not None and _first_without_bereaved(c):
        return _Step(
            Outcome.LEAFLET, "bereaved_not_recorded", provider=c.rule.bereaved_task_provider
        )
    return _Step(Outcome.NONE, c.rule.name)


def _first_without_bereaved(c: _Context) -> bool:
    """One task per case: for its first deceased victim, when no bereaved relative is recorded."""
    victims = c.case.victims
    if any(v.relationship is Relationship.BEREAVED_RELATIVE for v in victims):
        return False
    first = next(v for v in victims if v.deceased)
    return first.victim_id == c.victim.victim_id


def _wanted(c: _Context) -> _Step:
    """What the rule says for the consent in effect, as if nothing had been done yet."""
    rule, state = c.rule, c.consent.state
    given = state is ConsentState.GIVEN
    refer = _Step(
        Outcome.REFER,
        "consent_given" if given else "not_objected",
        provider=rule.provider,
        service=rule.service,
    )
    if rule.requires_contact_person:
        if given and (c.victim.name.contact_person or "").strip():
            return refer
        return _Step(Outcome.NONE, "organisation_no_explicit_consent")
    if given:
        return refer if _can_contact(c.victim) else _no_contact(rule)
    if c.past.withdrew_for_consent():
        return _Step(Outcome.NONE, "previously_withdrawn")
    if rule.regime is Regime.INCIDENT:
        return _Step(Outcome.LEAFLET, "incident_information", provider=rule.provider)
    if rule.regime is Regime.OPT_OUT:
        return refer if _can_contact(c.victim) else _no_contact(rule)
    return _Step(Outcome.HOLD, "awaiting_consent", provider=rule.provider, service=rule.service)


def _no_contact(rule: Rule) -> _Step:
    return _Step(Outcome.LEAFLET, "no_safe_contact", provider=rule.provider)


def _without_referral(c: _Context, wanted: _Step) -> list[_Step]:
    return _hold(c) if wanted.outcome is Outcome.HOLD else [wanted]


def _hold(c: _Context) -> list[_Step]:
    """Explicit consent not given: the officer is asked at once; the hold waits for consent."""
    ask = _Step(Outcome.LEAFLET, "consent_needed", provider=c.rule.provider)
    if c.now >= _hold_until(c):
        return [ask, _Step(Outcome.NONE, "consent_not_obtained")]
    return [
        _Step(Outcome.HOLD, "awaiting_consent", provider=c.rule.provider, service=c.rule.service),
        ask,
    ]


def _with_referral(c: _Context, wanted: _Step, referral: SentReferral) -> list[_Step]:
    """Compare what the rule wants now with what the provider holds (rules.md
    "Reclassification" and "any other change")."""
    if wanted.outcome is Outcome.REFER:
        if wanted.provider != referral.provider:
            return [_Step(Outcome.WITHDRAW, "rerouted", referral=referral), wanted]
        return [
            _Step(
                Outcome.UPDATE,
                "referral_changed",
                referral=referral,
                provider=referral.provider,
                service=wanted.service,
            )
        ]
    if wanted.outcome is Outcome.LEAFLET and wanted.reason == "no_safe_contact":
        return [_Step(Outcome.WITHDRAW, "not_safe_to_contact", referral=referral), wanted]
    if wanted.outcome is Outcome.HOLD:
        return [_Step(Outcome.WITHDRAW, "consent_regime_changed", referral=referral), *_hold(c)]
    if wanted.outcome is Outcome.LEAFLET:
        # An incident rule now, which refers only with consent the referral was made without.
        return [_Step(Outcome.WITHDRAW, "consent_regime_changed", referral=referral), wanted]
    return [_Step(Outcome.NONE, "already_referred")]


# --- ids, deadlines, explanations --------------------------------------------------------------


def _finish(c: _Context, steps: list[_Step]) -> list[Decision]:
    """Turn steps into Decisions: drop repeats, add ids, deadlines and the explanation."""
    decisions = [d for step in steps if (d := _decision(c, step)) is not None]
    repeated: str | None = None
    if not decisions:
        # Only a leaflet already issued is dropped, so a step was a leaflet.
        repeated = next(s.reason for s in steps if s.outcome is Outcome.LEAFLET)
        decisions = [_base(c, Outcome.NONE, "already_leafleted")]
    hold_open = c.past.hold is not None and c.past.hold.open
    if hold_open and not any(d.outcome is Outcome.HOLD for d in decisions):
        # The last decision ends it, so the hold records the final reason (consent_not_obtained
        # after the officer's task, for example).
        decisions[-1] = decisions[-1].model_copy(update={"ends_hold": True})
    return [d.model_copy(update={"explanation": _explain(c, d, repeated)}) for d in decisions]


def _base(c: _Context, outcome: Outcome, reason: str) -> Decision:
    return Decision(
        case_ref=c.case.case_ref,
        victim_id=c.victim.victim_id,
        outcome=outcome,
        rule=c.rule.id,
        regime=c.rule.regime.value,
        reason=reason,
        explanation="",
        category=c.case.category,
    )


def _decision(c: _Context, step: _Step) -> Decision | None:
    vid, case = c.victim.victim_id, c.case
    base = _base(c, step.outcome, step.reason)
    match step.outcome:
        case Outcome.LEAFLET:
            if c.past.has_leaflet(step.reason):
                return None
            due_by = c.calendar.add_working_days(case.reported_at, _leaflet_days(c))
            return base.model_copy(
                update={
                    "provider": step.provider,
                    "task_id": ids.leaflet_task_id(case.case_ref, vid, step.reason),
                    "due_by": due_by,
                }
            )
        case Outcome.HOLD:
            return base.model_copy(
                update={
                    "provider": step.provider,
                    "service": step.service,
                    "hold_until": _hold_until(c),
                }
            )
        case Outcome.WITHDRAW:
            assert step.referral is not None
            arose = c.now
            if step.reason in ("withdrawn", "declined") and c.consent.recorded_at is not None:
                arose = c.consent.recorded_at
            return base.model_copy(
                update={
                    "provider": step.referral.provider,
                    "service": step.referral.service,
                    "referral_id": step.referral.referral_id,
                    "arose_at": arose,
                    "lawful_basis": c.consent.lawful_basis or c.rule.lawful_basis,
                }
            )
        case Outcome.REFER:
            return _refer(c, step, base)
        case Outcome.UPDATE:
            return _update(c, step, base)
        case _:
            return base


def _refer(c: _Context, step: _Step, base: Decision) -> Decision:
    provider, service = _destination(c.rule, step)
    generation = c.past.next_generation(provider)
    start = c.case.reported_at
    # Explicit consent, or consent given again after a withdrawal: the clock starts at consent.
    recorded = c.consent.recorded_at
    given = c.consent.state is ConsentState.GIVEN and recorded is not None
    if given and recorded is not None and (c.rule.regime is Regime.EXPLICIT or generation > 1):
        start = max(start, recorded)
    deadline = c.calendar.add_working_days(start, c.policy.deadlines.referral_working_days)
    decision = base.model_copy(
        update={
            "provider": provider,
            "service": service,
            "referral_id": ids.referral_id_for(
                provider, c.case.case_ref, c.victim.victim_id, generation
            ),
            "generation": generation,
            "deadline": deadline,
            "clock_from": start,
            "lawful_basis": c.consent.lawful_basis or c.rule.lawful_basis,
            "late": c.now > deadline,
        }
    )
    return decision.model_copy(update={"fingerprint": _fingerprint(c, decision)})


def _update(c: _Context, step: _Step, base: Decision) -> Decision | None:
    referral = step.referral
    assert referral is not None
    revision, held, _holder = c.past.held(referral)
    deadline = referral.deadline or c.calendar.add_working_days(
        c.case.reported_at, c.policy.deadlines.referral_working_days
    )
    decision = base.model_copy(
        update={
            "provider": referral.provider,
            "service": step.service,
            "referral_id": referral.referral_id,
            "revision": revision + 1,
            "deadline": deadline,
            "lawful_basis": c.consent.lawful_basis or c.rule.lawful_basis,
        }
    )
    current = _fingerprint(c, decision)
    if current == held:
        return base.model_copy(update={"outcome": Outcome.NONE, "reason": "already_referred"})
    return decision.model_copy(update={"fingerprint": current})


def _fingerprint(c: _Context, decision: Decision) -> str:
    return fingerprint(referral_payload(c.case, c.victim, decision, c.consent, c.now))


def _destination(rule: Rule, step: _Step) -> tuple[str, str]:
    provider, service = step.provider or rule.provider, step.service or rule.service
    if provider is None or service is None:
        # Rule validation requires both for every regime that sends anything.
        raise DecisionError(f"rule {rule.id} refers but names no provider or service")
    return provider, service


def _explain(c: _Context, d: Decision, repeated: str | None) -> str:
    """PII-free prose: ids, rule names, codes and instants only."""
    rule = c.rule
    parts = [
        f"Case {d.case_ref}, victim {d.victim_id}: rule {rule.id} ({rule.name}, "
        f"regime {rule.regime.value}); consent {c.consent.state.value}.",
    ]
    if d.outcome is Outcome.WITHDRAW:
        reason = _WITHDRAW_REASONS.get(d.reason) or f"{REASONS[d.reason]}, so withdraw the referral"
    elif d.reason == "already_leafleted" and repeated:
        reason = f"a leaflet task for reason {repeated} already exists, so it is not repeated"
    else:
        reason = REASONS.get(d.reason, f"rule {rule.name} sends nothing")
    parts.append(reason[0].upper() + reason[1:] + ".")
    if d.outcome is Outcome.REFER:
        again = f" (generation {d.generation}: referred again)" if (d.generation or 1) > 1 else ""
        parts.append(
            f"Refer to {d.provider} ({d.service}) as {d.referral_id}{again}; "
            f"Victims' Code deadline {_iso(d.deadline)}"
            + (", already passed: recorded as late." if d.late else ".")
        )
    elif d.outcome is Outcome.UPDATE:
        parts.append(
            f"Update referral {d.referral_id} at {d.provider} ({d.service}) to revision "
            f"{d.revision}."
        )
    elif d.outcome is Outcome.LEAFLET:
        parts.append(f"Leaflet task {d.task_id} ({d.provider}) due by {_iso(d.due_by)}.")
    elif d.outcome is Outcome.HOLD:
        parts.append(f"Hold until {_iso(d.hold_until)}.")
    elif d.outcome is Outcome.WITHDRAW:
        parts.append(f"Withdraw referral {d.referral_id} from {d.provider} ({d.reason}).")
    if d.ends_hold:
        parts.append("The open hold ends.")
    return " ".join(parts)


def _iso(instant: datetime | None) -> str:
    return instant.isoformat() if instant is not None else "-"


# --- matching ----------------------------------------------------------------------------------


def _matching_rule(case: CaseSnapshot, victim: Victim, policy: Policy) -> Rule:
    for rule in policy.rules:
        if case.rules_kind in rule.applies_to and _matches(rule, case, victim):
            return rule
    raise DecisionError(
        f"no policy rule applies to a {case.rules_kind.value} victim {victim.victim_id}"
    )


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
    if when.guardian_of_under_age is not None:
        checks.append(
            victim.relationship is Relationship.PARENT_OR_GUARDIAN
            and any(_younger_than(v, when.guardian_of_under_age, case) for v in case.victims)
        )
    return checks


def _younger_than(victim: Victim, years: int, case: CaseSnapshot) -> bool:
    """Under `years` on the London date of the report; an unknown date of birth is not."""
    if victim.date_of_birth is None:
        return False
    return _age(victim.date_of_birth, case.reported_at.astimezone(LONDON).date()) < years


def _age(born: date, on: date) -> int:
    # Someone born on 29 February is a year older on 1 March in a common year.
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _hold_until(c: _Context) -> datetime:
    return c.calendar.add_working_days(
        c.case.reported_at, c.policy.deadlines.consent_wait_working_days
    )


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


def _leaflet_days(c: _Context) -> int:
    deadlines = c.policy.deadlines
    if _has_enhanced_rights(c.case, c.victim, c.policy):
        return deadlines.leaflet_enhanced_working_days
    return deadlines.leaflet_working_days


def _has_enhanced_rights(case: CaseSnapshot, victim: Victim, policy: Policy) -> bool:
    rights = policy.enhanced_rights
    ho_class = normalise_class(case.ho_class or "")
    return (
        case.category in rights.categories
        or any(case.flags.get(flag, False) for flag in rights.flags)
        or (bool(ho_class) and ho_class in {normalise_class(c) for c in rights.ho_classes})
        or victim.relationship in rights.relationships
        or _younger_than(victim, rights.under_age, case)
        # A parent or guardian acts for the child, so has the child's rights (rules.md rule 7).
        or (
            victim.relationship is Relationship.PARENT_OR_GUARDIAN
            and any(_younger_than(v, rights.under_age, case) for v in case.victims)
        )
        or any(getattr(victim.needs, need) for need in rights.needs)
    )
