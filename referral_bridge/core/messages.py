"""Outbound messages built from decisions: referral and withdrawal payloads, officer tasks.

Pure builders; the shell seals payloads and wraps everything in CloudEvents envelopes.
"""

from __future__ import annotations

from datetime import datetime

from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import (
    ConsentState,
    LeafletTask,
    ReferralConsent,
    ReferralOfficer,
    ReferralPayload,
    ReferralVictim,
    TaskOfficer,
    Victim,
    WithdrawalPayload,
)
from referral_bridge.core.history import ConsentRecord

#: Flags a provider needs to shape support; other Home Office flags stay with the force.
SUPPORT_FLAGS = frozenset(
    {"domestic_abuse", "hate", "terrorism", "trafficking", "modern_slavery", "child_sexual_abuse"}
)


def effective_consent(victim: Victim, update: ConsentRecord | None) -> ReferralConsent:
    """The consent in effect: the later (by recorded_at) of the snapshot's and the latest update.

    A snapshot consent without `recorded_at` loses to any update; on a tie the update wins,
    because it was recorded for the purpose of changing consent. `decide` uses this too, so the
    consent a referral states is the consent that decided it.
    """
    snapshot = victim.consent
    if update is not None and (
        snapshot.recorded_at is None or update.recorded_at >= snapshot.recorded_at
    ):
        return ReferralConsent(
            referral=ConsentState(update.referral.value),
            basis=update.lawful_basis
            or ("consent" if update.referral.value == "given" else "no_objection"),
            recorded_at=update.recorded_at,
            recorded_by=update.recorded_by,
        )
    basis = "consent" if snapshot.referral is ConsentState.GIVEN else "no_objection"
    return ReferralConsent(
        referral=snapshot.referral,
        basis=basis,
        recorded_at=snapshot.recorded_at,
        recorded_by=snapshot.recorded_by,
    )


def referral_payload(
    case: CaseSnapshot,
    victim: Victim,
    decision: Decision,
    consent: ReferralConsent,
    issued_at: datetime,
) -> ReferralPayload:
    """The minimised referral (contract §4): what the provider needs, never the narrative."""
    if not (decision.referral_id and decision.provider and decision.service and decision.deadline):
        raise ValueError("a refer decision needs a referral id, provider, service and deadline")
    return ReferralPayload(
        referral_id=decision.referral_id,
        case_ref=case.case_ref,
        case_kind=case.kind,
        reported_at=case.reported_at,
        offence_label=case.offence_label,
        offence_category=case.category,
        flags={name: value for name, value in case.flags.items() if name in SUPPORT_FLAGS},
        provider=decision.provider,
        service=decision.service,
        victim=ReferralVictim(
            victim_id=victim.victim_id,
            kind=victim.kind,
            name=victim.name,
            date_of_birth=victim.date_of_birth,
            relationship=victim.relationship,
            contact=victim.contact,
            needs=victim.needs,
        ),
        consent=consent,
        officer=ReferralOfficer(
            collar=case.officer.collar,
            name=case.officer.name,
            unit=case.officer.unit,
            email=case.officer.email,
        ),
        deadline=decision.deadline,
        issued_at=issued_at,
    )


def withdrawal_payload(
    case_ref: str, decision: Decision, withdrawn_at: datetime, issued_at: datetime
) -> WithdrawalPayload:
    if not decision.referral_id:
        raise ValueError("a withdraw decision needs the referral id it withdraws")
    return WithdrawalPayload(
        referral_id=decision.referral_id,
        case_ref=case_ref,
        victim_id=decision.victim_id,
        withdrawn_at=withdrawn_at,
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
