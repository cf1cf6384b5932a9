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
