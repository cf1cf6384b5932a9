"""Outbound messages built from decisions: referral, update and withdrawal payloads, officer tasks.

Pure builders; the shell seals payloads and wraps everything in CloudEvents envelopes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import (
    ConsentRegime,
    ConsentState,
    CrimeReviewTask,
    LeafletTask,
    ReferralConsent,
    ReferralOfficer,
    ReferralPayload,
    ReferralVictim,
    TaskOfficer,
    UpdatePayload,
    Victim,
    WithdrawalPayload,
    WithdrawalReason,
)
from referral_bridge.core.history import ConsentRecord

#: Flags a provider needs to shape support; other Home Office flags stay with the force.
SUPPORT_FLAGS = frozenset(
    {"domestic_abuse", "hate", "terrorism", "trafficking", "modern_slavery", "child_sexual_abuse"}
)

#: Fields that change with every message and so are not part of what the provider "holds".
_NOT_CONTENT = frozenset({"referral_id", "issued_at", "deadline", "revision"})


@dataclass(frozen=True, slots=True)
class ConsentInEffect:
    """The victim's current wish, and the lawful basis the consent itself names, if any."""

    state: ConsentState
    recorded_at: datetime | None
    recorded_by: str | None
    lawful_basis: str | None = None


def effective_consent(victim: Victim, update: ConsentRecord | None) -> ConsentInEffect:
    """The consent in effect: the later (by recorded_at) of the snapshot's and the latest update.

    A snapshot consent without `recorded_at` loses to any update; on a tie the update wins,
    because it was recorded for the purpose of changing consent. `decide` uses this too, so the
    consent a referral states is the consent that decided it.
    """
    snapshot = victim.consent
    if update is not None and (
        snapshot.recorded_at is None or update.recorded_at >= snapshot.recorded_at
    ):
        return ConsentInEffect(
            state=ConsentState(update.referral.value),
            recorded_at=update.recorded_at,
            recorded_by=update.recorded_by,
            lawful_basis=update.lawful_basis,
        )
    return ConsentInEffect(
        state=snapshot.referral,
        recorded_at=snapshot.recorded_at,
        recorded_by=snapshot.recorded_by,
    )


def referral_payload(
    case: CaseSnapshot,
    victim: Victim,
    decision: Decision,
    consent: ConsentInEffect,
    issued_at: datetime,
) -> ReferralPayload:
    """The minimised referral (contract §4): what the provider needs, never the narrative.

    `case` is the case as decided (`as_decided`), so a mapped category is what the provider
    sees. An update decision gives the update's payload: the whole referral plus its revision.
    """
    if not (
        decision.referral_id
        and decision.provider
        and decision.service
        and decision.deadline
        and decision.regime
        and decision.lawful_basis
    ):
        raise ValueError(
            "a refer or update decision needs a referral id, provider, service, deadline, "
            "regime and lawful basis"
        )
    fields = {
        "referral_id": decision.referral_id,
        "case_ref": case.case_ref,
        "case_kind": case.kind,
        "reported_at": case.reported_at,
        "offence_label": case.offence_label,
        "offence_category": case.category,
        "flags": {name: value for name, value in case.flags.items() if name in SUPPORT_FLAGS},
        "provider": decision.provider,
        "service": decision.service,
        "victim": ReferralVictim(
            victim_id=victim.victim_id,
            kind=victim.kind,
            name=victim.name,
            date_of_birth=victim.date_of_birth,
            relationship=victim.relationship,
            contact=victim.contact,
            needs=victim.needs,
        ),
        "consent": ReferralConsent(
            regime=ConsentRegime(decision.regime),
            state=consent.state,
            recorded_at=consent.recorded_at,
            recorded_by=consent.recorded_by,
        ),
        "lawful_basis": decision.lawful_basis,
        "officer": ReferralOfficer(
            collar=case.officer.collar,
            name=case.officer.name,
            unit=case.officer.unit,
            email=case.officer.email,
        ),
        "deadline": decision.deadline,
        "issued_at": issued_at,
    }
    if decision.revision is not None:
        return UpdatePayload(**fields, revision=decision.revision)
    return ReferralPayload(**fields)


def fingerprint(payload: ReferralPayload) -> str:
    """What the provider holds, as a digest: equal content gives an equal fingerprint."""
    content = payload.model_dump(mode="json", exclude=set(_NOT_CONTENT))
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def withdrawal_payload(case_ref: str, decision: Decision, issued_at: datetime) -> WithdrawalPayload:
    if not (decision.referral_id and decision.provider and decision.arose_at):
        raise ValueError("a withdraw decision needs the referral id, provider and when it arose")
    return WithdrawalPayload(
        referral_id=decision.referral_id,
        provider=decision.provider,
        case_ref=case_ref,
        victim_id=decision.victim_id,
        reason=WithdrawalReason(decision.reason),
        withdrawn_at=decision.arose_at,
        issued_at=issued_at,
    )


def leaflet_task(case: CaseSnapshot, decision: Decision) -> LeafletTask:
    """The officer's task: ids and reason only; the officer already holds the victim's details."""
    if not (decision.task_id and decision.due_by and decision.provider):
        raise ValueError("a leaflet decision needs a task id, due time and provider")
    return LeafletTask(
        task_id=decision.task_id,
        case_ref=case.case_ref,
        case_kind=case.kind,
        victim_id=decision.victim_id,
        officer=TaskOfficer(collar=case.officer.collar, unit=case.officer.unit),
        reason=decision.reason,
        due_by=decision.due_by,
        provider=decision.provider,
    )


def crime_review_task(incident: CaseSnapshot, task_id: str, due_by: datetime) -> CrimeReviewTask:
    """The registrar's task for an incident whose disclosed crime was not recorded in time."""
    return CrimeReviewTask(
        task_id=task_id,
        incident_ref=incident.case_ref,
        incident_category=incident.category,
        opened_at=incident.reported_at,
        officer=TaskOfficer(collar=incident.officer.collar, unit=incident.officer.unit),
        due_by=due_by,
    )
