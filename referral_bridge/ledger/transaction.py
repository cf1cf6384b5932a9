"""One ledger transaction: everything an event's handling reads and writes, atomically.

The unit of work the service sees (`with ledger.transaction() as tx`), serialised per matter:
SQLite's write lock serialises every transaction; on PostgreSQL `lock` takes row locks in
`rb_locks`. Its outbox writes are in outbox.py and its task and outcome records in
tasks_and_outcomes.py (base classes, so the service keeps one `tx`); a matter's history is read
in history.py. Unique constraints on actions and outbox ids are the last line of defence
against a double referral.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.dialects import postgresql

from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import CaseKind
from referral_bridge.core.history import ConsentRecord
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.engine import outages_translated
from referral_bridge.ledger.history import victim_histories
from referral_bridge.ledger.outbox import OutboxInTransaction
from referral_bridge.ledger.records import (
    CaseState,
    OutboxMessage,
    RecordedAction,
    ReviewResolution,
)
from referral_bridge.ledger.tasks_and_outcomes import TasksAndOutcomes


class LedgerTransaction(OutboxInTransaction, TasksAndOutcomes):
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
        self._lock_rows(refs, skip_locked=False)

    def try_lock(self, refs: Iterable[str]) -> bool:
        """`lock` without waiting: False if another worker holds any of these refs now.

        For scheduled work that every worker finds due (holds, crime reviews, escalations):
        a case another worker is deciding this tick is skipped, not queued behind, and comes up
        again on the next tick if it is still due. On False the locks this call did get are
        held until the transaction ends: end it without using them.

        PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED` on the refs' `rb_locks` rows. A ref's
        row is created the first time it is locked; two workers creating the same new row at
        once would wait for each other's insert, but scheduled work is about refs an event
        already locked. SQLite: one writer at a time (`BEGIN IMMEDIATE`), so holding the
        transaction is holding every lock, as for `lock`.
        """
        return self._lock_rows(refs, skip_locked=True)

    def _lock_rows(self, refs: Iterable[str], *, skip_locked: bool) -> bool:
        """Lock the refs' `rb_locks` rows (PostgreSQL), in sorted order; whether all were got."""
        ordered = sorted(set(refs))
        if not self._postgres or not ordered:
            return True
        self._c.execute(
            postgresql.insert(t.locks).on_conflict_do_nothing(),
            [{"ref": ref} for ref in ordered],
        )
        got = self._c.execute(
            select(t.locks.c.ref)
            .where(t.locks.c.ref.in_(ordered))
            .order_by(t.locks.c.ref)
            .with_for_update(skip_locked=skip_locked)
        ).all()
        return len(got) == len(ordered)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A SAVEPOINT: an exception inside undoes only what was done inside, and the
        transaction goes on (group commit: one failing event never fails its neighbours).
        A database error (the connection went, a deadlock) is LedgerUnavailableError."""
        with outages_translated(self._c.engine), self._c.begin_nested():
            yield

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
                t.records.c.record_ref.in_(wanted), t.records.c.kind == CaseKind.CRIME.value
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
            history=victim_histories(self._c, refs, case_ref),
            erased=erased,
        )

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

    def ended_holds(self, refs: Iterable[str], now: datetime) -> list[tuple[str, str]]:
        """(case ref, victim id) of every hold under these refs still open though ended by
        `now`: what hold expiry re-reads under the matter's lock (another worker may have
        expired them since `Ledger.due_holds` found them)."""
        rows = self._c.execute(
            select(t.holds.c.case_ref, t.holds.c.victim_id).where(
                t.holds.c.case_ref.in_(set(refs)), t.holds.c.open, t.holds.c.until <= now
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

    def resolve_crime_review(self, incident_ref: str, at: datetime) -> ReviewResolution | None:
        """Record that a crime was linked; returns the resolution, or None if nothing was open."""
        row = self.crime_review(incident_ref)
        if row is None or row.resolved_at is not None:
            return None
        resolution = (
            ReviewResolution.RECORDED_AFTER_REVIEW
            if row.raised_at
            else ReviewResolution.RECORDED_IN_TIME
        )
        self._c.execute(
            update(t.crime_reviews)
            .where(t.crime_reviews.c.incident_ref == incident_ref)
            .values(resolved_at=at, resolution=resolution.value)
        )
        return resolution

    # --- delivery to providers (the outbox's own writes: OutboxInTransaction) ----------------

    def has_action(self, message_id: str) -> bool:
        """Whether an action with this message id is recorded (fallback tasks are issued once)."""
        row = self._c.execute(
            select(t.actions.c.id).where(t.actions.c.message_id == message_id)
        ).first()
        return row is not None
