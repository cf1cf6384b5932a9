"""A subject access request: everything the ledger holds about one victim, as one document.

UK GDPR Art. 15 / DPA 2018 s.45: what the bridge holds about the person (their own entry in each
record's snapshot, not the other victims' nor the case's other parties), the consent recorded,
each decision and its reason, what was sent to whom and when, and the audit trail's disclosures
(who was told what, when, on what basis). The document holds personal data on purpose: the
command that writes it audits the export first and writes the file owner-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from referral_bridge.ledger import schema as t
from referral_bridge.ledger.store import Ledger

#: The audit action of an export (the record names the victim and the operator's reason).
SUBJECT_ACCESS_EXPORT = "subject_access_export"

#: Case-level fields of a snapshot that describe the case, not other people.
_CASE_FIELDS = (
    "crime_ref",
    "incident_ref",
    "version",
    "status",
    "reported_at",
    "recorded_at",
    "opened_at",
    "category",
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _plain(row: Mapping[Any, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        key: _iso(value) if isinstance(value, datetime) else value
        for key, value in row.items()
        if key not in skip
    }


def _own_part(snapshot: Mapping[str, Any], victim_id: str) -> dict[str, Any]:
    """The case's own fields and this victim's entry; nobody else's."""
    part: dict[str, Any] = {key: snapshot[key] for key in _CASE_FIELDS if key in snapshot}
    offence = snapshot.get("offence")
    if isinstance(offence, Mapping):
        part["offence"] = {k: offence.get(k) for k in ("category", "label", "ho_class")}
    victims = snapshot.get("victims") or ()
    part["you"] = next(
        (v for v in victims if isinstance(v, Mapping) and v.get("victim_id") == victim_id), None
    )
    return part


def subject_access(ledger: Ledger, victim_id: str, *, now: datetime) -> dict[str, Any]:
    """The export for `victim_id` (JSON-ready)."""
    with ledger.engine.connect() as c:
        decisions = c.execute(
            select(t.decisions)
            .where(t.decisions.c.victim_id == victim_id)
            .order_by(t.decisions.c.id)
        ).all()
        actions = c.execute(
            select(t.actions).where(t.actions.c.victim_id == victim_id).order_by(t.actions.c.id)
        ).all()
        consents = c.execute(select(t.consents).where(t.consents.c.victim_id == victim_id)).all()
        holds = c.execute(select(t.holds).where(t.holds.c.victim_id == victim_id)).all()
        disclosures = c.execute(
            select(t.audit).where(t.audit.c.victim_id == victim_id).order_by(t.audit.c.id)
        ).all()
        tasks = c.execute(
            select(t.tasks).where(t.tasks.c.victim_id == victim_id).order_by(t.tasks.c.issued_at)
        ).all()
        outcomes = c.execute(
            select(t.referral_outcomes).where(t.referral_outcomes.c.victim_id == victim_id)
        ).all()
        refs = {r.case_ref for r in (*decisions, *actions, *consents, *holds, *tasks, *outcomes)}
        refs |= {r.case_ref for r in disclosures if r.case_ref}
        records = c.execute(
            select(t.records)
            .where(t.records.c.record_ref.in_(refs))
            .order_by(t.records.c.record_ref)
        ).all()
        message_ids = [a.message_id for a in actions]
        deliveries = c.execute(
            select(
                t.outbox.c.message_id,
                t.outbox.c.kind,
                t.outbox.c.provider,
                t.outbox.c.created_at,
                t.outbox.c.published_at,
                t.outbox.c.rejected_at,
                t.outbox.c.last_error,
            ).where(t.outbox.c.message_id.in_(message_ids))
        ).all()
    return {
        "victim_id": victim_id,
        "exported_at": now.isoformat(),
        "about": (
            "What referral-bridge holds about this person. Referrals and withdrawals were sent "
            "signed and encrypted to the provider named; their content is the minimised part "
            "of the record shown under 'records'. 'disclosures' is the audit trail: who was "
            "told what, when, and on what basis."
        ),
        "records": [
            {
                "ref": r.record_ref,
                "kind": r.kind,
                "version": r.version,
                "updated_at": _iso(r.updated_at),
                "erased_at": _iso(r.erased_at),
                "held": None if r.erased_at is not None else _own_part(r.snapshot, victim_id),
            }
            for r in records
        ],
        "consent": [_plain(r._mapping) for r in consents],
        "decisions": [_plain(r._mapping, ("id", "event_id")) for r in decisions],
        "actions": [_plain(r._mapping, ("id",)) for r in actions],
        "deliveries": [_plain(r._mapping) for r in deliveries],
        "holds": [_plain(r._mapping) for r in holds],
        "officer_tasks": [_plain(r._mapping) for r in tasks],
        "provider_outcomes": [_plain(r._mapping, ("event_source", "event_id")) for r in outcomes],
        "disclosures": [_plain(r._mapping, ("prev_hash", "row_hash")) for r in disclosures],
    }
