"""Officer tasks the bridge issued and the outcomes providers reported (issue 8).

Written inside a `LedgerTransaction`, under the lock of the task's or referral's matter; the
compare-and-set updates make the first completion or escalation stand among several workers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select, update

from referral_bridge.core.events import ProviderOutcome, TaskKind, TaskOfficer
from referral_bridge.core.outcomes import IssuedTask, RecordedOutcome, SentReferralFacts
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.records import ActionKind, IssuedTaskRow


class TasksAndOutcomes:
    """The reads and writes of officer tasks and referral outcomes in a `LedgerTransaction`."""

    _c: Connection

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
                t.actions.c.message_id == referral_id,
                t.actions.c.action == ActionKind.REFERRAL.value,
            )
        ).first()
        if row is None:
            return None
        withdrawal = self._c.execute(
            select(t.actions.c.id).where(
                t.actions.c.action == ActionKind.WITHDRAWAL.value,
                t.actions.c.related_id == referral_id,
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
