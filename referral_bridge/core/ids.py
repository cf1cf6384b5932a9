"""Deterministic message ids: the same inputs always give the same id, so repeats are harmless."""

from __future__ import annotations

import uuid

#: Fixed namespace for referral-bridge ids; changing it would break idempotency for providers.
NAMESPACE = uuid.UUID("6f1d8a52-43d4-5b63-9a0e-4c1f2b7e9d10")


def referral_id(provider: str, case_ref: str, victim_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"referral\x1f{provider}\x1f{case_ref}\x1f{victim_id}"))


def withdrawal_id(referral_id_: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"withdrawal\x1f{referral_id_}"))


def leaflet_task_id(case_ref: str, victim_id: str, reason: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"task.leaflet\x1f{case_ref}\x1f{victim_id}\x1f{reason}"))


def referral_id_for(provider: str, case_ref: str, victim_id: str, generation: int) -> str:
    """Generation 1 is version 1's id; a referral made again after a withdrawal gets a new one."""
    if generation < 1:
        raise ValueError("referral generations count from 1")
    if generation == 1:
        return referral_id(provider, case_ref, victim_id)
    return str(
        uuid.uuid5(
            NAMESPACE, f"referral\x1f{provider}\x1f{case_ref}\x1f{victim_id}\x1f{generation}"
        )
    )


def update_id(referral_id_: str, revision: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"update\x1f{referral_id_}\x1f{revision}"))


def crime_review_task_id(incident_ref: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"task.crime_review\x1f{incident_ref}"))


def escalation_task_id(escalated_task_id: str) -> str:
    """One escalation per overdue task: the same task always gives the same id."""
    return str(uuid.uuid5(NAMESPACE, f"task.escalation\x1f{escalated_task_id}"))
