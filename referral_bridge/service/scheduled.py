"""Scheduled officer tasks: crime-recording reviews, escalations of overdue tasks, and delivery
of the outbox rows nobody else is delivering (the steps runtime/scheduler.py calls)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import TaskKind, TaskOfficer
from referral_bridge.core.messages import crime_review_task
from referral_bridge.core.outcomes import IssuedTask, escalation_task, needs_escalation
from referral_bridge.core.policy import Policy
from referral_bridge.core.review import review_due_by
from referral_bridge.delivery import DeliveryEngine
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import IssuedTaskRow, Ledger, LedgerTransaction
from referral_bridge.service.matters import snapshot_of, try_lock_matter
from referral_bridge.service.outbox import OutboxWriter

log = structlog.get_logger("referral_bridge.service")

#: Synthetic event id under which crime-review tasks are written to the outbox.
CRIME_REVIEW_EVENT = "scheduler:crime-review"
#: Synthetic event id under which escalations of overdue tasks are written to the outbox.
ESCALATION_EVENT = "scheduler:escalation"


class ScheduledWork:
    """The periodic steps other than hold expiry; each returns how much it did."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: Policy,
        calendar: WorkingDayCalendar,
        outbox: OutboxWriter,
        delivery: DeliveryEngine,
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._calendar = calendar
        self._outbox = outbox
        self._delivery = delivery
        self._clock = clock

    def flush(
        self,
        *,
        event_id: str | None = None,
        older_than: timedelta | None = None,
        retry_in_place: bool = True,
    ) -> int:
        """Deliver due outbox rows (of one event, or all) and return how many were delivered.

        `older_than` leaves alone rows younger than it that were never tried (the worker that
        wrote them is delivering them); parked rows are delivered once due, whatever their age.
        `retry_in_place=False` makes one attempt per row. The pass stops starting attempts when
        its time budget is spent. Route failures park rows rather than raise;
        LedgerUnavailableError may be raised.
        """
        created_before = self._clock() - older_than if older_than is not None else None
        report = self._delivery.deliver_due(
            event_id=event_id, created_before=created_before, retry_in_place=retry_in_place
        )
        return report.delivered

    def issue_overdue_fallbacks(self) -> int:
        """Leaflet tasks for referrals still undelivered at their deadline (once each)."""
        return self._delivery.issue_overdue_fallbacks()

    def review_crime_recording(self) -> int:
        """Crime-review tasks for incidents whose disclosed crime is still not recorded (once
        each); returns the incidents checked."""
        now = self._clock()
        due = self._ledger.due_crime_reviews(now)
        for incident_ref in due:
            with self._ledger.transaction() as tx:
                task_id = self._raise_crime_review(tx, incident_ref, now)
            if task_id is not None:
                log.info("crime_review.raised", incident_ref=incident_ref, task_id=task_id)
        if due:
            self.flush(event_id=CRIME_REVIEW_EVENT)
        return len(due)

    def _raise_crime_review(
        self, tx: LedgerTransaction, incident_ref: str, now: datetime
    ) -> str | None:
        matter = try_lock_matter(tx, {incident_ref})
        if matter is None:
            return None  # another worker is deciding this incident: the next tick comes back
        review = tx.crime_review(incident_ref)
        if review is None or review.raised_at is not None or review.resolved_at:
            return None
        if tx.crimes_among(matter):
            tx.resolve_crime_review(incident_ref, now)
            return None
        state = tx.load_state(incident_ref, matter)
        if state.snapshot is None:
            return None
        incident = snapshot_of(state.snapshot_kind, state.snapshot)
        task_id = ids.crime_review_task_id(incident_ref)
        task = crime_review_task(
            incident, task_id, review_due_by(now, self._policy, self._calendar)
        )
        tx.raise_crime_review(incident_ref, task_id, now)
        row = IssuedTaskRow(
            task_id=task_id,
            kind=TaskKind.CRIME_REVIEW.value,
            reason=task.reason,
            case_ref=incident_ref,
            victim_id=None,
            officer_unit=task.officer.unit,
            issued_at=now,
            due_by=task.due_by,
        )
        self._outbox.task(tx, row, task, CRIME_REVIEW_EVENT, now)
        return task_id

    def escalate_overdue_tasks(self) -> int:
        """One `officer.task.escalation` for each leaflet or crime-review task still open at
        its due time; returns how many were escalated.

        Each task is its own transaction, which marks the task escalated (compare-and-set) and
        writes the escalation's outbox row together: exactly once, across restarts (nothing is
        marked unless its message is in the outbox) and across workers (one claim wins). A task
        that fails for a reason other than an outage is logged and tried again next tick.
        """
        now = self._clock()
        escalated = 0
        for task_id in self._ledger.due_escalations(now):
            try:
                if self._escalate(task_id, now):
                    escalated += 1
            except LedgerUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 (one bad task must not stop the others)
                log.error("task.escalation_failed", task_id=task_id, error_type=type(exc).__name__)
        if escalated:
            self.flush(event_id=ESCALATION_EVENT)
        return escalated

    def _escalate(self, task_id: str, now: datetime) -> bool:
        with self._ledger.transaction() as tx:
            task = tx.task(task_id)
            if task is None or not needs_escalation(task, now):
                return False
            # Another worker escalating it, or handling an event of its case, holds the case:
            # skip it rather than wait on the claim below (the next tick comes back).
            if not tx.try_lock({task.case_ref}):
                return False
            escalation_id = ids.escalation_task_id(task_id)
            if not tx.claim_escalation(task_id, escalation_id, now):
                return False
            officer = _officer_of(tx, task)
            row = IssuedTaskRow(
                task_id=escalation_id,
                kind=TaskKind.ESCALATION.value,
                reason=task.reason,
                case_ref=task.case_ref,
                victim_id=task.victim_id,
                officer_unit=officer.unit,
                issued_at=now,
                due_by=None,
            )
            message = escalation_task(task, escalation_id, officer, now)
            self._outbox.task(tx, row, message, ESCALATION_EVENT, now)
        log.info(
            "task.escalated",
            task_id=task_id,
            task_kind=task.kind.value,
            escalation_id=escalation_id,
            case_ref=task.case_ref,
        )
        return True


def _officer_of(tx: LedgerTransaction, task: IssuedTask) -> TaskOfficer:
    """The officer in charge now (the case's latest snapshot), as a new task would name;
    without a snapshot, the officer the overdue task named."""
    state = tx.load_state(task.case_ref, {task.case_ref})
    if state.snapshot is not None:
        officer = snapshot_of(state.snapshot_kind, state.snapshot).officer
        return TaskOfficer(collar=officer.collar, unit=officer.unit)
    sent = tx.sent_task_officer(task.task_id)
    if sent is None:
        raise ValueError("no snapshot of the case and no task message to name its officer")
    return sent
