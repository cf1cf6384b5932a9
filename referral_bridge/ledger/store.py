"""The ledger adapter: one transaction per inbound message, serialised per matter.

SQLite (WAL, `BEGIN IMMEDIATE`) serialises every write transaction, which is what a single
worker needs. PostgreSQL serialises per matter with row locks in `rb_locks`, so several workers
can share the work queue; unique constraints on actions and outbox ids are the last line of
defence against a double referral.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import ConsentChange, ProviderOutcome, TaskKind, TaskOfficer
from referral_bridge.core.history import (
    ConsentRecord,
    Hold,
    IssuedLeaflet,
    SentReferral,
    SentUpdate,
    SentWithdrawal,
    VictimHistory,
)
from referral_bridge.core.outcomes import (
    ESCALATING_KINDS,
    IssuedTask,
    RecordedOutcome,
    SentReferralFacts,
)
from referral_bridge.errors import (
    LedgerPrivilegeError,
    LedgerSchemaError,
    LedgerUnavailableError,
)
from referral_bridge.files import private_sqlite
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import append_audit
from referral_bridge.ledger.migrations import migrate
from referral_bridge.ledger.roles import audit_powers


@dataclass(frozen=True, slots=True)
class AuditFacts:
    """What a data protection officer needs about a disclosure; no personal data."""

    case_ref: str
    victim_id: str
    provider: str
    lawful_basis: str | None = None
    consent_state: str | None = None
    consent_recorded_at: datetime | None = None
    consent_recorded_by: str | None = None
    consent_regime: str | None = None

    def as_json(self) -> dict[str, Any]:
        recorded = self.consent_recorded_at.isoformat() if self.consent_recorded_at else None
        return {
            "case_ref": self.case_ref,
            "victim_id": self.victim_id,
            "provider": self.provider,
            "lawful_basis": self.lawful_basis,
            "consent_state": self.consent_state,
            "consent_regime": self.consent_regime,
            "consent_recorded_at": recorded,
            "consent_recorded_by": self.consent_recorded_by,
        }


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    message_id: str
    event_id: str
    kind: str
    exchange: str
    routing_key: str
    headers: Mapping[str, Any]
    body: bytes
    #: Referrals and withdrawals: the provider, the deadline (referrals) and the audit facts.
    provider: str | None = None
    deadline: datetime | None = None
    audit: AuditFacts | None = None


#: `last_error` code of a message cancelled before delivery (it also has `rejected_at` set, so
#: nothing delivers it, issues a fallback for it or lets an operator resend it).
CANCELLED = "cancelled"
CANCELLED_WITHDRAWN = f"{CANCELLED}: consent was withdrawn before delivery; never sent"
CANCELLED_NOTHING_TO_WITHDRAW = (
    f"{CANCELLED}: its referral was never delivered, so there is nothing to withdraw"
)
CANCELLED_UPDATE_WITHDRAWN = (
    f"{CANCELLED}: its referral was withdrawn before it was sent; never sent"
)
CANCELLED_CASE_CLOSED = (
    f"{CANCELLED}: the crime was cancelled or transferred before delivery; never sent"
)
CANCELLED_AFTER_ATTEMPT = (
    f"{CANCELLED}: consent was withdrawn after an attempt that may have reached the provider; "
    "not tried again, and its withdrawal follows"
)


class Cancellation(StrEnum):
    """What `LedgerTransaction.cancel_referral` found, and so what becomes of the withdrawal."""

    #: No attempt ever started: the provider cannot have it; nothing to withdraw.
    NEVER_SENT = "never_sent"
    #: An attempt started (it may be under way): no more attempts, and the withdrawal follows
    #: once the attempt is over.
    MAY_HAVE_BEEN_SENT = "may_have_been_sent"
    #: Delivered, rejected or unknown: left as it is; the withdrawal follows a delivery.
    UNCHANGED = "unchanged"


def _is_cancelled(rejected_at: datetime | None, last_error: str | None) -> bool:
    return rejected_at is not None and (last_error or "").startswith(f"{CANCELLED}:")


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An outbox row still to deliver, with its delivery state and the case it belongs to."""

    message: OutboxMessage
    #: From the rb_actions row of the same message id (None if there is none).
    case_ref: str | None
    victim_id: str | None
    #: A withdrawal: the referral it withdraws.
    related_id: str | None
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    rejected_at: datetime | None
    fallback_task_id: str | None
    published_at: datetime | None = None
    #: While ahead, an attempt at this row may be under way (`Ledger.claim_delivery`).
    claimed_until: datetime | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def cancelled(self) -> bool:
        """Cancelled before delivery (consent withdrawn): never to be sent."""
        return _is_cancelled(self.rejected_at, self.last_error)

    @property
    def state(self) -> str:
        """For operators: `delivered`, `cancelled`, `rejected` or `pending`."""
        if self.published_at is not None:
            return "delivered"
        if self.cancelled:
            return "cancelled"
        return "rejected" if self.rejected_at is not None else "pending"


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What `Ledger.resend` did: `resent` or why not (`not_found`, `delivered`, `not_rejected`,
    `withdrawn`, `cancelled`)."""

    outcome: str
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedAction:
    """An action to record for a victim: referral, update, leaflet or withdrawal."""

    case_ref: str
    victim_id: str
    action: str
    target: str
    message_id: str
    provider: str
    service: str | None
    related_id: str | None
    due_at: datetime | None
    #: PII-free facts: generation, revision, fingerprint, reason (see schema.actions).
    facts: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IssuedTaskRow:
    """An officer task as issued, for `rb_tasks` (completion and escalation come later)."""

    task_id: str
    kind: str
    reason: str
    case_ref: str
    victim_id: str | None
    officer_unit: str | None
    issued_at: datetime
    due_by: datetime | None


@dataclass(frozen=True, slots=True)
class CaseState:
    """What the ledger knows about a case: its snapshot (if any) and each victim's history
    across the case's whole matter."""

    case_ref: str
    snapshot: Mapping[str, Any] | None
    snapshot_kind: str | None
    history: Mapping[str, VictimHistory]
    #: The snapshot was erased under the retention policy (`snapshot` is then None).
    erased: bool = False


class LedgerTransaction:
    """Reads and writes inside one ledger transaction; build with `Ledger.transaction()`."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection
        self._postgres = connection.dialect.name == "postgresql"

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for adapters that work inside it (retention)."""
        return self._c

    def lock(self, refs: Iterable[str]) -> None:
        """Serialise work on these refs across workers (no-op beyond SQLite's own write lock)."""
        ordered = sorted(set(refs))
        if not self._postgres or not ordered:
            return
        self._c.execute(
            postgresql.insert(t.locks).on_conflict_do_nothing(),
            [{"ref": ref} for ref in ordered],
        )
        self._c.execute(
            select(t.locks.c.ref)
            .where(t.locks.c.ref.in_(ordered))
            .order_by(t.locks.c.ref)
            .with_for_update()
        ).all()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A SAVEPOINT: an exception inside undoes only what was done inside, and the
        transaction goes on (group commit: one failing event never fails its neighbours).
        A database error (the connection went, a deadlock) is LedgerUnavailableError."""
        try:
            with self._c.begin_nested():
                yield
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self._c.engine)) from None

    def is_processed(self, event_id: str, *, source: str) -> bool:
        """Whether this `source` + `id` was seen (or this id, before duplicates had a source)."""
        row = self._c.execute(
            select(t.processed_events.c.event_id).where(
                t.processed_events.c.event_id == event_id,
                t.processed_events.c.source.in_({source, ""}),
            )
        ).first()
        return row is not None

    def mark_processed(
        self,
        event_id: str,
        event_type: str,
        record_ref: str,
        result: str,
        at: datetime,
        *,
        source: str,
    ) -> None:
        self._c.execute(
            t.processed_events.insert().values(
                source=source,
                event_id=event_id,
                event_type=event_type,
                record_ref=record_ref,
                result=result,
                processed_at=at,
            )
        )

    def record_version(self, record_ref: str) -> int | None:
        return self._c.execute(
            select(t.records.c.version).where(t.records.c.record_ref == record_ref)
        ).scalar_one_or_none()

    def save_record(
        self, record_ref: str, kind: str, version: int, snapshot: Mapping[str, Any], at: datetime
    ) -> None:
        # A new version of an erased record brings its snapshot back (the source sent it again).
        values = {
            "kind": kind,
            "version": version,
            "snapshot": dict(snapshot),
            "updated_at": at,
            "erased_at": None,
        }
        if self.record_version(record_ref) is None:
            self._c.execute(t.records.insert().values(record_ref=record_ref, **values))
        else:
            self._c.execute(
                t.records.update().where(t.records.c.record_ref == record_ref).values(**values)
            )

    def link(self, incident_ref: str, crime_ref: str) -> None:
        """Record that a crime was recorded from an incident (idempotent)."""
        if incident_ref == crime_ref:
            return
        key = (t.links.c.incident_ref == incident_ref) & (t.links.c.crime_ref == crime_ref)
        if self._c.execute(select(t.links.c.crime_ref).where(key)).first() is None:
            self._c.execute(t.links.insert().values(incident_ref=incident_ref, crime_ref=crime_ref))

    def matter(self, refs: Iterable[str]) -> set[str]:
        """Every ref joined to these by links, transitively: the records that are one matter."""
        found = set(refs)
        frontier = set(found)
        while frontier:
            rows = self._c.execute(
                select(t.links.c.incident_ref, t.links.c.crime_ref).where(
                    t.links.c.incident_ref.in_(frontier) | t.links.c.crime_ref.in_(frontier)
                )
            ).all()
            linked = {ref for row in rows for ref in row} - found
            found |= linked
            frontier = linked
        return found

    def crimes_among(self, refs: Iterable[str]) -> set[str]:
        """The refs that are crimes: recorded as crimes, or named as the crime side of a link."""
        wanted = set(refs)
        recorded = self._c.execute(
            select(t.records.c.record_ref).where(
                t.records.c.record_ref.in_(wanted), t.records.c.kind == "crime"
            )
        ).scalars()
        named = self._c.execute(
            select(t.links.c.crime_ref).where(t.links.c.crime_ref.in_(wanted))
        ).scalars()
        return {*recorded, *named}

    def save_consent(self, case_ref: str, victim_id: str, consent: ConsentRecord) -> bool:
        """Keep the latest consent per ref and victim; False if an equal or newer one is kept."""
        key = (t.consents.c.case_ref == case_ref) & (t.consents.c.victim_id == victim_id)
        current = self._c.execute(select(t.consents.c.recorded_at).where(key)).scalar_one_or_none()
        values = {
            "referral": consent.referral.value,
            "recorded_at": consent.recorded_at,
            "recorded_by": consent.recorded_by,
            "lawful_basis": consent.lawful_basis,
        }
        if current is None:
            self._c.execute(
                t.consents.insert().values(case_ref=case_ref, victim_id=victim_id, **values)
            )
            return True
        if consent.recorded_at < current:
            return False
        self._c.execute(t.consents.update().where(key).values(**values))
        return True

    def load_state(self, case_ref: str, matter: set[str]) -> CaseState:
        """The case's snapshot, with history gathered across every record of its matter."""
        refs = matter | {case_ref}
        row = self._c.execute(
            select(t.records.c.kind, t.records.c.snapshot, t.records.c.erased_at).where(
                t.records.c.record_ref == case_ref
            )
        ).first()
        erased = row is not None and row.erased_at is not None
        return CaseState(
            case_ref=case_ref,
            snapshot=row.snapshot if row and not erased else None,
            snapshot_kind=row.kind if row else None,
            history=self._history(refs, case_ref),
            erased=erased,
        )

    def _history(self, refs: set[str], case_ref: str) -> dict[str, VictimHistory]:
        referrals: dict[str, list[SentReferral]] = defaultdict(list)
        updates: dict[str, list[SentUpdate]] = defaultdict(list)
        leaflets: dict[str, list[IssuedLeaflet]] = defaultdict(list)
        withdrawals: dict[str, list[SentWithdrawal]] = defaultdict(list)
        for a in self._c.execute(
            select(t.actions).where(t.actions.c.case_ref.in_(refs)).order_by(t.actions.c.id)
        ):
            facts = a.facts or {}
            if a.action == "referral":
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
            elif a.action == "update":
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
            elif a.action == "leaflet":
                leaflets[a.victim_id].append(
                    IssuedLeaflet(
                        task_id=a.message_id, reason=a.target, provider=a.provider, at=a.at
                    )
                )
            elif a.action == "withdrawal":
                withdrawals[a.victim_id].append(
                    SentWithdrawal(
                        referral_id=a.related_id or "",
                        provider=a.provider,
                        at=a.at,
                        reason=str(facts.get("reason", "withdrawn")),
                    )
                )
        hold_rows = self._c.execute(select(t.holds).where(t.holds.c.case_ref == case_ref))
        held = {h.victim_id: Hold(until=h.until, open=h.open) for h in hold_rows}
        consent: dict[str, ConsentRecord] = {}
        for c in self._c.execute(select(t.consents).where(t.consents.c.case_ref.in_(refs))):
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

    def add_action(self, action: RecordedAction, at: datetime) -> None:
        self._c.execute(
            t.actions.insert().values(
                case_ref=action.case_ref,
                victim_id=action.victim_id,
                action=action.action,
                target=action.target,
                message_id=action.message_id,
                provider=action.provider,
                service=action.service,
                related_id=action.related_id,
                due_at=action.due_at,
                at=at,
                facts=dict(action.facts) if action.facts else None,
            )
        )

    def open_hold(self, case_ref: str, victim_id: str, until: datetime) -> None:
        key = (t.holds.c.case_ref == case_ref) & (t.holds.c.victim_id == victim_id)
        if self._c.execute(select(t.holds.c.open).where(key)).first() is None:
            self._c.execute(
                t.holds.insert().values(
                    case_ref=case_ref, victim_id=victim_id, until=until, open=True
                )
            )
        else:
            self._c.execute(
                t.holds.update()
                .where(key)
                .values(until=until, open=True, ended_at=None, ended_reason=None)
            )

    def open_holds(self, refs: Iterable[str]) -> list[tuple[str, str]]:
        """(case ref, victim id) of every open hold under these refs."""
        rows = self._c.execute(
            select(t.holds.c.case_ref, t.holds.c.victim_id).where(
                t.holds.c.case_ref.in_(set(refs)), t.holds.c.open
            )
        )
        return [(row.case_ref, row.victim_id) for row in rows]

    def end_hold(self, case_ref: str, victim_id: str, at: datetime, reason: str) -> None:
        key = (t.holds.c.case_ref == case_ref) & (t.holds.c.victim_id == victim_id) & t.holds.c.open
        self._c.execute(
            t.holds.update().where(key).values(open=False, ended_at=at, ended_reason=reason)
        )

    def add_decision(self, event_id: str, decision: Decision, at: datetime) -> None:
        self._c.execute(
            t.decisions.insert().values(
                event_id=event_id,
                case_ref=decision.case_ref,
                victim_id=decision.victim_id,
                outcome=decision.outcome.value,
                rule=decision.rule,
                regime=decision.regime,
                reason=decision.reason,
                explanation=decision.explanation,
                decided_at=at,
                late=decision.late if decision.outcome is Outcome.REFER else None,
                category=decision.category,
                clock_from=decision.clock_from,
            )
        )

    def add_outbox(self, message: OutboxMessage, at: datetime) -> None:
        self._c.execute(
            t.outbox.insert().values(
                message_id=message.message_id,
                event_id=message.event_id,
                kind=message.kind,
                exchange=message.exchange,
                routing_key=message.routing_key,
                headers=dict(message.headers),
                body=message.body,
                created_at=at,
                published_at=None,
                attempts=0,
                provider=message.provider,
                deadline=message.deadline,
                audit=message.audit.as_json() if message.audit else None,
            )
        )

    # --- crime data integrity (rules.md) ----------------------------------------------------------

    def schedule_crime_review(self, incident_ref: str, review_at: datetime) -> None:
        """Check this incident for a recorded crime at `review_at` (kept if already scheduled)."""
        key = t.crime_reviews.c.incident_ref == incident_ref
        if self._c.execute(select(t.crime_reviews.c.incident_ref).where(key)).first() is None:
            self._c.execute(
                t.crime_reviews.insert().values(incident_ref=incident_ref, review_at=review_at)
            )

    def crime_review(self, incident_ref: str) -> Row[Any] | None:
        return self._c.execute(
            select(t.crime_reviews).where(t.crime_reviews.c.incident_ref == incident_ref)
        ).first()

    def raise_crime_review(self, incident_ref: str, task_id: str, at: datetime) -> None:
        self._c.execute(
            update(t.crime_reviews)
            .where(t.crime_reviews.c.incident_ref == incident_ref)
            .values(task_id=task_id, raised_at=at)
        )

    def resolve_crime_review(self, incident_ref: str, at: datetime) -> str | None:
        """Record that a crime was linked; returns the resolution, or None if nothing was open."""
        row = self.crime_review(incident_ref)
        if row is None or row.resolved_at is not None:
            return None
        resolution = "recorded_after_review" if row.raised_at else "recorded_in_time"
        self._c.execute(
            update(t.crime_reviews)
            .where(t.crime_reviews.c.incident_ref == incident_ref)
            .values(resolved_at=at, resolution=resolution)
        )
        return resolution

    # --- delivery to providers -------------------------------------------------------------------

    def has_action(self, message_id: str) -> bool:
        """Whether an action with this message id is recorded (fallback tasks are issued once)."""
        row = self._c.execute(
            select(t.actions.c.id).where(t.actions.c.message_id == message_id)
        ).first()
        return row is not None

    def reject_delivery(self, message_id: str, at: datetime, error: str) -> None:
        """Record that the receiver refused the message for good; the row stays for an operator.

        Ends the attempt's claim; a row cancelled during the attempt stays cancelled.
        """
        self._c.execute(
            update(t.outbox)
            .where(
                t.outbox.c.message_id == message_id,
                t.outbox.c.published_at.is_(None),
                t.outbox.c.rejected_at.is_(None),
            )
            .values(rejected_at=at, last_error=error[:500], next_attempt_at=None)
        )
        self._c.execute(
            update(t.outbox).where(t.outbox.c.message_id == message_id).values(claimed_until=None)
        )

    def cancel_referral(self, referral_id: str, at: datetime) -> Cancellation:
        """Stop a referral whose victim withdrew: it must never reach the provider after this.

        Serialised with `Ledger.claim_delivery` on the row itself: a sender claims (and counts)
        an attempt in a committed transaction before it sends, and these updates re-check the
        row after any such claim. So either no attempt ever started and none will (the referral
        is cancelled), or one started and the withdrawal must follow it.
        """
        unsent = t.outbox.c.published_at.is_(None) & t.outbox.c.rejected_at.is_(None)
        never = self._c.execute(
            update(t.outbox)
            .where(t.outbox.c.message_id == referral_id, unsent, _never_tried_uncertainly())
            .values(rejected_at=at, last_error=CANCELLED_WITHDRAWN, next_attempt_at=None)
        )
        if never.rowcount:
            return Cancellation.NEVER_SENT
        stopped = self._c.execute(
            update(t.outbox)
            .where(t.outbox.c.message_id == referral_id, unsent)
            .values(rejected_at=at, last_error=CANCELLED_AFTER_ATTEMPT, next_attempt_at=None)
        )
        return Cancellation.MAY_HAVE_BEEN_SENT if stopped.rowcount else Cancellation.UNCHANGED

    def cancel_unsent(self, message_id: str, at: datetime, reason: str) -> bool:
        """Cancel a message the receiver cannot have; False if it may have it, or it is gone.

        Uses the rejection columns (`rejected_at`, and `last_error` starting `cancelled:`), so
        every query that skips rejected rows skips it: no delivery, no fallback, no resend.
        """
        result = self._c.execute(
            update(t.outbox)
            .where(
                t.outbox.c.message_id == message_id,
                t.outbox.c.published_at.is_(None),
                _never_tried_uncertainly(),
            )
            .values(rejected_at=at, last_error=reason[:500], next_attempt_at=None)
        )
        return bool(result.rowcount)

    def set_fallback_task(self, message_id: str, task_id: str) -> None:
        self._c.execute(
            update(t.outbox)
            .where(t.outbox.c.message_id == message_id)
            .values(fallback_task_id=task_id)
        )

    def pending_delivery(self, message_id: str) -> PendingDelivery | None:
        """One outbox row with its delivery state, read inside this transaction."""
        row = self._c.execute(_delivery_query().where(t.outbox.c.message_id == message_id)).first()
        return _pending(row) if row is not None else None

    # --- version 5: officer tasks and provider outcomes (issue 8) --------------------------------

    def add_task(self, task: IssuedTaskRow) -> None:
        """Record an officer task as issued (kept as it was if recorded already)."""
        known = self._c.execute(
            select(t.tasks.c.task_id).where(t.tasks.c.task_id == task.task_id)
        ).first()
        if known is None:
            self._c.execute(t.tasks.insert().values(**asdict(task)))

    def task(self, task_id: str) -> IssuedTask | None:
        row = self._c.execute(select(t.tasks).where(t.tasks.c.task_id == task_id)).first()
        return _issued_task(row) if row is not None else None

    def sent_task_officer(self, task_id: str) -> TaskOfficer | None:
        """The officer a task message named, read from its outbox row (kept for ever)."""
        body = self._c.execute(
            select(t.outbox.c.body).where(t.outbox.c.message_id == task_id)
        ).scalar_one_or_none()
        if body is None:
            return None
        try:
            officer = json.loads(body)["data"]["officer"]
            return TaskOfficer(collar=officer["collar"], unit=officer["unit"])
        except (ValueError, KeyError, TypeError):
            return None

    def complete_task(self, task_id: str, *, at: datetime, by: str | None, result: str) -> bool:
        """Close an open task; False if it was closed already (compare-and-set: the first
        completion stands, whichever worker records it)."""
        done = self._c.execute(
            update(t.tasks)
            .where(t.tasks.c.task_id == task_id, t.tasks.c.completed_at.is_(None))
            .values(completed_at=at, completed_by=by, result=result)
        )
        return bool(done.rowcount)

    def claim_escalation(self, task_id: str, escalation_id: str, at: datetime) -> bool:
        """Mark an open, unescalated task escalated; False if another transaction did, or it
        was completed meanwhile. On PostgreSQL the UPDATE waits for a concurrent one on the same
        row and then re-checks its WHERE, so exactly one of several workers gets True."""
        claimed = self._c.execute(
            update(t.tasks)
            .where(
                t.tasks.c.task_id == task_id,
                t.tasks.c.escalated_at.is_(None),
                t.tasks.c.completed_at.is_(None),
            )
            .values(escalated_at=at, escalation_task_id=escalation_id)
        )
        return bool(claimed.rowcount)

    def sent_referral(self, referral_id: str) -> SentReferralFacts | None:
        """The referral sent with this message id (not an update or a withdrawal), if any."""
        row = self._c.execute(
            select(t.actions).where(
                t.actions.c.message_id == referral_id, t.actions.c.action == "referral"
            )
        ).first()
        if row is None:
            return None
        withdrawal = self._c.execute(
            select(t.actions.c.id).where(
                t.actions.c.action == "withdrawal", t.actions.c.related_id == referral_id
            )
        ).first()
        return SentReferralFacts(
            referral_id=referral_id,
            provider=row.provider,
            case_ref=row.case_ref,
            victim_id=row.victim_id,
            withdrawn=withdrawal is not None,
        )

    def referral_outcome(self, referral_id: str) -> RecordedOutcome | None:
        row = self._c.execute(
            select(t.referral_outcomes).where(t.referral_outcomes.c.referral_id == referral_id)
        ).first()
        if row is None:
            return None
        return RecordedOutcome(
            outcome=ProviderOutcome(row.outcome),
            at=row.at,
            first_contacted_at=row.first_contacted_at,
        )

    def save_referral_outcome(
        self,
        referral: SentReferralFacts,
        outcome: RecordedOutcome,
        *,
        received_at: datetime,
        event_source: str,
        event_id: str,
    ) -> None:
        """Record the referral's latest outcome (the caller holds the matter's lock)."""
        values = {
            "provider": referral.provider,
            "case_ref": referral.case_ref,
            "victim_id": referral.victim_id,
            "outcome": outcome.outcome.value,
            "at": outcome.at,
            "received_at": received_at,
            "event_source": event_source,
            "event_id": event_id,
            "first_contacted_at": outcome.first_contacted_at,
        }
        key = t.referral_outcomes.c.referral_id == referral.referral_id
        changed = self._c.execute(update(t.referral_outcomes).where(key).values(**values))
        if not changed.rowcount:
            self._c.execute(
                t.referral_outcomes.insert().values(referral_id=referral.referral_id, **values)
            )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    # Not for a SQLite URI ("file:...?mode=ro&uri=true"): SQLite reads it, it is not a path.
    if database and database != ":memory:" and not database.startswith("file:"):
        private_sqlite(Path(database))  # it holds victims' snapshots: 0600, in a 0700 folder
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below issue BEGIN IMMEDIATE instead of pysqlite's deferred BEGIN,
        # so two processes never both read then fail to upgrade to a write lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Ledger:
    """The ledger as a whole: transactions, outbox flushing and hold scheduling queries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Ledger:
        """Connect and migrate; raises LedgerUnavailableError or LedgerSchemaError.

        `migrate=False` is for operator tools (`dlq`, `audit`): they must not change the schema
        under running workers, nor create a SQLite ledger (under sudo its files would belong to
        root). The schema must then be exactly this version's, else LedgerSchemaError.
        """
        if not migrate and url.startswith("sqlite"):
            try:
                database = make_url(url).database
            except Exception:  # a bad URL: reported below, as for the daemon
                database = None
            if database and database != ":memory:" and not Path(database).is_file():
                raise LedgerUnavailableError(
                    f"there is no ledger at {database}; check [ledger] url and [bridge] data_dir "
                    "(or REFERRAL_BRIDGE_LEDGER_URL), or start the bridge once to create it"
                )
        try:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url)
            else:
                engine = create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # a bad URL or a missing driver
            raise LedgerUnavailableError(
                f"cannot use ledger URL scheme: {type(exc).__name__}"
            ) from None
        ledger = cls(engine)
        try:
            if migrate:
                ledger.migrate()
            else:
                from referral_bridge.ledger.migrations import current_version

                with ledger._reading() as connection:
                    found = current_version(connection)
                if found != t.SCHEMA_VERSION:
                    raise LedgerSchemaError(_not_this_version(found, ledger.dialect))
        except BaseException:
            engine.dispose()  # no pooled connection may outlive a failed start
            raise
        return ledger

    @classmethod
    def open_for_worker(cls, url: str) -> Ledger:
        """The ledger as `run` opens it.

        SQLite: migrated at start-up, as ever (one machine, one file: `make demo` and a first
        run just work). PostgreSQL: never migrated by the worker (that is `referral-bridge
        migrate`, run by the owner role); the schema must be this version's, and the worker's
        role must not be able to alter the audit trail, else LedgerPrivilegeError.
        """
        if url.startswith("sqlite"):
            return cls.open(url)
        ledger = cls.open(url, migrate=False)
        try:
            with ledger._reading() as connection:
                powers = audit_powers(connection)
        except BaseException:
            ledger.dispose()
            raise
        if powers:
            ledger.dispose()
            raise LedgerPrivilegeError(
                "refusing to start: the ledger role could rewrite the audit trail ("
                + "; ".join(powers)
                + "). Run the bridge as a role that may only SELECT and INSERT on rb_audit: "
                "`referral-bridge migrate --grant ROLE` as the owner role grants exactly that "
                '(docs/operations.md, "Two database roles")'
            )
        return ledger

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> int:
        try:
            with self.engine.begin() as connection:
                return migrate(connection)
        except LedgerSchemaError:
            raise
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
                raise LedgerPrivilegeError(
                    "this ledger role may not create or change the schema: run `referral-bridge "
                    "migrate` with REFERRAL_BRIDGE_LEDGER_URL naming the ledger's owner role"
                ) from None
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read-only connection; outages surface as LedgerUnavailableError like writes do."""
        try:
            with self.engine.connect() as connection:
                yield connection
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """One atomic unit of work; database outages surface as LedgerUnavailableError."""
        try:
            with self.engine.begin() as connection:
                yield LedgerTransaction(connection)
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    def unpublished(
        self,
        *,
        event_id: str | None = None,
        created_before: datetime | None = None,
        limit: int = 500,
    ) -> list[OutboxMessage]:
        """Messages not yet handed over, oldest first (for operators and tests)."""
        query = select(t.outbox).where(t.outbox.c.published_at.is_(None))
        if event_id is not None:
            query = query.where(t.outbox.c.event_id == event_id)
        if created_before is not None:
            query = query.where(t.outbox.c.created_at < created_before)
        query = query.order_by(t.outbox.c.created_at, t.outbox.c.message_id).limit(limit)
        with self._reading() as connection:
            return [
                OutboxMessage(
                    message_id=r.message_id,
                    event_id=r.event_id,
                    kind=r.kind,
                    exchange=r.exchange,
                    routing_key=r.routing_key,
                    headers=r.headers,
                    body=r.body,
                    provider=r.provider,
                    deadline=r.deadline,
                    audit=_audit_facts(r.audit),
                )
                for r in connection.execute(query)
            ]

    def claim_delivery(self, message_id: str, now: datetime, until: datetime) -> bool:
        """Claim a due row for one attempt (counted now, before anything is sent).

        A compare-and-set in its own committed transaction: it succeeds only while the row is
        unsent, not rejected or cancelled, and nobody else's claim is running. So two workers
        never send the same row at once, and `LedgerTransaction.cancel_referral` either wins
        (nothing is sent) or sees the attempt (the withdrawal follows it).
        """
        return bool(self.claim_deliveries([message_id], now, until))

    def claim_deliveries(
        self, message_ids: Sequence[str], now: datetime, until: datetime
    ) -> set[str]:
        """`claim_delivery` for several rows in one committed transaction (one commit, one
        fsync); returns the ids claimed. Each claim is its own compare-and-set, as alone."""
        claimed: set[str] = set()
        try:
            with self.engine.begin() as connection:
                for message_id in message_ids:
                    if connection.execute(_claim(message_id, now, until)).rowcount:
                        claimed.add(message_id)
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None
        return claimed

    def mark_published(self, message_id: str, at: datetime, *, route: str = "amqp") -> bool:
        """Record that a claimed message was handed over, and end its claim.

        Referrals and withdrawals also leave their audit record here, in the same transaction,
        the first time they are marked: the moment of disclosure is the hand-over. A referral
        cancelled while its attempt was under way was handed over all the same: it is delivered,
        and its withdrawal (kept, see `cancel_referral`) follows. Returns False if it was already
        marked (a repeat after a lost claim), in which case nothing is recorded twice.
        """
        return bool(self.mark_published_many([(message_id, at, route)]))

    def mark_published_many(self, marks: Sequence[tuple[str, datetime, str]]) -> set[str]:
        """`mark_published` for several (message id, when, route) in one transaction (one
        commit); returns the ids marked now (not those marked before)."""
        marked: set[str] = set()
        try:
            with self.engine.begin() as connection:
                for message_id, at, route in marks:
                    if _mark_published(connection, message_id, at, route):
                        marked.add(message_id)
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None
        return marked

    # --- delivery to providers -------------------------------------------------------------------

    def due_deliveries(
        self,
        now: datetime,
        *,
        event_id: str | None = None,
        created_before: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 200,
        skip_providers: Collection[str | None] = (),
        event_ids: Collection[str] | None = None,
    ) -> list[PendingDelivery]:
        """Undelivered, unrejected rows whose next attempt is due, oldest first.

        `skip_providers` leaves out receivers whose circuit is open (None: rows without a
        provider, the officers' tasks), so a pass does not read what it will not try.

        `created_before` applies only to rows never parked: a row another worker has just
        committed is left to that worker, while a parked row is due whatever its age. `after`
        is a (created_at, message_id) cursor for paging through a pass. `event_ids`: only the
        rows of these events (a batch's).
        """
        query = _delivery_query().where(
            t.outbox.c.published_at.is_(None),
            t.outbox.c.rejected_at.is_(None),
            or_(t.outbox.c.next_attempt_at.is_(None), t.outbox.c.next_attempt_at <= now),
            _unclaimed(now),
        )
        if event_id is not None:
            query = query.where(t.outbox.c.event_id == event_id)
        if event_ids is not None:
            query = query.where(t.outbox.c.event_id.in_(list(event_ids)))
        if created_before is not None:
            query = query.where(
                or_(
                    t.outbox.c.next_attempt_at.is_not(None),
                    t.outbox.c.created_at < created_before,
                )
            )
        if after is not None:
            query = query.where(_after(after))
        named = [p for p in skip_providers if p is not None]
        if named:
            query = query.where(
                or_(t.outbox.c.provider.is_(None), t.outbox.c.provider.not_in(named))
            )
        if None in skip_providers:
            query = query.where(t.outbox.c.provider.is_not(None))
        query = query.order_by(t.outbox.c.created_at, t.outbox.c.message_id).limit(limit)
        with self._reading() as connection:
            return [_pending(row) for row in connection.execute(query)]

    def bring_forward(self, provider: str | None, now: datetime) -> int:
        """Make a receiver's parked rows due now (it answers again); returns how many."""
        receiver = (
            t.outbox.c.provider.is_(None) if provider is None else t.outbox.c.provider == provider
        )
        result = self._write_counted(
            update(t.outbox)
            .where(
                receiver,
                t.outbox.c.published_at.is_(None),
                t.outbox.c.rejected_at.is_(None),
                t.outbox.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        return result

    def waiting_on(self, delivery: PendingDelivery, now: datetime) -> str | None:
        """The message id that must be delivered before this one, if any.

        Per case and destination (exchange and routing key, i.e. one provider or the officers'
        tasks) messages go in created_at order, and a withdrawal never overtakes the referral it
        withdraws. Rejected rows hold nothing up (they wait for an operator), except while an
        attempt at them may still be under way: a referral cancelled mid-attempt may yet arrive.
        """
        message = delivery.message
        holds_up = and_(
            t.outbox.c.published_at.is_(None),
            or_(t.outbox.c.rejected_at.is_(None), ~_unclaimed(now)),
        )
        with self._reading() as connection:
            if delivery.related_id is not None:
                referral = connection.execute(
                    select(t.outbox.c.message_id).where(
                        t.outbox.c.message_id == delivery.related_id, holds_up
                    )
                ).scalar_one_or_none()
                if referral is not None:
                    return str(referral)
            if delivery.case_ref is None:
                return None
            earlier = connection.execute(
                select(t.outbox.c.message_id)
                .join(t.actions, t.actions.c.message_id == t.outbox.c.message_id)
                .where(
                    t.actions.c.case_ref == delivery.case_ref,
                    t.outbox.c.exchange == message.exchange,
                    t.outbox.c.routing_key == message.routing_key,
                    holds_up,
                    # Strictly earlier: rows written together are independent of each other.
                    t.outbox.c.created_at < delivery.created_at,
                    # A referral never waits for its own withdrawal (clocks of several workers
                    # may disagree), or the two would wait for each other for ever.
                    or_(
                        t.actions.c.related_id.is_(None),
                        t.actions.c.related_id != message.message_id,
                    ),
                )
                .limit(1)
            ).scalar_one_or_none()
            return str(earlier) if earlier is not None else None

    def park_delivery(
        self,
        message_id: str,
        *,
        next_attempt_at: datetime,
        error: str,
        maybe_delivered: bool,
    ) -> None:
        """Record a failed attempt and when to try again, and end its claim.

        `maybe_delivered`: the attempt ended without a clear "not taken" (a timeout, a dropped
        connection). A row cancelled during the attempt stays cancelled: only the claim ends,
        which lets its withdrawal go.
        """
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    update(t.outbox)
                    .where(
                        t.outbox.c.message_id == message_id,
                        t.outbox.c.published_at.is_(None),
                        t.outbox.c.rejected_at.is_(None),
                    )
                    .values(next_attempt_at=next_attempt_at, last_error=error[:500])
                )
                ended: dict[str, Any] = {"claimed_until": None}
                if maybe_delivered:
                    ended["maybe_delivered"] = True
                connection.execute(
                    update(t.outbox).where(t.outbox.c.message_id == message_id).values(**ended)
                )
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    def defer_unclaimed(self, message_id: str, *, until: datetime, error: str) -> None:
        """Defer a row that was not tried (its provider's circuit is open) without counting."""
        self._write(
            update(t.outbox)
            .where(
                t.outbox.c.message_id == message_id,
                t.outbox.c.published_at.is_(None),
                t.outbox.c.next_attempt_at.is_(None),
            )
            .values(next_attempt_at=until, last_error=error[:500])
        )

    def overdue_deliveries(
        self, now: datetime, *, grace: timedelta = timedelta(0), limit: int = 200
    ) -> list[PendingDelivery]:
        """Referrals still undelivered at their deadline that have no fallback task yet.

        A row younger than `grace` is left alone even past its deadline: a referral decided
        late is given that long to be delivered before the officer is asked to act instead.
        """
        query = (
            _delivery_query()
            .where(
                t.outbox.c.published_at.is_(None),
                t.outbox.c.rejected_at.is_(None),
                t.outbox.c.fallback_task_id.is_(None),
                t.outbox.c.deadline.is_not(None),
                t.outbox.c.deadline <= now,
                t.outbox.c.created_at <= now - grace,
                # An attempt under way (or whose "delivered" mark is being retried) may succeed.
                _unclaimed(now),
            )
            .order_by(t.outbox.c.deadline, t.outbox.c.message_id)
            .limit(limit)
        )
        with self._reading() as connection:
            return [_pending(row) for row in connection.execute(query)]

    def deliveries(
        self, *, state: str = "undelivered", provider: str | None = None, limit: int = 200
    ) -> list[PendingDelivery]:
        """Rows for operators: `undelivered` (parked or waiting), `rejected`, `cancelled` (consent
        withdrawn before delivery), or `all`."""
        query = _delivery_query()
        cancelled = and_(
            t.outbox.c.rejected_at.is_not(None), t.outbox.c.last_error.like(f"{CANCELLED}:%")
        )
        if state == "undelivered":
            query = query.where(t.outbox.c.published_at.is_(None), t.outbox.c.rejected_at.is_(None))
        elif state == "rejected":
            query = query.where(t.outbox.c.rejected_at.is_not(None), ~cancelled)
        elif state == "cancelled":
            query = query.where(cancelled)
        if provider is not None:
            query = query.where(t.outbox.c.provider == provider)
        query = query.order_by(t.outbox.c.created_at, t.outbox.c.message_id).limit(limit)
        with self._reading() as connection:
            return [_pending(row) for row in connection.execute(query)]

    def resend(self, message_id: str, *, at: datetime, actor: str) -> ResendResult:
        """Put a rejected message back in line for delivery, and audit who asked.

        Refused for a referral whose withdrawal exists: consent has gone, so it must not be sent.
        """
        try:
            with self.engine.begin() as connection:
                row = connection.execute(
                    select(t.outbox).where(t.outbox.c.message_id == message_id)
                ).first()
                if row is None:
                    return ResendResult("not_found")
                if row.published_at is not None:
                    return ResendResult("delivered", row.provider)
                if row.rejected_at is None:
                    return ResendResult("not_rejected", row.provider)
                if _is_cancelled(row.rejected_at, row.last_error):
                    return ResendResult("cancelled", row.provider)
                withdrawn = connection.execute(
                    select(t.actions.c.id).where(
                        t.actions.c.action == "withdrawal", t.actions.c.related_id == message_id
                    )
                ).first()
                if withdrawn is not None:
                    return ResendResult("withdrawn", row.provider)
                connection.execute(
                    update(t.outbox)
                    .where(t.outbox.c.message_id == message_id)
                    .values(rejected_at=None, next_attempt_at=None)
                )
                facts = _audit_facts(row.audit)
                append_audit(
                    connection,
                    [
                        {
                            "at": at,
                            "action": f"{row.kind}_resend",
                            "actor": actor,
                            "message_id": message_id,
                            "provider": row.provider,
                            "case_ref": facts.case_ref if facts else None,
                            "victim_id": facts.victim_id if facts else None,
                            "detail": f"resend after rejection ({(row.last_error or '')[:200]})",
                        }
                    ],
                )
                return ResendResult("resent", row.provider)
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    def _write(self, statement: Any) -> None:
        self._write_counted(statement)

    def _write_counted(self, statement: Any) -> int:
        """Run one statement in its own transaction; returns the rows it touched."""
        try:
            with self.engine.begin() as connection:
                return int(connection.execute(statement).rowcount)
        except OperationalError as exc:
            raise LedgerUnavailableError(_describe(exc, self.engine)) from None

    def due_holds(self, now: datetime, limit: int = 200) -> list[str]:
        """Matters with a hold that has ended by `now` and is still open."""
        query = (
            select(t.holds.c.case_ref)
            .where(t.holds.c.open, t.holds.c.until <= now)
            .group_by(t.holds.c.case_ref)
            .order_by(func.min(t.holds.c.until))
            .limit(limit)
        )
        with self._reading() as connection:
            return list(connection.execute(query).scalars())

    def due_crime_reviews(self, now: datetime, limit: int = 200) -> list[str]:
        """Incidents whose crime-recording check is due and not yet done."""
        query = (
            select(t.crime_reviews.c.incident_ref)
            .where(
                t.crime_reviews.c.review_at <= now,
                t.crime_reviews.c.raised_at.is_(None),
                t.crime_reviews.c.resolved_at.is_(None),
            )
            .order_by(t.crime_reviews.c.review_at)
            .limit(limit)
        )
        with self._reading() as connection:
            return list(connection.execute(query).scalars())

    def due_escalations(self, now: datetime, limit: int = 200) -> list[str]:
        """Leaflet and crime-review tasks due by `now`, still open and not yet escalated."""
        query = (
            select(t.tasks.c.task_id)
            .where(
                t.tasks.c.due_by <= now,
                t.tasks.c.kind.in_([kind.value for kind in ESCALATING_KINDS]),
                t.tasks.c.completed_at.is_(None),
                t.tasks.c.escalated_at.is_(None),
            )
            .order_by(t.tasks.c.due_by)
            .limit(limit)
        )
        with self._reading() as connection:
            return list(connection.execute(query).scalars())

    def counts(self) -> dict[str, dict[str, int]]:
        """Figures for summaries: actions by kind and target, open holds, outbox backlog."""
        with self._reading() as connection:
            by_action: dict[str, int] = {}
            for row in connection.execute(
                select(
                    t.actions.c.action,
                    t.actions.c.provider,
                    t.actions.c.service,
                    t.actions.c.target,
                    func.count(),
                ).group_by(
                    t.actions.c.action,
                    t.actions.c.provider,
                    t.actions.c.service,
                    t.actions.c.target,
                )
            ):
                if row.action == "referral":
                    key = f"referral {row.provider}/{row.service}"
                elif row.action == "leaflet":
                    key = f"leaflet {row.target}"
                elif row.action == "update":
                    key = f"update {row.provider}/{row.service}"
                else:
                    key = f"withdrawal {row.provider}"
                by_action[key] = by_action.get(key, 0) + int(row[4])
            open_holds = connection.execute(
                select(func.count()).select_from(t.holds).where(t.holds.c.open)
            ).scalar_one()
            unsent = connection.execute(
                select(func.count()).select_from(t.outbox).where(t.outbox.c.published_at.is_(None))
            ).scalar_one()
            processed = connection.execute(
                select(func.count()).select_from(t.processed_events)
            ).scalar_one()
        return {
            "actions": by_action,
            "totals": {"open_holds": open_holds, "unsent": unsent, "processed": processed},
        }

    def dispose(self) -> None:
        self.engine.dispose()


#: The daemon's name in audit records (operators' tools record the operator's login).
DAEMON_ACTOR = "referral-bridge"


def _issued_task(row: Row[Any]) -> IssuedTask:
    return IssuedTask(
        task_id=row.task_id,
        kind=TaskKind(row.kind),
        reason=row.reason,
        case_ref=row.case_ref,
        due_by=row.due_by,
        victim_id=row.victim_id,
        completed_at=row.completed_at,
        escalated_at=row.escalated_at,
    )


def _audit_facts(value: Mapping[str, Any] | None) -> AuditFacts | None:
    if not value:
        return None
    recorded = value.get("consent_recorded_at")
    return AuditFacts(
        case_ref=value["case_ref"],
        victim_id=value["victim_id"],
        provider=value["provider"],
        lawful_basis=value.get("lawful_basis"),
        consent_state=value.get("consent_state"),
        consent_recorded_at=datetime.fromisoformat(recorded) if recorded else None,
        consent_recorded_by=value.get("consent_recorded_by"),
        consent_regime=value.get("consent_regime"),
    )


def _audit_row(
    kind: str, message_id: str, facts: AuditFacts, at: datetime, route: str
) -> dict[str, Any]:
    return {
        "at": at,
        "action": f"{kind}_sent",
        "actor": DAEMON_ACTOR,
        "message_id": message_id,
        "provider": facts.provider,
        "case_ref": facts.case_ref,
        "victim_id": facts.victim_id,
        "lawful_basis": facts.lawful_basis,
        "consent_state": facts.consent_state,
        "consent_recorded_at": facts.consent_recorded_at,
        "consent_recorded_by": facts.consent_recorded_by,
        "consent_regime": facts.consent_regime,
        "detail": f"delivered by {route}",
    }


def _claim(message_id: str, now: datetime, until: datetime) -> Any:
    """The compare-and-set that claims one due row for one attempt (see claim_delivery)."""
    return (
        update(t.outbox)
        .where(
            t.outbox.c.message_id == message_id,
            t.outbox.c.published_at.is_(None),
            t.outbox.c.rejected_at.is_(None),
            _unclaimed(now),
        )
        .values(
            claimed_until=until,
            attempts=t.outbox.c.attempts + 1,
            # A claim that lapsed is an attempt that never reported back: it may have arrived.
            maybe_delivered=or_(
                t.outbox.c.maybe_delivered.is_(True), t.outbox.c.claimed_until.is_not(None)
            ),
        )
    )


def _mark_published(connection: Connection, message_id: str, at: datetime, route: str) -> bool:
    """Mark one row handed over and write its audit record (see Ledger.mark_published)."""
    marked = connection.execute(
        update(t.outbox)
        .where(t.outbox.c.message_id == message_id, t.outbox.c.published_at.is_(None))
        .values(
            published_at=at,
            claimed_until=None,
            rejected_at=None,
            last_error=None,
            next_attempt_at=None,
        )
    )
    if not marked.rowcount:
        return False
    row = connection.execute(
        select(t.outbox.c.kind, t.outbox.c.audit).where(t.outbox.c.message_id == message_id)
    ).one()
    facts = _audit_facts(row.audit)
    if facts is not None:
        append_audit(connection, [_audit_row(row.kind, message_id, facts, at, route)])
    return True


def _never_tried_uncertainly() -> ColumnElement[bool]:
    """No attempt is under way or lapsed, and none ended unsure: the receiver cannot have it."""
    return and_(t.outbox.c.claimed_until.is_(None), ~t.outbox.c.maybe_delivered.is_(True))


def _unclaimed(now: datetime) -> ColumnElement[bool]:
    """No attempt at the row is under way (nobody's claim runs past `now`)."""
    return or_(t.outbox.c.claimed_until.is_(None), t.outbox.c.claimed_until <= now)


def _delivery_query() -> Any:
    return select(
        t.outbox,
        t.actions.c.case_ref,
        t.actions.c.victim_id,
        t.actions.c.related_id,
    ).outerjoin(t.actions, t.actions.c.message_id == t.outbox.c.message_id)


def _pending(row: Row[Any]) -> PendingDelivery:
    return PendingDelivery(
        message=OutboxMessage(
            message_id=row.message_id,
            event_id=row.event_id,
            kind=row.kind,
            exchange=row.exchange,
            routing_key=row.routing_key,
            headers=row.headers,
            body=row.body,
            provider=row.provider,
            deadline=row.deadline,
            audit=_audit_facts(row.audit),
        ),
        case_ref=row.case_ref,
        victim_id=row.victim_id,
        related_id=row.related_id,
        created_at=row.created_at,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        rejected_at=row.rejected_at,
        fallback_task_id=row.fallback_task_id,
        published_at=row.published_at,
        claimed_until=row.claimed_until,
    )


def _after(cursor: tuple[datetime, str]) -> ColumnElement[bool]:
    at, message_id = cursor
    return or_(
        t.outbox.c.created_at > at,
        and_(t.outbox.c.created_at == at, t.outbox.c.message_id > message_id),
    )


#: PostgreSQL's SQLSTATE for "permission denied" (and "must be owner").
_INSUFFICIENT_PRIVILEGE = "42501"


def _not_this_version(found: int, dialect: str) -> str:
    """What to do when a ledger opened without migrating is not at this bridge's version."""
    if found > t.SCHEMA_VERSION:
        return (
            f"ledger schema is version {found}, newer than this bridge's {t.SCHEMA_VERSION}: "
            "use the referral-bridge version that wrote it"
        )
    state = "has no tables yet" if found == 0 else f"is at schema version {found}"
    how = (
        "run `referral-bridge migrate` as the ledger's owner role (not the bridge's role)"
        if dialect == "postgresql"
        else "run `referral-bridge migrate` (or start the bridge: it migrates SQLite at start-up)"
    )
    return (
        f"the ledger {state}, this bridge needs version {t.SCHEMA_VERSION} and does not migrate "
        f"it here: {how}, then try again"
    )


#: "database or disk is full" (SQLite's primary result code; extended codes share its low byte).
_SQLITE_FULL = 13
#: PostgreSQL's disk_full.
_DISK_FULL_SQLSTATE = "53100"


def _disk_full(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return True
    return getattr(exc.orig, "sqlstate", None) == _DISK_FULL_SQLSTATE


def _describe(exc: DBAPIError, engine: Engine) -> str:
    """A message naming the database host, never the password, and what to do next."""
    url = engine.url
    where = f"{url.get_backend_name()} at {url.host or url.database}"
    if _disk_full(exc):
        # Not an outage to wait out: someone has to make room. Until then nothing is lost.
        return (
            f"ledger unavailable ({where}): its disk is full; free space on it (events are "
            "retried meanwhile and none is acknowledged unrecorded)"
        )
    return (
        f"ledger unavailable ({where}): {type(exc.orig).__name__}; "
        "check the database is running and reachable"
    )
