"""What a decision does: ledger rows and sealed outbox messages, in the caller's transaction.

Referrals, updates, withdrawals, leaflet tasks and the other officer tasks, and the fallback
leaflet task the delivery engine asks for when a referral cannot be handed over. Nothing here
commits, publishes or decides: the service and the scheduled steps decide, then call these inside
their own ledger transaction, so a decision and its effects commit together or not at all.

Long on purpose: one short method per kind of effect, around one sealer and outbox writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot, as_decided
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import TaskKind, Victim
from referral_bridge.core.history import VictimHistory
from referral_bridge.core.messages import (
    effective_consent,
    leaflet_task,
    referral_payload,
    withdrawal_payload,
)
from referral_bridge.core.policy import Policy
from referral_bridge.delivery import FALLBACK_EVENT, REASON_REJECTED
from referral_bridge.ledger import (
    ActionKind,
    AuditFacts,
    Cancellation,
    CancelReason,
    IssuedTaskRow,
    LedgerTransaction,
    PendingDelivery,
    RecordedAction,
)
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.service.matters import lock_matter, snapshot_of
from referral_bridge.service.outbox import OutboxEntry, OutboxWriter
from referral_bridge.wire import JOSE

log = structlog.get_logger("referral_bridge.service")

REFERRAL_CREATED = "victim.referral.created"
REFERRAL_UPDATED = "victim.referral.updated"
REFERRAL_WITHDRAWN = "victim.referral.withdrawn"
#: `schemaversion` of the referral messages' data (contract version 2 changed their payloads).
REFERRAL_SCHEMA_VERSION = 2


class Sealer(Protocol):
    """Signs and encrypts a payload for one provider (see referral_bridge.sealing)."""

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderLeaflet:
    """A leaflet task decided outside the rules, from what a provider did (or did not do)."""

    case: CaseSnapshot
    victim_id: str
    provider: str
    reason: str
    task_id: str
    due_by: datetime
    explanation: str


def count_decision(metrics: BridgeMetrics, decision: Decision) -> None:
    metrics.decisions.labels(outcome=decision.outcome.value, reason=decision.reason).inc()


class Effects:
    """Carries out decisions inside a ledger transaction; the delivery engine's FallbackIssuer."""

    def __init__(
        self,
        *,
        sealer: Sealer,
        outbox: OutboxWriter,
        policy: Policy,
        calendar: WorkingDayCalendar,
        metrics: BridgeMetrics,
    ) -> None:
        self._sealer = sealer
        self._outbox = outbox
        self._policy = policy
        self._calendar = calendar
        self._metrics = metrics

    def apply(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        """Carry out one of the core's decisions for a victim of `case`."""
        hold_open = history.hold is not None and history.hold.open
        match decision.outcome:
            case Outcome.REFER | Outcome.UPDATE:
                self._send_referral(tx, case, decision, history, event_id, now)
            case Outcome.LEAFLET:
                self._leaflet(tx, case, decision, event_id, now)
            case Outcome.WITHDRAW:
                victim = case.victim(decision.victim_id)
                self.withdraw(tx, case.case_ref, victim, decision, history, event_id, now)
            case Outcome.HOLD:
                assert decision.hold_until is not None
                if not (hold_open and history.hold and history.hold.until == decision.hold_until):
                    tx.open_hold(case.case_ref, decision.victim_id, decision.hold_until)
            case Outcome.NONE:
                pass
        if hold_open and decision.ends_hold:
            tx.end_hold(case.case_ref, decision.victim_id, now, decision.reason)

    def provider_leaflet(
        self, tx: LedgerTransaction, leaflet: ProviderLeaflet, event_id: str, now: datetime
    ) -> Decision:
        """Record the leaflet task and its decision, and write the task to the outbox."""
        decision = Decision(
            case_ref=leaflet.case.case_ref,
            victim_id=leaflet.victim_id,
            outcome=Outcome.LEAFLET,
            rule=None,
            regime=None,
            reason=leaflet.reason,
            explanation=leaflet.explanation,
            provider=leaflet.provider,
            task_id=leaflet.task_id,
            due_by=leaflet.due_by,
            category=as_decided(leaflet.case, self._policy).category,
        )
        self._leaflet(tx, leaflet.case, decision, event_id, now)
        tx.add_decision(event_id, decision, now)
        return decision

    def issue_fallback(
        self, tx: LedgerTransaction, delivery: PendingDelivery, reason: str, now: datetime
    ) -> str | None:
        """Record a leaflet task so the officer gives the victim the provider's details instead.

        Called by the delivery engine inside its transaction (with the rejection, or for a
        passed deadline). Idempotent: a task already issued for this case, victim and reason
        is reused. Returns the task id, or None if the case's snapshot is not in the ledger.
        """
        provider = delivery.message.provider
        case_ref, victim_id = delivery.case_ref, delivery.victim_id
        if provider is None or case_ref is None or victim_id is None:
            return None
        matter = lock_matter(tx, {case_ref})
        task_id = ids.leaflet_task_id(case_ref, victim_id, reason)
        if tx.has_action(task_id):
            return task_id
        state = tx.load_state(case_ref, matter)
        if state.snapshot is None:
            return None
        # The victim was promised a provider's contact by the deadline: the officer acts within
        # a working day, and never earlier than the original deadline would have required.
        due_by = self._calendar.add_working_days(now, 1)
        if delivery.message.deadline is not None and delivery.message.deadline > now:
            due_by = min(due_by, delivery.message.deadline)
        what = (
            "was refused by the provider"
            if reason == REASON_REJECTED
            else "was still undelivered at its deadline"
        )
        leaflet = ProviderLeaflet(
            case=snapshot_of(state.snapshot_kind, state.snapshot),
            victim_id=victim_id,
            provider=provider,
            reason=reason,
            task_id=task_id,
            due_by=due_by,
            explanation=f"Referral {delivery.message_id} to {provider} {what}; "
            f"leaflet task {task_id} due by {due_by.isoformat()}.",
        )
        count_decision(self._metrics, self.provider_leaflet(tx, leaflet, FALLBACK_EVENT, now))
        return task_id

    def withdraw(
        self,
        tx: LedgerTransaction,
        case_ref: str,
        victim: Victim | None,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        """`victim`: the victim's entry in the snapshot, None once it was erased."""
        provider, referral_id = decision.provider, decision.referral_id
        if provider is None or referral_id is None:
            raise ValueError("withdraw decision without a provider or referral id")
        referral = next(r for r in history.referrals if r.referral_id == referral_id)
        consent = effective_consent(victim, history.consent) if victim is not None else None
        # Erased: the consent.updated that asked for the withdrawal is all there is to cite.
        recorded = history.consent if victim is None else None
        payload = withdrawal_payload(referral.case_ref, decision, now)
        token = self._sealer.seal(provider, payload.model_dump(mode="json"))
        message_id = ids.withdrawal_id(referral_id)
        # The action is recorded either way, so the withdrawal is decided once.
        tx.add_action(
            RecordedAction(
                case_ref=case_ref,
                victim_id=decision.victim_id,
                action=ActionKind.WITHDRAWAL,
                target=referral_id,
                message_id=message_id,
                provider=provider,
                service=referral.service,
                related_id=referral_id,
                due_at=None,
                facts={"reason": decision.reason},
            ),
            now,
        )
        audit = AuditFacts(
            case_ref=referral.case_ref,
            victim_id=decision.victim_id,
            provider=provider,
            lawful_basis=decision.lawful_basis,
            consent_state=(
                consent.state.value if consent else (recorded.referral.value if recorded else None)
            ),
            consent_recorded_at=(
                consent.recorded_at if consent else (recorded.recorded_at if recorded else None)
            ),
            consent_recorded_by=(
                consent.recorded_by if consent else (recorded.recorded_by if recorded else None)
            ),
            consent_regime=decision.regime,
        )
        self._outbox.enqueue(
            tx,
            OutboxEntry(
                event_id=event_id,
                kind="withdrawal",
                message_id=message_id,
                event_type=REFERRAL_WITHDRAWN,
                content_type=JOSE,
                data=token,
                exchange=self._outbox.routes.referrals_exchange,
                routing_key=provider,
                provider=provider,
                schema_version=REFERRAL_SCHEMA_VERSION,
                audit=audit,
            ),
            now,
        )
        # Updates not yet sent are not sent at all: the provider is to delete what it holds.
        for update in history.updates:
            if update.referral_id == referral_id:
                tx.cancel_unsent(update.update_id, now, CancelReason.REFERRAL_WITHDRAWN)
        # A referral not yet handed over must never be: consent has gone (rules.md withdraws
        # only what was sent). If no attempt at it ever started, it is cancelled (no delivery, no
        # fallback task at its deadline, no resend), and so is the withdrawal: the provider never
        # had anything to withdraw. If one started, it may have arrived: no more attempts, and
        # the withdrawal follows once that attempt is over (Ledger.waiting_on).
        cancellation = tx.cancel_referral(referral_id, now)
        if cancellation is Cancellation.NEVER_SENT:
            tx.cancel_unsent(message_id, now, CancelReason.NOTHING_TO_WITHDRAW)
        if cancellation is not Cancellation.UNCHANGED:
            log.info(
                "referral.cancelled",
                case_ref=referral.case_ref,
                victim_id=decision.victim_id,
                provider=provider,
                message_id=referral_id,
                reason=f"{decision.reason}_{cancellation.value}",
            )

    def _send_referral(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        """Record a referral or an update, and seal the whole current minimised referral (created
        or updated) into the outbox."""
        victim = case.victim(decision.victim_id)
        provider, referral_id = decision.provider, decision.referral_id
        if victim is None or provider is None or referral_id is None:
            raise ValueError("referral decision without a victim, provider or referral id")
        update = decision.outcome is Outcome.UPDATE
        action = (
            _update_action(case.case_ref, decision, referral_id)
            if update
            else _referral_action(case.case_ref, decision, provider, referral_id)
        )
        tx.add_action(action, now)
        consent = effective_consent(victim, history.consent)
        payload = referral_payload(case, victim, decision, consent, now)
        token = self._sealer.seal(provider, payload.model_dump(mode="json"))
        self._outbox.enqueue(
            tx,
            OutboxEntry(
                event_id=event_id,
                kind=action.action,
                message_id=action.message_id,
                event_type=REFERRAL_UPDATED if update else REFERRAL_CREATED,
                content_type=JOSE,
                data=token,
                exchange=self._outbox.routes.referrals_exchange,
                routing_key=provider,
                provider=provider,
                # An update is not a new referral: no fallback task if it is late.
                deadline=None if update else decision.deadline,
                schema_version=REFERRAL_SCHEMA_VERSION,
                audit=AuditFacts(
                    case_ref=case.case_ref,
                    victim_id=victim.victim_id,
                    provider=provider,
                    lawful_basis=decision.lawful_basis,
                    consent_state=consent.state.value,
                    consent_recorded_at=consent.recorded_at,
                    consent_recorded_by=consent.recorded_by,
                    consent_regime=decision.regime,
                ),
            ),
            now,
        )

    def _leaflet(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        event_id: str,
        now: datetime,
    ) -> None:
        task = leaflet_task(case, decision)
        tx.add_action(
            RecordedAction(
                case_ref=case.case_ref,
                victim_id=decision.victim_id,
                action=ActionKind.LEAFLET,
                target=decision.reason,
                message_id=task.task_id,
                provider=task.provider,
                service=None,
                related_id=None,
                due_at=task.due_by,
            ),
            now,
        )
        row = IssuedTaskRow(
            task_id=task.task_id,
            kind=TaskKind.LEAFLET.value,
            reason=task.reason,
            case_ref=task.case_ref,
            victim_id=task.victim_id,
            officer_unit=task.officer.unit,
            issued_at=now,
            due_by=task.due_by,
        )
        self._outbox.task(tx, row, task, event_id, now)


def _referral_action(
    case_ref: str, decision: Decision, provider: str, referral_id: str
) -> RecordedAction:
    """The ledger's record of a referral."""
    generation = decision.generation or 1
    return RecordedAction(
        case_ref=case_ref,
        victim_id=decision.victim_id,
        action=ActionKind.REFERRAL,
        # One referral per provider and generation (the ledger's last line of defence).
        target=provider if generation == 1 else f"{provider}#{generation}",
        message_id=referral_id,
        provider=provider,
        service=decision.service,
        related_id=None,
        due_at=decision.deadline,
        facts={"generation": generation, "fingerprint": decision.fingerprint},
    )


def _update_action(case_ref: str, decision: Decision, referral_id: str) -> RecordedAction:
    """The ledger's record of an update to a referral."""
    if decision.revision is None:
        raise ValueError("update decision without a revision")
    message_id = ids.update_id(referral_id, decision.revision)
    return RecordedAction(
        case_ref=case_ref,
        victim_id=decision.victim_id,
        action=ActionKind.UPDATE,
        target=message_id,
        message_id=message_id,
        provider=decision.provider or "",
        service=decision.service,
        related_id=referral_id,
        due_at=decision.deadline,
        facts={"revision": decision.revision, "fingerprint": decision.fingerprint},
    )
