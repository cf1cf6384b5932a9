"""Closing the loop (rules.md): a provider's outcome for a referral, an officer's completion of a
task. Both run inside the service's transaction for the event, like any other inbound event."""

from __future__ import annotations

from datetime import datetime

import structlog

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import (
    DeadLetterReason,
    InboundEvent,
    ReferralOutcome,
    TaskCompleted,
)
from referral_bridge.core.outcomes import (
    LEAFLET_REASONS,
    CompletionResult,
    decide_completion,
    decide_outcome,
    outcome_source_problem,
)
from referral_bridge.ledger import LedgerTransaction
from referral_bridge.service.effects import Effects, ProviderLeaflet
from referral_bridge.service.matters import lock_matter, snapshot_of
from referral_bridge.service.results import Handled, UnknownReferenceError

log = structlog.get_logger("referral_bridge.service")


def record_outcome(
    tx: LedgerTransaction,
    event: InboundEvent,
    data: ReferralOutcome,
    *,
    routing_key: str | None,
    now: datetime,
    calendar: WorkingDayCalendar,
    effects: Effects,
) -> Handled:
    """Record a provider's outcome if it is newer, and the leaflet task it may call for."""
    if tx.is_processed(event.id, source=event.source):
        return Handled(result="duplicate", matter_ref=None)
    referral = tx.sent_referral(data.referral_id)
    problem = outcome_source_problem(data, routing_key, referral)
    if problem is not None or referral is None:
        raise UnknownReferenceError(
            DeadLetterReason.UNKNOWN_REFERRAL, problem or "unknown referral"
        )
    matter = lock_matter(tx, {referral.case_ref})
    # Read again under the lock: a withdrawal may have committed meanwhile.
    referral = tx.sent_referral(data.referral_id) or referral
    reason = LEAFLET_REASONS.get(data.outcome)
    task_id = (
        ids.leaflet_task_id(referral.case_ref, referral.victim_id, reason)
        if reason is not None
        else None
    )
    effect = decide_outcome(
        data,
        tx.referral_outcome(referral.referral_id),
        referral,
        leaflet_issued=task_id is not None and tx.has_action(task_id),
        received_at=now,
        calendar=calendar,
    )
    if effect.record is not None:
        tx.save_referral_outcome(
            referral, effect.record, received_at=now, event_source=event.source, event_id=event.id
        )
    decisions: tuple[Decision, ...] = ()
    state = tx.load_state(referral.case_ref, matter) if effect.leaflet_reason is not None else None
    if (
        effect.leaflet_reason is not None
        and effect.leaflet_due_by is not None
        and task_id is not None
        and state is not None
        and state.snapshot
    ):
        leaflet = ProviderLeaflet(
            case=snapshot_of(state.snapshot_kind, state.snapshot),
            victim_id=referral.victim_id,
            provider=referral.provider,
            reason=effect.leaflet_reason,
            task_id=task_id,
            due_by=effect.leaflet_due_by,
            explanation=effect.explanation + f" Leaflet task {task_id}.",
        )
        decisions = (effects.provider_leaflet(tx, leaflet, event.id, now),)
    tx.mark_processed(
        event.id,
        event.type.value,
        referral.referral_id,
        effect.result.value,
        now,
        source=event.source,
    )
    log.info(
        "referral.outcome",
        referral_id=referral.referral_id,
        provider=referral.provider,
        outcome=data.outcome.value,
        result=effect.result.value,
    )
    return Handled(result=effect.result.value, matter_ref=referral.case_ref, decisions=decisions)


def complete_task(
    tx: LedgerTransaction, event: InboundEvent, data: TaskCompleted, now: datetime
) -> Handled:
    """Close a task the bridge issued; the first completion recorded stands."""
    if tx.is_processed(event.id, source=event.source):
        return Handled(result="duplicate", matter_ref=None)
    task = tx.task(data.task_id)
    if task is None:
        raise UnknownReferenceError(
            DeadLetterReason.UNKNOWN_TASK,
            f"no task {data.task_id} was issued by this bridge: check the task system's "
            "task id (the task message's task_id)",
        )
    result = decide_completion(task, data)
    if result is CompletionResult.COMPLETED and not tx.complete_task(
        task.task_id, at=data.completed_at, by=data.completed_by, result=data.result.value
    ):
        result = CompletionResult.ALREADY_COMPLETED
    tx.mark_processed(
        event.id, event.type.value, task.task_id, result.value, now, source=event.source
    )
    log.info(
        "task.completed",
        task_id=task.task_id,
        task_kind=task.kind.value,
        result=result.value,
        late=task.due_by is not None and data.completed_at > task.due_by,
    )
    return Handled(result=result.value, matter_ref=task.case_ref)
