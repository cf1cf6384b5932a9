"""A matter (a crime and the incidents it was recorded from) locked, and a case read back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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

    def wait_for(refs: Iterable[str]) -> bool:
        tx.lock(refs)
        return True

    matter = _locked_matter(tx, named, wait_for)
    assert matter is not None  # waiting always gets the locks
    return matter


def try_lock_matter(tx: LedgerTransaction, named: set[str]) -> set[str] | None:
    """`lock_matter` for scheduled work, without waiting: None when another worker holds a
    record of the matter now (it is deciding the case: skip it this tick, see
    `LedgerTransaction.try_lock`). End the transaction without using it then."""
    return _locked_matter(tx, named, tx.try_lock)


def _locked_matter(
    tx: LedgerTransaction, named: set[str], lock: Callable[[Iterable[str]], bool]
) -> set[str] | None:
    matter = tx.matter(named)
    if not lock(matter):
        return None
    while (grown := tx.matter(matter)) != matter:
        if not lock(grown - matter):
            return None
        matter = grown
    return matter


def snapshot_of(kind: str | None, snapshot: Mapping[str, Any]) -> CaseSnapshot:
    """Rebuild the case from the snapshot the ledger stored."""
    if kind == CaseKind.CRIME.value:
        return CaseSnapshot.from_crime(CrimeRecorded.model_validate(snapshot))
    return CaseSnapshot.from_incident(IncidentRecorded.model_validate(snapshot))
