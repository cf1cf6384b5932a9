"""The outbox's delivery state: claims, hand-over marks, parking, rejection and cancellation.

At least once, one sender at a time: a sender claims a row (and counts the attempt) in a
committed compare-and-set before it sends, with a lease (`claimed_until`); a row claimed by
somebody else is skipped, not waited for. The hand-over mark writes the disclosure's audit
record in the same transaction. A cancellation re-checks the row after any claim, so either no
attempt ever started (it is cancelled for good) or the withdrawal follows the attempt.

A row is closed to delivery once `rejected_at` is set: refused for good by its receiver, or
cancelled by the bridge (then `cancel_reason` is set too, see records.CancelReason).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, and_, or_, select, update

from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import append_audit
from referral_bridge.ledger.engine import writing
from referral_bridge.ledger.records import (
    DAEMON_ACTOR,
    AuditFacts,
    AuditRecord,
    Cancellation,
    CancelReason,
    OutboxMessage,
    PendingDelivery,
)

#: Not delivered and not closed (neither refused nor cancelled): still in line for delivery.
OPEN = and_(t.outbox.c.published_at.is_(None), t.outbox.c.rejected_at.is_(None))


class OutboxInTransaction:
    """The outbox writes made inside a `LedgerTransaction` (handling an event, a fallback)."""

    _c: Connection

    def reject_delivery(self, message_id: str, at: datetime, error: str) -> None:
        """Record that the receiver refused the message for good; the row stays for an operator.

        Ends the attempt's claim; a row cancelled during the attempt stays cancelled.
        """
        self._c.execute(
            update(t.outbox)
            .where(t.outbox.c.message_id == message_id, OPEN)
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
        row = t.outbox.c.message_id == referral_id
        never = self._c.execute(
            update(t.outbox)
            .where(row, OPEN, _never_tried_uncertainly())
            .values(**_cancelled(at, CancelReason.CONSENT_WITHDRAWN))
        )
        if never.rowcount:
            return Cancellation.NEVER_SENT
        stopped = self._c.execute(
            update(t.outbox)
            .where(row, OPEN)
            .values(**_cancelled(at, CancelReason.WITHDRAWN_AFTER_ATTEMPT))
        )
        return Cancellation.MAY_HAVE_BEEN_SENT if stopped.rowcount else Cancellation.UNCHANGED

    def cancel_unsent(self, message_id: str, at: datetime, reason: CancelReason) -> bool:
        """Cancel a message the receiver cannot have; False if it may have it, or it is gone.

        Closes the row (`rejected_at`), so every query that skips closed rows skips it: no
        delivery, no fallback, no resend.
        """
        result = self._c.execute(
            update(t.outbox)
            .where(
                t.outbox.c.message_id == message_id,
                t.outbox.c.published_at.is_(None),
                _never_tried_uncertainly(),
            )
            .values(**_cancelled(at, reason))
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
        row = self._c.execute(delivery_query().where(t.outbox.c.message_id == message_id)).first()
        return pending_from_row(row) if row is not None else None


class OutboxDeliveries:
    """The outbox writes a delivery pass makes, each in its own committed transaction."""

    engine: Engine

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
        with writing(self.engine) as connection:
            return {
                message_id
                for message_id in message_ids
                if connection.execute(_claim(message_id, now, until)).rowcount
            }

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
        with writing(self.engine) as connection:
            return {
                message_id
                for message_id, at, route in marks
                if _mark_published(connection, message_id, at, route)
            }

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
        with writing(self.engine) as connection:
            connection.execute(
                update(t.outbox)
                .where(t.outbox.c.message_id == message_id, OPEN)
                .values(next_attempt_at=next_attempt_at, last_error=error[:500])
            )
            ended: dict[str, Any] = {"claimed_until": None}
            if maybe_delivered:
                ended["maybe_delivered"] = True
            connection.execute(
                update(t.outbox).where(t.outbox.c.message_id == message_id).values(**ended)
            )

    def defer_unclaimed(self, message_id: str, *, until: datetime, error: str) -> None:
        """Defer a row that was not tried (its provider's circuit is open) without counting."""
        with writing(self.engine) as connection:
            connection.execute(
                update(t.outbox)
                .where(
                    t.outbox.c.message_id == message_id,
                    t.outbox.c.published_at.is_(None),
                    t.outbox.c.next_attempt_at.is_(None),
                )
                .values(next_attempt_at=until, last_error=error[:500])
            )

    def bring_forward(self, provider: str | None, now: datetime) -> int:
        """Make a receiver's parked rows due now (it answers again); returns how many."""
        receiver = (
            t.outbox.c.provider.is_(None) if provider is None else t.outbox.c.provider == provider
        )
        with writing(self.engine) as connection:
            return int(
                connection.execute(
                    update(t.outbox)
                    .where(receiver, OPEN, t.outbox.c.next_attempt_at > now)
                    .values(next_attempt_at=now)
                ).rowcount
            )


def unclaimed(now: datetime) -> ColumnElement[bool]:
    """No attempt at the row is under way (nobody's claim runs past `now`)."""
    return or_(t.outbox.c.claimed_until.is_(None), t.outbox.c.claimed_until <= now)


def delivery_query() -> Any:
    """Outbox rows with the case, victim and related message of their action, if any."""
    return select(
        t.outbox,
        t.actions.c.case_ref,
        t.actions.c.victim_id,
        t.actions.c.related_id,
    ).outerjoin(t.actions, t.actions.c.message_id == t.outbox.c.message_id)


def pending_from_row(row: Row[Any]) -> PendingDelivery:
    """A `delivery_query` row as a PendingDelivery."""
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
            audit=AuditFacts.from_json(row.audit),
        ),
        case_ref=row.case_ref,
        victim_id=row.victim_id,
        related_id=row.related_id,
        created_at=row.created_at,
        seq=row.seq,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        rejected_at=row.rejected_at,
        fallback_task_id=row.fallback_task_id,
        published_at=row.published_at,
        claimed_until=row.claimed_until,
        cancel_reason=CancelReason(row.cancel_reason) if row.cancel_reason else None,
    )


def _never_tried_uncertainly() -> ColumnElement[bool]:
    """No attempt is under way or lapsed, and none ended unsure: the receiver cannot have it."""
    return and_(t.outbox.c.claimed_until.is_(None), ~t.outbox.c.maybe_delivered.is_(True))


def _cancelled(at: datetime, reason: CancelReason) -> dict[str, Any]:
    """The columns of a row cancelled now: closed, why, and the operator's text."""
    return {
        "rejected_at": at,
        "cancel_reason": reason.value,
        "last_error": reason.explanation,
        "next_attempt_at": None,
    }


def _claim(message_id: str, now: datetime, until: datetime) -> Any:
    """The compare-and-set that claims one due row for one attempt (see claim_delivery)."""
    return (
        update(t.outbox)
        .where(t.outbox.c.message_id == message_id, OPEN, unclaimed(now))
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
    """Mark one row handed over and write its audit record (see mark_published)."""
    marked = connection.execute(
        update(t.outbox)
        .where(t.outbox.c.message_id == message_id, t.outbox.c.published_at.is_(None))
        .values(
            published_at=at,
            claimed_until=None,
            rejected_at=None,
            cancel_reason=None,
            last_error=None,
            next_attempt_at=None,
        )
    )
    if not marked.rowcount:
        return False
    row = connection.execute(
        select(t.outbox.c.kind, t.outbox.c.audit).where(t.outbox.c.message_id == message_id)
    ).one()
    facts = AuditFacts.from_json(row.audit)
    if facts is not None:
        append_audit(connection, [_audit_row(row.kind, message_id, facts, at, route)])
    return True


def _audit_row(
    kind: str, message_id: str, facts: AuditFacts, at: datetime, route: str
) -> AuditRecord:
    return AuditRecord(
        at=at,
        action=f"{kind}_sent",
        actor=DAEMON_ACTOR,
        message_id=message_id,
        provider=facts.provider,
        case_ref=facts.case_ref,
        victim_id=facts.victim_id,
        lawful_basis=facts.lawful_basis,
        consent_state=facts.consent_state,
        consent_recorded_at=facts.consent_recorded_at,
        consent_recorded_by=facts.consent_recorded_by,
        consent_regime=facts.consent_regime,
        detail=f"delivered by {route}",
    )
