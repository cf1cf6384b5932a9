"""What the scheduler and the delivery passes find due: deliveries, holds, reviews, escalations.

Reads only, outside any event's transaction: whatever they return is re-checked when it is
acted on (a delivery is claimed, a matter is locked), so a row read here may be stale.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, func, or_, select

from referral_bridge.core.outcomes import ESCALATING_KINDS
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.engine import reading
from referral_bridge.ledger.outbox import OPEN, delivery_query, pending_from_row, unclaimed
from referral_bridge.ledger.records import PendingDelivery


class DueWork:
    """The ledger's queries for work that has come due by a given time."""

    engine: Engine

    def due_deliveries(
        self,
        now: datetime,
        *,
        event_id: str | None = None,
        created_before: datetime | None = None,
        after: int | None = None,
        limit: int = 200,
        skip_providers: Collection[str | None] = (),
        event_ids: Collection[str] | None = None,
    ) -> list[PendingDelivery]:
        """Undelivered, unrejected rows whose next attempt is due, in the order they were written.

        `skip_providers` leaves out receivers whose circuit is open (None: rows without a
        provider, the officers' tasks), so a pass does not read what it will not try.

        `created_before` applies only to rows never parked: a row another worker has just
        committed is left to that worker, while a parked row is due whatever its age. `after`
        is the `seq` of the last row of the previous page, for paging through a pass.
        `event_ids`: only the rows of these events (a batch's).
        """
        query = delivery_query().where(
            OPEN,
            or_(t.outbox.c.next_attempt_at.is_(None), t.outbox.c.next_attempt_at <= now),
            unclaimed(now),
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
            query = query.where(t.outbox.c.seq > after)
        named = [p for p in skip_providers if p is not None]
        if named:
            query = query.where(
                or_(t.outbox.c.provider.is_(None), t.outbox.c.provider.not_in(named))
            )
        if None in skip_providers:
            query = query.where(t.outbox.c.provider.is_not(None))
        query = query.order_by(t.outbox.c.seq).limit(limit)
        with reading(self.engine) as connection:
            return [pending_from_row(row) for row in connection.execute(query)]

    def waiting_on(self, delivery: PendingDelivery, now: datetime) -> str | None:
        """The message id that must be delivered before this one, if any.

        Per case and destination (exchange and routing key, i.e. one provider or the officers'
        tasks) messages go in the order they were written (`seq`, numbered by the database, not
        by the writer's clock, which may differ between workers or step back), and a withdrawal
        never overtakes the referral it withdraws. Rejected rows hold nothing up (they wait for
        an operator), except while an attempt at them may still be under way: a referral
        cancelled mid-attempt may yet arrive.
        """
        message = delivery.message
        holds_up = and_(
            t.outbox.c.published_at.is_(None),
            or_(t.outbox.c.rejected_at.is_(None), ~unclaimed(now)),
        )
        with reading(self.engine) as connection:
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
                    # Written earlier. A case's transactions are serialised by its matter lock,
                    # so a later transaction's rows have later numbers (see
                    # migrations.number_outbox_rows).
                    t.outbox.c.seq < delivery.seq,
                    # Rows one event wrote together are independent of each other (two
                    # victims' referrals to one provider): neither waits for the other.
                    or_(
                        t.outbox.c.event_id != message.event_id,
                        t.outbox.c.created_at != delivery.created_at,
                    ),
                    # A referral never waits for its own withdrawal, or the two would wait for
                    # each other for ever (a withdrawal is written after its referral, so this
                    # only guards against a row numbered out of order by hand).
                    or_(
                        t.actions.c.related_id.is_(None),
                        t.actions.c.related_id != message.message_id,
                    ),
                )
                .limit(1)
            ).scalar_one_or_none()
            return str(earlier) if earlier is not None else None

    def overdue_deliveries(
        self, now: datetime, *, grace: timedelta = timedelta(0), limit: int = 200
    ) -> list[PendingDelivery]:
        """Referrals still undelivered at their deadline that have no fallback task yet.

        A row younger than `grace` is left alone even past its deadline: a referral decided
        late is given that long to be delivered before the officer is asked to act instead.
        """
        query = (
            delivery_query()
            .where(
                OPEN,
                t.outbox.c.fallback_task_id.is_(None),
                t.outbox.c.deadline.is_not(None),
                t.outbox.c.deadline <= now,
                t.outbox.c.created_at <= now - grace,
                # An attempt under way (or whose "delivered" mark is being retried) may succeed.
                unclaimed(now),
            )
            .order_by(t.outbox.c.deadline, t.outbox.c.seq)
            .limit(limit)
        )
        with reading(self.engine) as connection:
            return [pending_from_row(row) for row in connection.execute(query)]

    def due_holds(self, now: datetime, limit: int = 200) -> list[str]:
        """Matters with a hold that has ended by `now` and is still open."""
        query = (
            select(t.holds.c.case_ref)
            .where(t.holds.c.open, t.holds.c.until <= now)
            .group_by(t.holds.c.case_ref)
            .order_by(func.min(t.holds.c.until))
            .limit(limit)
        )
        with reading(self.engine) as connection:
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
        with reading(self.engine) as connection:
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
        with reading(self.engine) as connection:
            return list(connection.execute(query).scalars())
