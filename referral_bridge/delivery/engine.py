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

This module holds the passes over due rows; `attempt.py` makes one attempt at one row,
`outcomes.py` parks or rejects it and keeps the receivers' circuits, and `fallbacks.py` issues
the leaflet tasks of referrals past their deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime

import structlog

from referral_bridge.delivery.attempt import Attempts
from referral_bridge.delivery.circuit import CircuitBreaker
from referral_bridge.delivery.fallbacks import FALLBACK_EVENT, FallbackIssuer, OverdueFallbacks
from referral_bridge.delivery.outcomes import Circuits, Outcomes
from referral_bridge.delivery.policy import DeliveryPolicy
from referral_bridge.delivery.results import PassReport, Result
from referral_bridge.delivery.routes import Route
from referral_bridge.ledger import Ledger, PendingDelivery
from referral_bridge.metrics import BridgeMetrics

log = structlog.get_logger("referral_bridge.delivery")

_PAGE = 200
#: Rounds of `deliver_events`: each lets rows go that waited on rows of the round before.
_ROUNDS = 8


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
        self._policy = policy or DeliveryPolicy()
        self._clock = clock
        self._monotonic = monotonic
        self._circuits = Circuits(ledger=ledger, policy=self._policy, clock=clock, metrics=metrics)
        self._attempts = Attempts(
            ledger=ledger,
            default_route=default_route,
            routes=routes or {},
            policy=self._policy,
            clock=clock,
            metrics=metrics,
            circuits=self._circuits,
            outcomes=Outcomes(
                ledger=ledger,
                policy=self._policy,
                clock=clock,
                metrics=metrics,
                circuits=self._circuits,
                fallbacks=fallbacks,
                rand=rand,
            ),
            sleep=sleep,
            monotonic=monotonic,
        )
        self._overdue = OverdueFallbacks(
            ledger=ledger, fallbacks=fallbacks, grace=self._policy.fallback_grace, metrics=metrics
        )

    # --- public -------------------------------------------------------------------------------

    def route_for(self, provider: str | None) -> Route:
        return self._attempts.route_for(provider)

    def circuit(self, provider: str | None) -> CircuitBreaker:
        return self._circuits.of(provider)

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
        self._attempts.record_unmarked()
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
        in a later round, once those are marked. The claim protocol is the one `Attempts.attempt`
        follows; failures park rows. Raises LedgerUnavailableError only.
        """
        report = PassReport()
        if not event_ids:
            return report
        deadline = self._monotonic() + self._policy.pass_budget_seconds
        self._attempts.record_unmarked()
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
            report.add_counts(
                self._pass(
                    event_id=FALLBACK_EVENT, created_before=None, attempts=1, deadline=deadline
                )
            )
        return report

    def issue_overdue_fallbacks(self) -> int:
        """A leaflet task, once, for each referral still undelivered at its deadline.

        The referral keeps being retried: the provider may yet take it. Returns tasks issued.
        """
        self._attempts.record_unmarked()
        issued = self._overdue.issue(self._clock(), awaiting_mark=self._attempts.awaiting_mark)
        if issued:
            self.deliver_due(event_id=FALLBACK_EVENT)
        return issued

    def close(self) -> None:
        self._attempts.close()

    # --- passes -------------------------------------------------------------------------------

    def _round(  # noqa: C901 (a batch's rounds: claim, window, alone, park, in order)
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
            route = self._attempts.route_for(delivery.message.provider)
            if not getattr(route, "windowed", False):
                if self._attempts.attempt(delivery, report, 1, deadline) is Result.WAITING:
                    report.counts[Result.WAITING] -= 1
                    waiting.append(delivery)
                continue
            if not self._circuits.of(delivery.message.provider).allows():
                self._attempts.attempt(delivery, report, 1, deadline)  # deferred to the probe time
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
            except Exception as exc:  # noqa: BLE001 (unexpected: each row then goes alone, as any failure)
                log.error("delivery.window_failed", error_type=type(exc).__name__)
                errors = [exc] * len(deliveries)
            for delivery, error in zip(deliveries, errors, strict=True):
                if error is None or self._attempts.retry_alone(delivery, route, report, deadline):
                    handed.append((delivery, route))
        self._attempts.mark_handed(handed, report)
        return waiting

    def _pass(  # noqa: C901 (one pass over due rows, each outcome counted)
        self,
        *,
        event_id: str | None,
        created_before: datetime | None,
        attempts: int | None,
        deadline: float,
    ) -> PassReport:
        """One pass over due rows, page by page, then the fallback tasks it issued."""
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
                skip_providers=self._circuits.open_receivers() if event_id is None else (),
            )
            for delivery in page:
                if self._monotonic() >= deadline:
                    spent = True
                    break
                if self._attempts.attempt(delivery, report, attempts, deadline) is Result.WAITING:
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
                self._attempts.attempt(delivery, report, attempts, deadline)
        if spent:
            log.warning(
                "delivery.pass_budget_spent",
                budget_s=self._policy.pass_budget_seconds,
                detail="the remaining due rows wait for the next pass",
            )
        if report.fallbacks and event_id != FALLBACK_EVENT:
            report.add_counts(
                self._pass(
                    event_id=FALLBACK_EVENT,
                    created_before=None,
                    attempts=attempts,
                    deadline=deadline,
                )
            )
        return report
