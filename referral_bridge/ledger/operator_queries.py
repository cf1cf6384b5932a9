"""What operators' tools ask of the ledger: deliveries by state, a resend, summary figures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select, update

from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import append_audit
from referral_bridge.ledger.engine import reading, writing
from referral_bridge.ledger.outbox import OPEN, delivery_query, pending_from_row
from referral_bridge.ledger.records import (
    ActionKind,
    AuditFacts,
    AuditRecord,
    DeliveryFilter,
    PendingDelivery,
    ResendOutcome,
    ResendResult,
)

_CANCELLED = t.outbox.c.cancel_reason.is_not(None)


class OperatorQueries:
    """The ledger's answers to operators (`provider deliveries`, `provider resend`, summaries)."""

    engine: Engine

    def deliveries(
        self,
        *,
        state: DeliveryFilter | str = DeliveryFilter.UNDELIVERED,
        provider: str | None = None,
        limit: int = 200,
    ) -> list[PendingDelivery]:
        """Rows for operators: `undelivered` (parked or waiting), `rejected`, `cancelled` (consent
        withdrawn before delivery), or `all`; ValueError for anything else."""
        wanted = DeliveryFilter(state)
        query = delivery_query()
        if wanted is DeliveryFilter.UNDELIVERED:
            query = query.where(OPEN)
        elif wanted is DeliveryFilter.REJECTED:
            query = query.where(t.outbox.c.rejected_at.is_not(None), ~_CANCELLED)
        elif wanted is DeliveryFilter.CANCELLED:
            query = query.where(_CANCELLED)
        if provider is not None:
            query = query.where(t.outbox.c.provider == provider)
        query = query.order_by(t.outbox.c.seq).limit(limit)
        with reading(self.engine) as connection:
            return [pending_from_row(row) for row in connection.execute(query)]

    def resend(self, message_id: str, *, at: datetime, actor: str) -> ResendResult:
        """Put a rejected message back in line for delivery, and audit who asked.

        Refused for a referral whose withdrawal exists: consent has gone, so it must not be sent.
        """
        with writing(self.engine) as connection:
            row = connection.execute(
                select(t.outbox).where(t.outbox.c.message_id == message_id)
            ).first()
            if row is None:
                return ResendResult(ResendOutcome.NOT_FOUND)
            if row.published_at is not None:
                return ResendResult(ResendOutcome.DELIVERED, row.provider)
            if row.rejected_at is None:
                return ResendResult(ResendOutcome.NOT_REJECTED, row.provider)
            if row.cancel_reason is not None:
                return ResendResult(ResendOutcome.CANCELLED, row.provider)
            withdrawn = connection.execute(
                select(t.actions.c.id).where(
                    t.actions.c.action == ActionKind.WITHDRAWAL.value,
                    t.actions.c.related_id == message_id,
                )
            ).first()
            if withdrawn is not None:
                return ResendResult(ResendOutcome.WITHDRAWN, row.provider)
            connection.execute(
                update(t.outbox)
                .where(t.outbox.c.message_id == message_id)
                .values(rejected_at=None, next_attempt_at=None)
            )
            facts = AuditFacts.from_json(row.audit)
            append_audit(
                connection,
                [
                    AuditRecord(
                        at=at,
                        action=f"{row.kind}_resend",
                        actor=actor,
                        message_id=message_id,
                        provider=row.provider,
                        case_ref=facts.case_ref if facts else None,
                        victim_id=facts.victim_id if facts else None,
                        detail=f"resend after rejection ({(row.last_error or '')[:200]})",
                    )
                ],
            )
            return ResendResult(ResendOutcome.RESENT, row.provider)

    def counts(self) -> dict[str, dict[str, int]]:
        """Figures for summaries: actions by kind and target, open holds, outbox backlog."""
        a = t.actions
        with reading(self.engine) as connection:
            by_action: dict[str, int] = {}
            for row in connection.execute(
                select(a.c.action, a.c.provider, a.c.service, a.c.target, func.count()).group_by(
                    a.c.action, a.c.provider, a.c.service, a.c.target
                )
            ):
                key = _summary_key(row.action, row.provider, row.service, row.target)
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


def _summary_key(action: str, provider: str, service: str | None, target: str) -> str:
    """How `counts` names a group of actions: by provider and service, or leaflet reason."""
    if action == ActionKind.REFERRAL:
        return f"referral {provider}/{service}"
    if action == ActionKind.LEAFLET:
        return f"leaflet {target}"
    if action == ActionKind.UPDATE:
        return f"update {provider}/{service}"
    return f"withdrawal {provider}"
