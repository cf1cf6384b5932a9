"""Closing the loop (rules.md "Provider outcomes and officer tasks"): what a provider's outcome,
an officer's completion and an overdue task each lead to, as pure decisions.

The shell reads what the ledger holds, asks these functions, and writes what they say in one
transaction. Nothing here reads a clock: `received_at` and `now` are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import (
    EscalationTask,
    ProviderOutcome,
    ReferralOutcome,
    TaskCompleted,
    TaskKind,
    TaskOfficer,
)

#: Outcomes after which the officer gives the victim the leaflet instead (rules.md), by reason.
LEAFLET_REASONS: dict[ProviderOutcome, str] = {
    ProviderOutcome.UNABLE_TO_CONTACT: "provider_unable_to_contact",
    ProviderOutcome.RETURNED: "provider_returned",
}
#: Working days the officer has, from the outcome, to give the leaflet.
OUTCOME_LEAFLET_WORKING_DAYS = 1
#: Task kinds that escalate when still open at their due time (an escalation itself does not).
ESCALATING_KINDS = frozenset({TaskKind.LEAFLET, TaskKind.CRIME_REVIEW})


@dataclass(frozen=True, slots=True)
class SentReferralFacts:
    """What the ledger knows of the referral an outcome names."""

    referral_id: str
    provider: str
    case_ref: str
    victim_id: str
    #: A withdrawal was sent (or decided) for it: the provider is to stop using it.
    withdrawn: bool


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """The outcome recorded for a referral (`rb_referral_outcomes`)."""

    outcome: ProviderOutcome
    at: datetime
    first_contacted_at: datetime | None


class OutcomeResult(StrEnum):
    RECORDED = "outcome_recorded"
    #: Not newer (by `at`) than the outcome recorded: no effect.
    OLDER = "outcome_older"


@dataclass(frozen=True, slots=True)
class OutcomeEffect:
    """What an outcome changes: the outcome to record (None: nothing) and any leaflet task."""

    result: OutcomeResult
    record: RecordedOutcome | None
    leaflet_reason: str | None = None
    leaflet_due_by: datetime | None = None
    explanation: str = ""


def outcome_source_problem(
    outcome: ReferralOutcome, routing_key: str | None, referral: SentReferralFacts | None
) -> str | None:
    """Why the outcome cannot be about a referral the bridge sent to its provider, or None.

    `routing_key` None: not taken off the broker, so not checked. The detail goes into a dead
    letter's header: ids and provider names only, never data. Only whether the routing key
    matches is said, not the key itself (it is input).
    """
    if routing_key is not None and outcome.provider != routing_key:
        return (
            "data.provider is not the routing key it was published with: a provider publishes "
            "only its own outcomes, with its own id as the routing key"
        )
    if referral is None:
        return (
            f"no referral {outcome.referral_id} was sent: check the provider's referral id "
            "(the referral's CloudEvent id)"
        )
    if referral.provider != outcome.provider:
        return (
            f"referral {outcome.referral_id} was sent to another provider, not {outcome.provider}"
        )
    return None


def decide_outcome(
    outcome: ReferralOutcome,
    recorded: RecordedOutcome | None,
    referral: SentReferralFacts,
    *,
    leaflet_issued: bool,
    received_at: datetime,
    calendar: WorkingDayCalendar,
) -> OutcomeEffect:
    """Record the outcome if it is newer than the one recorded; say whether it needs a leaflet.

    - Not newer by `at` (an equal `at` included: the first recorded stays) -> no effect at all.
    - `unable_to_contact` / `returned` -> a leaflet task, unless one for that reason was issued
      for the case and victim already, or the referral was withdrawn (the victim withdrew, or
      the case closed: the provider's news is about a referral that no longer stands).
      Due 1 working day after the outcome's `at`, or after its arrival if `at` lies ahead (a
      provider's clock must not give the officer longer).
    - `first_contacted_at` keeps the `at` of the first `contacted` recorded.
    """
    if recorded is not None and outcome.at <= recorded.at:
        return OutcomeEffect(
            result=OutcomeResult.OLDER,
            record=None,
            explanation=(
                f"outcome {outcome.outcome.value} at {outcome.at.isoformat()} is not newer than "
                f"the {recorded.outcome.value} recorded at {recorded.at.isoformat()}"
            ),
        )
    first_contacted = recorded.first_contacted_at if recorded is not None else None
    if first_contacted is None and outcome.outcome is ProviderOutcome.CONTACTED:
        first_contacted = outcome.at
    record = RecordedOutcome(
        outcome=outcome.outcome, at=outcome.at, first_contacted_at=first_contacted
    )
    reason = LEAFLET_REASONS.get(outcome.outcome)
    if reason is None:
        return OutcomeEffect(
            result=OutcomeResult.RECORDED,
            record=record,
            explanation=f"outcome {outcome.outcome.value} recorded",
        )
    if referral.withdrawn:
        return OutcomeEffect(
            result=OutcomeResult.RECORDED,
            record=record,
            explanation=(
                f"outcome {outcome.outcome.value} recorded; no leaflet task: referral "
                f"{referral.referral_id} was withdrawn"
            ),
        )
    if leaflet_issued:
        return OutcomeEffect(
            result=OutcomeResult.RECORDED,
            record=record,
            explanation=(
                f"outcome {outcome.outcome.value} recorded; the {reason} leaflet task was "
                "issued already"
            ),
        )
    due_by = calendar.add_working_days(min(outcome.at, received_at), OUTCOME_LEAFLET_WORKING_DAYS)
    return OutcomeEffect(
        result=OutcomeResult.RECORDED,
        record=record,
        leaflet_reason=reason,
        leaflet_due_by=due_by,
        explanation=(
            f"Provider {referral.provider} reported {outcome.outcome.value} for referral "
            f"{referral.referral_id}: the officer gives the leaflet instead, due by "
            f"{due_by.isoformat()}."
        ),
    )


@dataclass(frozen=True, slots=True)
class IssuedTask:
    """An officer task as the ledger holds it (`rb_tasks`)."""

    task_id: str
    kind: TaskKind
    reason: str
    case_ref: str
    due_by: datetime | None
    victim_id: str | None = None
    completed_at: datetime | None = None
    escalated_at: datetime | None = None


class CompletionResult(StrEnum):
    COMPLETED = "task_completed"
    #: Completed before (by this or another completion): the first completion stands.
    ALREADY_COMPLETED = "task_already_completed"


def decide_completion(task: IssuedTask, completion: TaskCompleted) -> CompletionResult:
    """A completion closes its task once; later ones, repeats or not, have no effect."""
    del completion  # every result closes the task: the officer did what the task asked
    if task.completed_at is not None:
        return CompletionResult.ALREADY_COMPLETED
    return CompletionResult.COMPLETED


def needs_escalation(task: IssuedTask, now: datetime) -> bool:
    """A leaflet or crime-review task still open at its due time, not yet escalated."""
    return (
        task.kind in ESCALATING_KINDS
        and task.due_by is not None
        and task.due_by <= now
        and task.completed_at is None
        and task.escalated_at is None
    )


def escalation_task(
    task: IssuedTask, escalation_id: str, officer: TaskOfficer, escalated_at: datetime
) -> EscalationTask:
    """`officer.task.escalation` for an overdue task, to the officer's unit (contract §5)."""
    if task.kind not in ESCALATING_KINDS or task.due_by is None:
        raise ValueError("only a leaflet or crime-review task with a due time escalates")
    return EscalationTask(
        task_id=escalation_id,
        escalates=task.task_id,
        task_kind=task.kind,
        reason=task.reason,
        case_ref=task.case_ref,
        officer=officer,
        due_by=task.due_by,
        escalated_at=escalated_at,
    )
