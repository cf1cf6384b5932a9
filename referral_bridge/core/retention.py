"""Retention: which matters' personal data is due for erasure, and what an erased matter still owes.

UK GDPR Art. 5(1)(e) and DPA 2018 s.39: personal data is kept no longer than needed. A matter (the
records joined by links) is erased `erase_after` after its last activity, unless something is
still under way for it: an open hold, a message still to deliver, a crime-recording review not
yet done, an officer's task that may still be escalated. Erasing removes the full snapshots, the
bodies of messages already handed over and who recorded consent; decisions, actions, tasks,
outcomes and the audit trail stay (they hold ids, not people).

Pure functions of rows and the clock; the ledger gathers the rows and carries the erasure out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.history import CONSENT_WITHDRAWALS, VictimHistory


@dataclass(frozen=True, slots=True)
class RefActivity:
    """What the ledger holds under one ref, as far as retention is concerned."""

    ref: str
    #: The latest moment anything happened under this ref (None: nothing dated).
    last_activity: datetime | None
    #: Something is still under way (open hold, undelivered message, pending review).
    busy: bool = False
    #: Personal data still held: snapshots not erased, message bodies, consents' recorders.
    records: int = 0
    bodies: int = 0
    consents: int = 0

    @property
    def holds_personal_data(self) -> bool:
        return bool(self.records or self.bodies or self.consents)


@dataclass(frozen=True, slots=True)
class DueMatter:
    """A matter whose personal data is due for erasure, with what erasing it removes."""

    refs: frozenset[str]
    last_activity: datetime
    records: int
    bodies: int
    consents: int


def matters(refs: Iterable[str], links: Iterable[tuple[str, str]]) -> list[frozenset[str]]:
    """Group refs into matters: refs joined by links, transitively (union-find)."""
    parent: dict[str, str] = {}

    def root(ref: str) -> str:
        parent.setdefault(ref, ref)
        while parent[ref] != ref:
            parent[ref] = parent[parent[ref]]
            ref = parent[ref]
        return ref

    for ref in refs:
        root(ref)
    for a, b in links:
        parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for ref in list(parent):
        groups.setdefault(root(ref), set()).add(ref)
    return sorted((frozenset(g) for g in groups.values()), key=lambda g: min(g))


def due_for_erasure(
    activity: Mapping[str, RefActivity],
    links: Iterable[tuple[str, str]],
    *,
    now: datetime,
    erase_after: timedelta,
) -> list[DueMatter]:
    """The matters to erase now: idle for `erase_after`, nothing under way, data still held."""
    cutoff = now - erase_after
    due: list[DueMatter] = []
    for refs in matters(activity, links):
        rows = [activity[r] for r in refs if r in activity]
        if any(r.busy for r in rows) or not any(r.holds_personal_data for r in rows):
            continue
        dated = [r.last_activity for r in rows if r.last_activity is not None]
        if not dated or max(dated) > cutoff:
            continue
        due.append(
            DueMatter(
                refs=refs,
                last_activity=max(dated),
                records=sum(r.records for r in rows),
                bodies=sum(r.bodies for r in rows),
                consents=sum(r.consents for r in rows),
            )
        )
    return due


def withdrawals_after_erasure(
    case_ref: str, history: Mapping[str, VictimHistory]
) -> list[Decision]:
    """What an erased matter still owes when consent is withdrawn: the withdrawal.

    With the snapshot erased nothing new is decided (no referral, update or task can be built
    without the record; the next version of the record brings it back). But a victim who
    withdraws or declines must be withdrawn from every provider that still holds a referral:
    that needs only ids, which are kept.
    """
    decisions: list[Decision] = []
    for victim_id, victim in sorted(history.items()):
        consent = victim.consent
        if consent is None or consent.referral.value not in CONSENT_WITHDRAWALS:
            continue
        for referral in victim.live():
            decisions.append(
                Decision(
                    case_ref=case_ref,
                    victim_id=victim_id,
                    outcome=Outcome.WITHDRAW,
                    rule=None,
                    regime=None,
                    reason=consent.referral.value,
                    explanation=(
                        f"Consent was {consent.referral.value} after the record's personal data "
                        "was erased under the retention policy: the referral "
                        f"{referral.referral_id} to {referral.provider} is withdrawn all the same."
                    ),
                    provider=referral.provider,
                    referral_id=referral.referral_id,
                    arose_at=consent.recorded_at,
                )
            )
    return decisions
