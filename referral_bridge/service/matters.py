"""A matter (a crime and the incidents it was recorded from) locked, and a case read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.events import CaseKind, CrimeRecorded, IncidentRecorded
from referral_bridge.ledger import LedgerTransaction


def lock_matter(tx: LedgerTransaction, named: set[str]) -> set[str]:
    """Lock every record of the matter these refs belong to, and return the matter.

    The matter is read before locking, so it is read again after: links committed while
    we waited are locked too (out of order: PostgreSQL resolves a deadlock by aborting one
    side, which then retries).
    """
    matter = tx.matter(named)
    tx.lock(matter)
    while (grown := tx.matter(matter)) != matter:
        tx.lock(grown - matter)
        matter = grown
    return matter


def snapshot_of(kind: str | None, snapshot: Mapping[str, Any]) -> CaseSnapshot:
    """Rebuild the case from the snapshot the ledger stored."""
    if kind == CaseKind.CRIME.value:
        return CaseSnapshot.from_crime(CrimeRecorded.model_validate(snapshot))
    return CaseSnapshot.from_incident(IncidentRecorded.model_validate(snapshot))
