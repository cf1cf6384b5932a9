"""Fallback leaflet tasks for referrals that cannot be handed over: rejected, or past deadline.

A referral still undelivered at its Victims' Code deadline (and in the outbox for the fallback
grace) gets a leaflet task, once, while it keeps being retried: the provider may yet take it.
A rejected referral gets one at the rejection (`outcomes.Outcomes.reject`). The tasks are
recorded under `FALLBACK_EVENT` and delivered like any outbox row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from referral_bridge.delivery.routes import receiver_key
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import DeliveryState, Ledger, LedgerTransaction, PendingDelivery
from referral_bridge.metrics import BridgeMetrics

log = structlog.get_logger("referral_bridge.delivery")

#: Synthetic event id under which fallback leaflet tasks are recorded and queued.
FALLBACK_EVENT = "delivery:fallback"
REASON_REJECTED = "provider_rejected"
REASON_UNREACHABLE = "provider_unreachable"


class FallbackIssuer(Protocol):
    """Records a fallback leaflet task for an undeliverable referral inside `tx`.

    Returns the task id (also when it was issued before), or None when no task can be built
    (e.g. the case's snapshot is gone). Implemented by `service.effects.Effects`, which owns
    the policy; bootstrap hands it to the engine.
    """

    def issue_fallback(
        self, tx: LedgerTransaction, delivery: PendingDelivery, reason: str, now: datetime
    ) -> str | None: ...


def note_fallback_issued(
    metrics: BridgeMetrics, delivery: PendingDelivery, task_id: str, reason: str
) -> None:
    """Count and log a fallback task just issued for `delivery`."""
    metrics.fallback_tasks.labels(
        provider=receiver_key(delivery.message.provider), reason=reason
    ).inc()
    log.warning(
        "delivery.fallback_issued",
        message_id=delivery.message_id,
        provider=delivery.message.provider,
        case_ref=delivery.case_ref,
        victim_id=delivery.victim_id,
        reason=reason,
        task_id=task_id,
    )


class OverdueFallbacks:
    """Issues the fallback tasks of referrals still undelivered at their deadline."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        fallbacks: FallbackIssuer,
        grace: timedelta,
        metrics: BridgeMetrics,
    ) -> None:
        self._ledger = ledger
        self._fallbacks = fallbacks
        self._grace = grace
        self._metrics = metrics

    def issue(self, now: datetime, *, awaiting_mark: Callable[[str], bool]) -> int:
        """A task, once, for each overdue referral; returns the tasks issued.

        Rows `awaiting_mark` were handed over but not yet recorded so: they get none. One bad
        row does not stop the others; LedgerUnavailableError is raised.
        """
        issued = 0
        for delivery in self._ledger.overdue_deliveries(now, grace=self._grace):
            if awaiting_mark(delivery.message_id):
                continue
            try:
                issued_for = self._issue_one(delivery, now)
            except LedgerUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 (one bad row must not stop the others' fallbacks)
                log.error(
                    "delivery.fallback_failed",
                    message_id=delivery.message_id,
                    provider=delivery.message.provider,
                    error_type=type(exc).__name__,
                )
                continue
            if issued_for is not None:
                issued += 1
                note_fallback_issued(self._metrics, *issued_for, REASON_UNREACHABLE)
        return issued

    def _issue_one(
        self, delivery: PendingDelivery, now: datetime
    ) -> tuple[PendingDelivery, str] | None:
        with self._ledger.transaction() as tx:
            current = tx.pending_delivery(delivery.message_id)
            if current is None or current.state is not DeliveryState.PENDING:
                return None
            if current.claimed_until is not None and current.claimed_until > now:
                return None  # an attempt is under way and may yet succeed
            if current.fallback_task_id is not None:
                return None
            task_id = self._fallbacks.issue_fallback(tx, current, REASON_UNREACHABLE, now)
            if task_id is None:
                return None
            tx.set_fallback_task(current.message_id, task_id)
        return current, task_id
