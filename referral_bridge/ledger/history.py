"""Reading what was done for each victim of a matter, as the core's VictimHistory."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection, select

from referral_bridge.core.events import ConsentChange
from referral_bridge.core.history import (
    ConsentRecord,
    Hold,
    IssuedLeaflet,
    SentReferral,
    SentUpdate,
    SentWithdrawal,
    VictimHistory,
)
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.records import ActionKind


def victim_histories(
    connection: Connection, refs: set[str], case_ref: str
) -> dict[str, VictimHistory]:
    """Each victim's history across these refs (one matter): what was sent or issued, their
    consent, and the hold on `case_ref`."""
    referrals: dict[str, list[SentReferral]] = defaultdict(list)
    updates: dict[str, list[SentUpdate]] = defaultdict(list)
    leaflets: dict[str, list[IssuedLeaflet]] = defaultdict(list)
    withdrawals: dict[str, list[SentWithdrawal]] = defaultdict(list)
    for a in connection.execute(
        select(t.actions).where(t.actions.c.case_ref.in_(refs)).order_by(t.actions.c.id)
    ):
        facts = a.facts or {}
        if a.action == ActionKind.REFERRAL:
            referrals[a.victim_id].append(
                SentReferral(
                    referral_id=a.message_id,
                    provider=a.provider,
                    service=a.service or "",
                    case_ref=a.case_ref,
                    at=a.at,
                    generation=int(facts.get("generation", 1)),
                    deadline=a.due_at,
                    fingerprint=facts.get("fingerprint"),
                )
            )
        elif a.action == ActionKind.UPDATE:
            updates[a.victim_id].append(
                SentUpdate(
                    update_id=a.message_id,
                    referral_id=a.related_id or "",
                    revision=int(facts.get("revision", 2)),
                    service=a.service or "",
                    fingerprint=facts.get("fingerprint"),
                    at=a.at,
                    case_ref=a.case_ref,
                )
            )
        elif a.action == ActionKind.LEAFLET:
            leaflets[a.victim_id].append(
                IssuedLeaflet(task_id=a.message_id, reason=a.target, provider=a.provider, at=a.at)
            )
        elif a.action == ActionKind.WITHDRAWAL:
            withdrawals[a.victim_id].append(
                SentWithdrawal(
                    referral_id=a.related_id or "",
                    provider=a.provider,
                    at=a.at,
                    reason=str(facts.get("reason", "withdrawn")),
                )
            )
    hold_rows = connection.execute(select(t.holds).where(t.holds.c.case_ref == case_ref))
    held = {h.victim_id: Hold(until=h.until, open=h.open) for h in hold_rows}
    consent: dict[str, ConsentRecord] = {}
    for c in connection.execute(select(t.consents).where(t.consents.c.case_ref.in_(refs))):
        record = ConsentRecord(
            referral=ConsentChange(c.referral),
            recorded_at=c.recorded_at,
            recorded_by=c.recorded_by,
            lawful_basis=c.lawful_basis,
        )
        kept = consent.get(c.victim_id)
        if kept is None or record.recorded_at >= kept.recorded_at:
            consent[c.victim_id] = record
    victims = set(referrals) | set(leaflets) | set(withdrawals) | set(held) | set(consent)
    return {
        v: VictimHistory(
            referrals=tuple(referrals[v]),
            updates=tuple(updates[v]),
            leaflets=tuple(leaflets[v]),
            withdrawals=tuple(withdrawals[v]),
            hold=held.get(v),
            consent=consent.get(v),
        )
        for v in victims
    }
