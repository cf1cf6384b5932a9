"""The delivery engine: takes due outbox rows to their routes, in order, without ever blocking.

One attempt at a message means a few quick tries in place (tenacity, exponential backoff with
jitter) in a scheduler pass, or a single try when an inbound message is being handled. If they
all fail for a transient reason, the message is parked in the ledger (`next_attempt_at`,
`last_error`) with a backoff that grows each time, and the pass moves on. A rejection keeps the
row for an operator and issues a fallback leaflet task; so does a referral still undelivered at
its Victims' Code deadline (once), while it keeps being retried.

Delivery runs on the worker's consumer thread, which also pings the systemd watchdog. So a pass
has a time budget (`DeliveryPolicy.pass_budget_seconds`): no new attempt starts once it is
spent, and an in-place retry starts only if a whole attempt still fits in it. The rest waits
for the next pass. Any failure of one row (even an unexpected exception) is logged by type and
the pass goes on: one bad row never stops the others.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from referral_bridge.delivery.circuit import CircuitBreaker, CircuitState
from referral_bridge.delivery.errors import (
    DeliveryError,
    DeliveryRejectedError,
    TransientDeliveryError,
)
from referral_bridge.delivery.policy import DeliveryPolicy, park_delay
from referral_bridge.delivery.routes import Route
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger, LedgerTransaction, PendingDelivery
from referral_bridge.runtime.metrics import BridgeMetrics

log = structlog.get_logger("referral_bridge.delivery")

#: Synthetic event id under which fallback leaflet tasks are recorded and queued.
FALLBACK_EVENT = "delivery:fallback"
REASON_REJECTED = "provider_rejected"
REASON_UNREACHABLE = "provider_unreachable"
#: Circuit key for messages without a provider (officers' tasks on the force broker).
TASKS_KEY = "officer-tasks"
_PAGE = 200
#: Rounds of `deliver_events`: each lets rows go that waited on rows of the round before.
_ROUNDS = 8


class FallbackIssuer(Protocol):
    """Records a fallback leaflet task for an undeliverable referral inside `tx`.

    Returns the task id (also when it was issued before), or None when no task can be built
    (e.g. the case's snapshot is gone). Implemented by `service.effects.Effects`, which owns
    the policy; bootstrap hands it to the engine.
    """

    def issue_fallback(
        self, tx: LedgerTransaction, delivery: PendingDelivery, reason: str, now: datetime
    ) -> str | None: ...


class Result(StrEnum):
    DELIVERED = "delivered"
    PARKED = "parked"
    REJECTED = "rejected"
    WAITING = "waiting"
    CIRCUIT_OPEN = "circuit_open"
    #: Another worker claimed the row first (or it was cancelled meanwhile): not ours to send.
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    #: Something other than a delivery error went wrong with this row (logged); tried next pass.
    FAILED = "failed"


@dataclass
class PassReport:
    """What one delivery pass did, by result."""

    counts: dict[Result, int] = field(default_factory=dict)
    fallbacks: int = 0

    def add(self, result: Result) -> None:
        self.counts[result] = self.counts.get(result, 0) + 1

    @property
    def delivered(self) -> int:
        return self.counts.get(Result.DELIVERED, 0)


class DeliveryEngine:
    """Delivers outbox rows by route; one instance per process, used from one thread."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        default_route: Route,
        routes: Mapping[str, Route] | None = None,
        policy: DeliveryPolicy | None = None,
        clock: Callable[[], datetime],
        metrics: BridgeMetrics,
        fallbacks: FallbackIssuer,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._default = default_route
        self._routes = dict(routes or {})
        self._policy = policy or DeliveryPolicy()
        self._clock = clock
        self._metrics = metrics
        self._fallbacks = fallbacks
        self._sleep = sleep
        self._rand = rand
        self._monotonic = monotonic
        self._breakers: dict[str, CircuitBreaker] = {}
        #: Handed over, but the ledger failed before it recorded so: message id -> (when, route).
        #: Recorded first thing next time; meanwhile no fallback is issued for these rows.
        self._unmarked: dict[str, tuple[datetime, str]] = {}

    # --- public -------------------------------------------------------------------------------

    def route_for(self, provider: str | None) -> Route:
        return self._routes.get(provider, self._default) if provider else self._default

    def circuit(self, provider: str | None) -> CircuitBreaker:
        key = provider or TASKS_KEY
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

    def _open_circuits(self) -> frozenset[str | None]:
        """Receivers not to be read this pass (None: the officers' tasks on the force broker)."""
        return frozenset(
            None if key == TASKS_KEY else key
            for key, breaker in self._breakers.items()
            if breaker.state is CircuitState.OPEN
        )

    def deliver_due(
        self,
        *,
        event_id: str | None = None,
        created_before: datetime | None = None,
        retry_in_place: bool = True,
    ) -> PassReport:
        """One pass over the due rows (of one event, or all), oldest first, within the pass budget.

        `retry_in_place=False` makes one attempt per row (the inbound-message path: a provider
        that is down must not hold the consumer). Never raises for a row's failure; raises
        LedgerUnavailableError if the ledger goes away.
        """
        deadline = self._monotonic() + self._policy.pass_budget_seconds
        self._record_unmarked()
        return self._pass(
            event_id=event_id,
            created_before=created_before,
            attempts=None if retry_in_place else 1,
            deadline=deadline,
        )

    def deliver_events(self, event_ids: Collection[str]) -> PassReport:
        """Deliver the rows a batch of inbound events just committed, one attempt each.

        Group commit's delivery: every row whose route can publish a window (the force broker)
        is claimed in one ledger transaction, published with windowed confirms, and marked in
        one more; other routes (HTTPS, a provider's broker) go one at a time as in a pass. So a
        batch costs two commits and one confirm round trip, not three of each per row. Rows that
        wait on an earlier one (per case and destination, a withdrawal behind its referral) go
        in a later round, once those are marked. The claim protocol is the one `_attempt_one`
        follows; failures park rows. Raises LedgerUnavailableError only.
        """
        report = PassReport()
        if not event_ids:
            return report
        deadline = self._monotonic() + self._policy.pass_budget_seconds
        self._record_unmarked()
        pending: list[PendingDelivery] = []
        cursor: int | None = None
        while True:
            page = self._ledger.due_deliveries(
                self._clock(), event_ids=event_ids, after=cursor, limit=_PAGE
            )
            pending.extend(page)
            if len(page) < _PAGE:
                break
            cursor = page[-1].seq
        for _round in range(_ROUNDS):
            if not pending or self._monotonic() >= deadline:
                break
            delivered_before = report.delivered
            pending = self._round(pending, report, deadline)
            if report.delivered == delivered_before:
                break
        for _waiting in pending:
            report.add(Result.WAITING)
        if report.fallbacks:
            fallback = self._pass(
                event_id=FALLBACK_EVENT, created_before=None, attempts=1, deadline=deadline
            )
            for result, count in fallback.counts.items():
                report.counts[result] = report.counts.get(result, 0) + count
        return report

    def _round(
        self, pending: list[PendingDelivery], report: PassReport, deadline: float
    ) -> list[PendingDelivery]:
        """One round of `deliver_events`; returns the rows still waiting on another."""
        waiting: list[PendingDelivery] = []
        windowed: list[tuple[PendingDelivery, Route]] = []
        now = self._clock()
        for delivery in pending:
            if self._monotonic() >= deadline:
                # The pass budget is spent (slow HTTPS providers): the scheduler takes the rest.
                waiting.append(delivery)
                continue
            route = self.route_for(delivery.message.provider)
            if not getattr(route, "windowed", False):
                if self._attempt(delivery, report, 1, deadline) is Result.WAITING:
                    report.counts[Result.WAITING] -= 1
                    waiting.append(delivery)
                continue
            if not self.circuit(delivery.message.provider).allows():
                self._attempt(delivery, report, 1, deadline)  # deferred to the probe time
                continue
            if self._ledger.waiting_on(delivery, now) is not None:
                waiting.append(delivery)
                continue
            windowed.append((delivery, route))
        if not windowed:
            return waiting
        claimed = self._ledger.claim_deliveries(
            [d.message_id for d, _ in windowed], now, now + self._policy.claim_lease
        )
        by_route: dict[int, tuple[Route, list[PendingDelivery]]] = {}
        for delivery, route in windowed:
            if delivery.message_id not in claimed:
                report.add(Result.CLAIMED_ELSEWHERE)
                continue
            by_route.setdefault(id(route), (route, []))[1].append(delivery)
        handed: list[tuple[PendingDelivery, Route]] = []
        for route, deliveries in by_route.values():
            try:
                window = getattr(route, "deliver_window")  # noqa: B009 - not in every Route
                errors: list[Exception | None] = window([d.message for d in deliveries])
            except Exception as exc:  # unexpected: each row then goes alone, as any failure
                log.error("delivery.window_failed", error_type=type(exc).__name__)
                errors = [exc] * len(deliveries)
            for delivery, error in zip(deliveries, errors, strict=True):
                if error is None or self._retry_alone(delivery, route, report, deadline):
                    handed.append((delivery, route))
        self._mark_handed(handed, report)
        return waiting

    def _retry_alone(
        self, delivery: PendingDelivery, route: Route, report: PassReport, deadline: float
    ) -> bool:
        """A row its window did not get through: one attempt alone (still under its claim),
        with the route's own retries; parked or rejected if that fails too."""
        breaker = self.circuit(delivery.message.provider)
        try:
            self._try_in_place(route, delivery, breaker, attempts=1, deadline=deadline)
        except DeliveryRejectedError as exc:
            self._close_circuit(breaker, delivery.message.provider)
            self._reject(delivery, exc, route, report)
            report.add(Result.REJECTED)
            return False
        except TransientDeliveryError as exc:
            self._park(delivery, exc, route)
            report.add(Result.PARKED)
            return False
        return True

    def _mark_handed(self, handed: list[tuple[PendingDelivery, Route]], report: PassReport) -> None:
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
            message = delivery.message
            self._close_circuit(self.circuit(message.provider), message.provider)
            if message.provider is not None:
                self._metrics.delivered.labels(provider=message.provider, kind=message.kind).inc()
            report.add(Result.DELIVERED)
            log.debug(
                "delivery.delivered",
                message_id=message.message_id,
                provider=message.provider,
                transport=route.name,
            )

    def _pass(
        self,
        *,
        event_id: str | None,
        created_before: datetime | None,
        attempts: int | None,
        deadline: float,
    ) -> PassReport:
        report = PassReport()
        now = self._clock()
        cursor: int | None = None
        waiting: list[PendingDelivery] = []
        spent = False
        while not spent:
            page = self._ledger.due_deliveries(
                now,
                event_id=event_id,
                created_before=created_before,
                after=cursor,
                limit=_PAGE,
                # An event's own rows are read even so: they are deferred to the probe time.
                skip_providers=self._open_circuits() if event_id is None else (),
            )
            for delivery in page:
                if self._monotonic() >= deadline:
                    spent = True
                    break
                if self._attempt(delivery, report, attempts, deadline) is Result.WAITING:
                    waiting.append(delivery)
            if len(page) < _PAGE:
                break
            cursor = page[-1].seq
        # What waited on a message delivered later in this pass need not wait for the next one.
        if report.delivered and not spent:
            for delivery in waiting:
                if self._monotonic() >= deadline:
                    spent = True
                    break
                report.counts[Result.WAITING] -= 1
                self._attempt(delivery, report, attempts, deadline)
        if spent:
            log.warning(
                "delivery.pass_budget_spent",
                budget_s=self._policy.pass_budget_seconds,
                detail="the remaining due rows wait for the next pass",
            )
        if report.fallbacks and event_id != FALLBACK_EVENT:
            fallback = self._pass(
                event_id=FALLBACK_EVENT, created_before=None, attempts=attempts, deadline=deadline
            )
            for result, count in fallback.counts.items():
                report.counts[result] = report.counts.get(result, 0) + count
        return report

    def issue_overdue_fallbacks(self) -> int:
        """A leaflet task, once, for each referral still undelivered at its deadline.

        The referral keeps being retried: the provider may yet take it. Returns tasks issued.
        """
        self._record_unmarked()
        issued = 0
        now = self._clock()
        for delivery in self._ledger.overdue_deliveries(now, grace=self._policy.fallback_grace):
            if delivery.message_id in self._unmarked:
                continue
            try:
                issued_for = self._issue_overdue(delivery, now)
            except LedgerUnavailableError:
                raise
            except Exception as exc:  # one bad row must not stop the others' fallbacks
                log.error(
                    "delivery.fallback_failed",
                    message_id=delivery.message_id,
                    provider=delivery.message.provider,
                    error_type=type(exc).__name__,
                )
                continue
            if issued_for is not None:
                issued += 1
                self._fallback_issued(*issued_for, REASON_UNREACHABLE)
        if issued:
            self.deliver_due(event_id=FALLBACK_EVENT)
        return issued

    def _issue_overdue(
        self, delivery: PendingDelivery, now: datetime
    ) -> tuple[PendingDelivery, str] | None:
        with self._ledger.transaction() as tx:
            current = tx.pending_delivery(delivery.message_id)
            if current is None or current.published_at or current.rejected_at:
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

    def close(self) -> None:
        for route in {id(r): r for r in [self._default, *self._routes.values()]}.values():
            route.close()

    # --- one message --------------------------------------------------------------------------

    def _attempt(
        self, delivery: PendingDelivery, report: PassReport, attempts: int | None, deadline: float
    ) -> Result:
        try:
            result = self._attempt_one(delivery, report, attempts, deadline)
        except LedgerUnavailableError:
            raise
        except Exception as exc:  # isolated: logged by type (never its text), the pass goes on
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
        breaker = self.circuit(message.provider)
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
                route, delivery, breaker, attempts=1 if probing else attempts, deadline=deadline
            )
        except DeliveryRejectedError as exc:
            self._close_circuit(breaker, message.provider)
            self._reject(delivery, exc, route, report)
            return Result.REJECTED
        except TransientDeliveryError as exc:
            self._park(delivery, exc, route)
            return Result.PARKED
        self._unmarked[message.message_id] = (self._clock(), route.audit_route)
        self._mark(message.message_id)
        self._close_circuit(breaker, message.provider)
        if message.provider is not None:
            self._metrics.delivered.labels(provider=message.provider, kind=message.kind).inc()
        log.debug(
            "delivery.delivered",
            message_id=message.message_id,
            provider=message.provider,
            transport=route.name,
        )
        return Result.DELIVERED

    def _record_unmarked(self) -> None:
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
            except Exception as exc:  # not an outage: the claim lapses and the row is sent again
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
        breaker: CircuitBreaker,
        *,
        attempts: int | None,
        deadline: float,
    ) -> None:
        policy = self._policy
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
            # A receiver asking for a longer pause than in-place retries allow gets it by parking.
            return error.retry_after is None or error.retry_after <= policy.in_place_max_seconds

        provider = delivery.message.provider
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
                    self._metrics.delivery_failures.labels(
                        provider=provider or TASKS_KEY, outcome="transient"
                    ).inc()
                    if breaker.record_failure():
                        self._circuit_opened(breaker, provider, exc)
                    raise

    # --- outcomes -----------------------------------------------------------------------------

    def _park(self, delivery: PendingDelivery, error: TransientDeliveryError, route: Route) -> None:
        now = self._clock()
        policy = self._policy
        delay = park_delay(
            delivery.attempts + 1,
            initial=policy.park_initial.total_seconds(),
            maximum=policy.park_max.total_seconds(),
            jitter=policy.park_jitter,
            rand=self._rand,
        )
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, policy.park_max.total_seconds()))
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

    def _reject(
        self,
        delivery: PendingDelivery,
        error: DeliveryRejectedError,
        route: Route,
        report: PassReport,
    ) -> None:
        now = self._clock()
        message = delivery.message
        provider = message.provider or TASKS_KEY
        self._metrics.delivery_failures.labels(provider=provider, outcome="rejected").inc()
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
            self._fallback_issued(delivery, task_id, REASON_REJECTED)

    def _fallback_issued(self, delivery: PendingDelivery, task_id: str, reason: str) -> None:
        provider = delivery.message.provider or TASKS_KEY
        self._metrics.fallback_tasks.labels(provider=provider, reason=reason).inc()
        log.warning(
            "delivery.fallback_issued",
            message_id=delivery.message_id,
            provider=delivery.message.provider,
            case_ref=delivery.case_ref,
            victim_id=delivery.victim_id,
            reason=reason,
            task_id=task_id,
        )

    def _circuit_opened(
        self, breaker: CircuitBreaker, provider: str | None, error: TransientDeliveryError
    ) -> None:
        key = provider or TASKS_KEY
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

    def _close_circuit(self, breaker: CircuitBreaker, provider: str | None) -> None:
        """A success: after failures, the receiver's parked rows need not wait out their backoff."""
        was_open = breaker.state is not CircuitState.CLOSED
        if not breaker.record_success():
            return
        self._metrics.circuit_open.labels(provider=provider or TASKS_KEY).set(0)
        if was_open:
            log.info("delivery.circuit_closed", provider=provider or TASKS_KEY)
        brought = self._ledger.bring_forward(provider, self._clock())
        if brought:
            log.info("delivery.brought_forward", provider=provider or TASKS_KEY, count=brought)


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
            f"{delivery.message.provider or TASKS_KEY}: {type(exc).__name__} from the "
            f"{route.name} route; see the bridge's log",
        ) from exc
