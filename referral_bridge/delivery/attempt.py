"""One attempt at one outbox message: its claim, its route, a few tries in place, the outcome.

An attempt claims the row first (one sender at a time), then tries its route a few times in
place (tenacity, exponential backoff with jitter) while the circuit allows and the pass budget
still fits a whole try; then the row is marked delivered, parked or rejected. A hand-over the
ledger failed to record is kept here (`awaiting_mark`) and recorded first thing next time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from referral_bridge.delivery.circuit import CircuitState
from referral_bridge.delivery.errors import (
    DeliveryError,
    DeliveryRejectedError,
    TransientDeliveryError,
)
from referral_bridge.delivery.outcomes import Circuits, Outcomes
from referral_bridge.delivery.policy import DeliveryPolicy
from referral_bridge.delivery.results import PassReport, Result
from referral_bridge.delivery.routes import Route, receiver_key
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger, OutboxMessage, PendingDelivery
from referral_bridge.metrics import BridgeMetrics

log = structlog.get_logger("referral_bridge.delivery")


class Attempts:
    """Makes attempts at outbox rows on their routes and records what came of them."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        default_route: Route,
        routes: Mapping[str, Route],
        policy: DeliveryPolicy,
        clock: Callable[[], datetime],
        metrics: BridgeMetrics,
        circuits: Circuits,
        outcomes: Outcomes,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
    ) -> None:
        self._ledger = ledger
        self._default = default_route
        self._routes = dict(routes)
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._circuits = circuits
        self._outcomes = outcomes
        self._sleep = sleep
        self._monotonic = monotonic
        #: Handed over, but the ledger failed before it recorded so: message id -> (when, route).
        #: Recorded first thing next time; meanwhile no fallback is issued for these rows.
        self._unmarked: dict[str, tuple[datetime, str]] = {}

    def route_for(self, provider: str | None) -> Route:
        return self._routes.get(provider, self._default) if provider else self._default

    def awaiting_mark(self, message_id: str) -> bool:
        """Whether the message was handed over but the ledger has not recorded so yet."""
        return message_id in self._unmarked

    def close(self) -> None:
        for route in {id(r): r for r in [self._default, *self._routes.values()]}.values():
            route.close()

    def attempt(
        self, delivery: PendingDelivery, report: PassReport, attempts: int | None, deadline: float
    ) -> Result:
        """One attempt (up to `attempts` tries in place), counted in `report`; raises only
        LedgerUnavailableError."""
        try:
            result = self._attempt_one(delivery, report, attempts, deadline)
        except LedgerUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 (isolated: logged by type (never its text), the pass goes on)
            log.error(
                "delivery.row_failed",
                message_id=delivery.message_id,
                provider=delivery.message.provider,
                error_type=type(exc).__name__,
                detail="left for the next pass",
            )
            result = Result.FAILED
        report.add(result)
        return result

    def _attempt_one(
        self, delivery: PendingDelivery, report: PassReport, attempts: int | None, deadline: float
    ) -> Result:
        message = delivery.message
        breaker = self._circuits.of(message.provider)
        if not breaker.allows():
            # Not tried: a row never attempted is deferred to the probe time, so the scheduler
            # (which leaves fresh untried rows to their worker for a grace period) picks it up.
            if delivery.next_attempt_at is None and breaker.reopens_at is not None:
                self._ledger.defer_unclaimed(
                    message.message_id,
                    until=breaker.reopens_at,
                    error="circuit_open: not tried while the provider's circuit is open",
                )
            return Result.CIRCUIT_OPEN
        now = self._clock()
        blocker = self._ledger.waiting_on(delivery, now)
        if blocker is not None:
            log.debug("delivery.waiting", message_id=message.message_id, detail=f"after {blocker}")
            return Result.WAITING
        if not self._ledger.claim_delivery(message.message_id, now, now + self._policy.claim_lease):
            return Result.CLAIMED_ELSEWHERE
        route = self.route_for(message.provider)
        probing = breaker.state is CircuitState.HALF_OPEN
        try:
            self._try_in_place(
                route, delivery, attempts=1 if probing else attempts, deadline=deadline
            )
        except DeliveryRejectedError as exc:
            self._outcomes.reject(delivery, exc, route, report)
            return Result.REJECTED
        except TransientDeliveryError as exc:
            self._outcomes.park(delivery, exc, route)
            return Result.PARKED
        self._unmarked[message.message_id] = (self._clock(), route.audit_route)
        self._mark(message.message_id)
        self._delivered(message, route)
        return Result.DELIVERED

    def retry_alone(
        self, delivery: PendingDelivery, route: Route, report: PassReport, deadline: float
    ) -> bool:
        """A row its window did not get through: one attempt alone (still under its claim),
        with the route's own retries; parked or rejected if that fails too."""
        try:
            self._try_in_place(route, delivery, attempts=1, deadline=deadline)
        except DeliveryRejectedError as exc:
            self._outcomes.reject(delivery, exc, route, report)
            report.add(Result.REJECTED)
            return False
        except TransientDeliveryError as exc:
            self._outcomes.park(delivery, exc, route)
            report.add(Result.PARKED)
            return False
        return True

    def mark_handed(self, handed: list[tuple[PendingDelivery, Route]], report: PassReport) -> None:
        """Record the hand-overs in one transaction; kept for later if the ledger is away."""
        if not handed:
            return
        at = self._clock()
        for delivery, route in handed:
            self._unmarked[delivery.message_id] = (at, route.audit_route)
        marks = [(d.message_id, at, route.audit_route) for d, route in handed]
        self._ledger.mark_published_many(marks)  # LedgerUnavailableError: _unmarked keeps them
        for delivery, route in handed:
            del self._unmarked[delivery.message_id]
            self._delivered(delivery.message, route)
            report.add(Result.DELIVERED)

    def _delivered(self, message: OutboxMessage, route: Route) -> None:
        """A recorded hand-over: the receiver's circuit closes, and it is counted and logged."""
        self._circuits.succeeded(message.provider)
        if message.provider is not None:
            self._metrics.delivered.labels(provider=message.provider, kind=message.kind).inc()
        log.debug(
            "delivery.delivered",
            message_id=message.message_id,
            provider=message.provider,
            transport=route.name,
        )

    def record_unmarked(self) -> None:
        """Record hand-overs the ledger has not taken yet; raises if the ledger is still away.

        Until then the row stays claimed, so no other worker sends it again and no fallback
        task is issued for it; if the ledger stays away past the claim, it may be sent twice,
        which the provider drops by id.
        """
        for message_id in list(self._unmarked):
            try:
                self._mark(message_id)
            except LedgerUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 (not an outage: the claim lapses and the row is sent again)
                log.error(
                    "delivery.mark_failed",
                    message_id=message_id,
                    error_type=type(exc).__name__,
                    detail="handed over but not recorded; it will be sent again (a repeat)",
                )

    def _mark(self, message_id: str) -> None:
        """Record one hand-over (a few quick tries); kept for later only if the ledger is away."""
        at, route = self._unmarked[message_id]
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential_jitter(multiplier=0.05, max=0.5),
                retry=retry_if_exception(lambda e: isinstance(e, LedgerUnavailableError)),
                sleep=self._sleep,
                reraise=True,
            ):
                with attempt:
                    self._ledger.mark_published(message_id, at, route=route)
        except LedgerUnavailableError:
            raise
        except Exception:
            del self._unmarked[message_id]
            raise
        del self._unmarked[message_id]

    def _try_in_place(
        self,
        route: Route,
        delivery: PendingDelivery,
        *,
        attempts: int | None,
        deadline: float,
    ) -> None:
        policy = self._policy
        provider = delivery.message.provider
        breaker = self._circuits.of(provider)
        # A retry starts only if a whole attempt (the route's worst case) still fits the budget.
        worst = getattr(route, "max_attempt_seconds", None) or 0.0
        base_wait = wait_exponential_jitter(
            multiplier=policy.in_place_initial_seconds,
            max=policy.in_place_max_seconds,
            jitter=policy.in_place_initial_seconds,
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            asked = error.retry_after if isinstance(error, TransientDeliveryError) else None
            return max(base_wait(state), asked or 0.0)

        def worth_retrying(error: BaseException) -> bool:
            if not isinstance(error, TransientDeliveryError) or not breaker.allows():
                return False
            if self._monotonic() + worst >= deadline:
                return False
            return policy.pause_fits_in_place(error.retry_after)

        for attempt in Retrying(
            stop=stop_after_attempt(attempts or policy.attempts_in_place),
            wait=wait,
            retry=retry_if_exception(worth_retrying),
            sleep=self._sleep,
            reraise=True,
        ):
            with attempt:
                try:
                    _deliver(route, delivery)
                except TransientDeliveryError as exc:
                    self._circuits.failed(provider, exc)
                    raise


def _deliver(route: Route, delivery: PendingDelivery) -> None:
    """Hand one message to its route; anything but a DeliveryError counts as transient.

    Routes translate the errors they know; an unexpected one (a library error nobody
    classified, a bug) must park the row, never crash the worker or loop the inbound message.
    Only the exception's type is kept: its text could hold anything.
    """
    try:
        route.deliver(delivery.message)
    except DeliveryError:
        raise
    except Exception as exc:
        raise TransientDeliveryError(
            "unexpected_error",
            f"{receiver_key(delivery.message.provider)}: {type(exc).__name__} from the "
            f"{route.name} route; see the bridge's log",
        ) from exc
