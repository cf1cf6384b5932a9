"""Hold expiry: holds whose wait has ended become decisions (usually leaflet tasks).

A scheduled step (runtime/scheduler.py). Each case is its own transaction, and a case that fails
for a reason other than an outage is pushed back an hour and logged, so one bad case cannot stall
the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.delivery import DeliveryEngine
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.service.deciding import CaseDecider
from referral_bridge.service.effects import count_decision
from referral_bridge.service.matters import try_lock_matter

log = structlog.get_logger("referral_bridge.service")

#: Synthetic event id under which the hold scheduler records its decisions.
HOLD_EXPIRY_EVENT = "scheduler:hold-expired"
#: A case whose holds could not be ended (not an outage) is tried again this much later.
HOLD_RETRY_AFTER = timedelta(hours=1)


class HoldExpiry:
    """Decides again the cases whose holds have ended, and ends those holds."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        decider: CaseDecider,
        delivery: DeliveryEngine,
        metrics: BridgeMetrics,
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._decider = decider
        self._delivery = delivery
        self._metrics = metrics
        self._clock = clock

    def expire(self) -> int:
        """Turn ended holds into decisions and deliver what they wrote; returns the cases seen."""
        now = self._clock()
        cases = self._ledger.due_holds(now)
        for case_ref in cases:
            try:
                decisions = self._expire_case(case_ref, now)
            except LedgerUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 (one bad case must not stall the rest)
                log.error("hold.expiry_failed", case_ref=case_ref, error_type=type(exc).__name__)
                self._postpone(case_ref, now + HOLD_RETRY_AFTER)
                continue
            for decision in decisions:
                count_decision(self._metrics, decision)
                log.info(
                    "hold.expired",
                    case_ref=decision.case_ref,
                    victim_id=decision.victim_id,
                    outcome=decision.outcome.value,
                    reason=decision.reason,
                )
        if cases:
            self._delivery.deliver_due(event_id=HOLD_EXPIRY_EVENT)
        return len(cases)

    def _expire_case(self, case_ref: str, now: datetime) -> tuple[Decision, ...]:
        with self._ledger.transaction() as tx:
            # Several workers find the same ended holds: a case another one is deciding now
            # is skipped, not waited for, and one decided since due_holds read it is left.
            matter = try_lock_matter(tx, {case_ref})
            if matter is None or not tx.ended_holds({case_ref}, now):
                return ()
            decisions: tuple[Decision, ...] = ()
            crimes = tx.crimes_among(matter)
            if case_ref in crimes or not crimes:
                decisions = self._decider.decide_and_record(
                    tx, case_ref, matter, HOLD_EXPIRY_EVENT, now
                )
            # A hold must never stay open past its end, whatever the policy said.
            for held_ref, victim_id in tx.open_holds({case_ref}):
                state = tx.load_state(held_ref, matter).history.get(victim_id)
                if state and state.hold and state.hold.until <= now:
                    tx.end_hold(held_ref, victim_id, now, "expired")
            return tuple(d for d in decisions if d.outcome is not Outcome.HOLD)

    def _postpone(self, case_ref: str, until: datetime) -> None:
        try:
            with self._ledger.transaction() as tx:
                for held_ref, victim_id in tx.open_holds({case_ref}):
                    tx.open_hold(held_ref, victim_id, until)
        except LedgerUnavailableError:
            log.warning("hold.postpone_failed", case_ref=case_ref)
