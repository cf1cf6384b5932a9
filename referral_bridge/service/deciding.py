"""One case of a matter decided by the pure core, and what it decided recorded and carried out.

Shared by the per-message path (`ReferralService`) and hold expiry (`HoldExpiry`): both call it
inside a transaction that holds the matter's lock.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import as_decided
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import CaseKind, CrimeStatus
from referral_bridge.core.history import VictimHistory
from referral_bridge.core.policy import Policy
from referral_bridge.core.retention import withdrawals_after_erasure
from referral_bridge.ledger import CancelReason, CaseState, LedgerTransaction
from referral_bridge.service.effects import Effects
from referral_bridge.service.matters import snapshot_of

log = structlog.get_logger("referral_bridge.service")


class CaseDecider:
    """Loads a case's state, asks `core.decide`, and records and carries out each decision."""

    def __init__(self, *, policy: Policy, calendar: WorkingDayCalendar, effects: Effects) -> None:
        self._policy = policy
        self._calendar = calendar
        self._effects = effects

    def decide_and_record(
        self, tx: LedgerTransaction, case_ref: str, matter: set[str], event_id: str, now: datetime
    ) -> tuple[Decision, ...]:
        state = tx.load_state(case_ref, matter)
        if state.snapshot is None:
            return self._withdraw_erased(tx, state, event_id, now) if state.erased else ()
        case = as_decided(snapshot_of(state.snapshot_kind, state.snapshot), self._policy)
        if case.kind is CaseKind.CRIME:
            # Every incident of the matter, whichever side named the link: the crime follows
            # referrals made under them (decide._follows).
            incidents = matter - tx.crimes_among(matter)
            linked = tuple(sorted(set(case.linked_refs) | incidents))
            case = case.model_copy(update={"linked_refs": linked})
        decisions = decide(case, state.history, self._policy, now, self._calendar)
        for decision in decisions:
            history = state.history.get(decision.victim_id, VictimHistory())
            self._effects.apply(tx, case, decision, history, event_id, now)
            tx.add_decision(event_id, decision, now)
        if case.status is not CrimeStatus.RECORDED:
            # rules.md: referrals already sent stay (support continues); undelivered ones are
            # cancelled, unless an attempt may have reached the provider.
            for victim_id, history in state.history.items():
                for referral in history.live():
                    if tx.cancel_unsent(referral.referral_id, now, CancelReason.CASE_CLOSED):
                        log.info(
                            "referral.cancelled",
                            case_ref=case_ref,
                            victim_id=victim_id,
                            provider=referral.provider,
                            message_id=referral.referral_id,
                            reason=f"crime_{case.status.value}",
                        )
        return decisions

    def _withdraw_erased(
        self, tx: LedgerTransaction, state: CaseState, event_id: str, now: datetime
    ) -> tuple[Decision, ...]:
        """An erased matter decides nothing new, but a withdrawal of consent is still honoured
        (docs/data-protection.md): it needs only the ids the ledger keeps."""
        decisions = tuple(withdrawals_after_erasure(state.case_ref, state.history))
        for decision in decisions:
            history = state.history[decision.victim_id]
            self._effects.withdraw(tx, state.case_ref, None, decision, history, event_id, now)
            tx.add_decision(event_id, decision, now)
        return decisions
