"""What an attempt's outcome does to its receiver and its row: circuits, parking, rejection.

Each receiver has a circuit: failed attempts in a row open it (no attempts for a while, then
one probe), and a success closes it and brings the receiver's parked rows forward, so they need
not wait out their back-off. A transient failure parks the row with a back-off that grows each
time; a rejection keeps the row for an operator and issues a fallback leaflet task.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from referral_bridge.delivery.circuit import CircuitBreaker, CircuitState
from referral_bridge.delivery.errors import DeliveryRejectedError, TransientDeliveryError
from referral_bridge.delivery.fallbacks import (
    REASON_REJECTED,
    FallbackIssuer,
    note_fallback_issued,
)
from referral_bridge.delivery.policy import DeliveryPolicy
from referral_bridge.delivery.results import PassReport
from referral_bridge.delivery.routes import TASKS_KEY, Route, receiver_key
from referral_bridge.ledger import Ledger, PendingDelivery
from referral_bridge.metrics import BridgeMetrics

log = structlog.get_logger("referral_bridge.delivery")


class Circuits:
    """One circuit breaker per receiver, with its metrics and logs; used from one thread."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        metrics: BridgeMetrics,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._breakers: dict[str, CircuitBreaker] = {}

    def of(self, provider: str | None) -> CircuitBreaker:
        """The circuit of `provider` (None: the officers' tasks), made closed the first time."""
        key = receiver_key(provider)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                failures=self._policy.circuit_failures,
                first_open_for=self._policy.circuit_first_open,
                open_for=self._policy.circuit_open,
                clock=self._clock,
            )
            self._breakers[key] = breaker
        return breaker

    def open_receivers(self) -> frozenset[str | None]:
        """Receivers not to be read this pass (None: the officers' tasks on the force broker)."""
        return frozenset(
            None if key == TASKS_KEY else key
            for key, breaker in self._breakers.items()
            if breaker.state is CircuitState.OPEN
        )

    def failed(self, provider: str | None, error: TransientDeliveryError) -> None:
        """A transient failure: counted, and the circuit opened if it was one too many."""
        key = receiver_key(provider)
        self._metrics.delivery_failures.labels(provider=key, outcome="transient").inc()
        breaker = self.of(provider)
        if not breaker.record_failure():
            return
        self._metrics.delivery_failures.labels(provider=key, outcome="circuit_opened").inc()
        self._metrics.circuit_open.labels(provider=key).set(1)
        reopens = breaker.reopens_at
        log.error(
            "delivery.circuit_opened",
            provider=key,
            count=breaker.failures,
            reason=error.code,
            detail=f"no attempts until {reopens.isoformat() if reopens else '?'}, then one probe",
        )

    def succeeded(self, provider: str | None) -> None:
        """A success: after failures, the receiver's parked rows need not wait out their backoff."""
        breaker = self.of(provider)
        key = receiver_key(provider)
        was_open = breaker.state is not CircuitState.CLOSED
        if not breaker.record_success():
            return
        self._metrics.circuit_open.labels(provider=key).set(0)
        if was_open:
            log.info("delivery.circuit_closed", provider=key)
        brought = self._ledger.bring_forward(provider, self._clock())
        if brought:
            log.info("delivery.brought_forward", provider=key, count=brought)


class Outcomes:
    """Records a failed attempt's outcome for its row: parked for later, or rejected."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        metrics: BridgeMetrics,
        circuits: Circuits,
        fallbacks: FallbackIssuer,
        rand: Callable[[], float],
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._circuits = circuits
        self._fallbacks = fallbacks
        self._rand = rand

    def park(self, delivery: PendingDelivery, error: TransientDeliveryError, route: Route) -> None:
        """Leave the row until its back-off (or the receiver's asked-for pause) is over."""
        now = self._clock()
        delay = self._policy.park_seconds(
            delivery.attempts + 1, retry_after=error.retry_after, rand=self._rand
        )
        next_attempt = now + timedelta(seconds=delay)
        self._ledger.park_delivery(
            delivery.message_id,
            next_attempt_at=next_attempt,
            error=error.summary,
            maybe_delivered=error.maybe_delivered,
        )
        log.warning(
            "delivery.parked",
            message_id=delivery.message_id,
            provider=delivery.message.provider,
            transport=route.name,
            reason=error.code,
            attempts=delivery.attempts + 1,
            retry_in_s=round(delay, 3),
        )

    def reject(
        self,
        delivery: PendingDelivery,
        error: DeliveryRejectedError,
        route: Route,
        report: PassReport,
    ) -> None:
        """Keep the row for an operator, with a fallback task for a referral (counted in
        `report`). The receiver answered, so its circuit closes."""
        message = delivery.message
        self._circuits.succeeded(message.provider)
        now = self._clock()
        self._metrics.delivery_failures.labels(
            provider=receiver_key(message.provider), outcome="rejected"
        ).inc()
        task_id: str | None = None
        with self._ledger.transaction() as tx:
            tx.reject_delivery(message.message_id, now, error.summary)
            if message.kind == "referral" and delivery.fallback_task_id is None:
                task_id = self._fallbacks.issue_fallback(tx, delivery, REASON_REJECTED, now)
                if task_id is not None:
                    tx.set_fallback_task(message.message_id, task_id)
        log.error(
            "delivery.rejected",
            message_id=message.message_id,
            provider=message.provider,
            transport=route.name,
            reason=error.code,
            detail="kept for an operator: inspect with `referral-bridge provider deliveries "
            "--state rejected`, resend with `referral-bridge provider resend MESSAGE_ID`",
        )
        if task_id is not None:
            report.fallbacks += 1
            note_fallback_issued(self._metrics, delivery, task_id, REASON_REJECTED)
