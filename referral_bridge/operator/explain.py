"""`rules explain`: each victim's decisions for an event, the rule and why; no personal data.

With earlier events of the same matter (`--after`), those are decided and carried out first, in
the order given, so the explanation shows what a change does to a victim already referred (an
update, a withdrawal, a referral made again).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import (
    ConsentUpdated,
    CrimeRecorded,
    InboundEvent,
    IncidentRecorded,
    ReferralOutcome,
    TaskCompleted,
)
from referral_bridge.core.history import EMPTY_HISTORY, ConsentRecord, VictimHistory
from referral_bridge.core.outcomes import LEAFLET_REASONS
from referral_bridge.core.parsing import InvalidMessage, parse_inbound
from referral_bridge.core.policy import Policy
from referral_bridge.core.replay import carry_out
from referral_bridge.core.review import review_at


class _Matter:
    """The matter as a ledger would hold it after each event: latest snapshots and history."""

    def __init__(self, policy: Policy, at: datetime) -> None:
        self.policy, self.at = policy, at
        self.crime: CaseSnapshot | None = None
        self.incident: CaseSnapshot | None = None
        self.history: dict[str, VictimHistory] = {}

    def apply(self, event: InboundEvent) -> tuple[CaseSnapshot | None, tuple[Decision, ...]]:
        data = event.data
        if isinstance(data, ConsentUpdated):
            record = ConsentRecord(
                referral=data.referral,
                recorded_at=data.recorded_at,
                recorded_by=data.recorded_by,
                lawful_basis=data.lawful_basis,
            )
            past = self.history.get(data.victim_id, EMPTY_HISTORY)
            self.history[data.victim_id] = past.model_copy(update={"consent": record})
        elif isinstance(data, CrimeRecorded):
            self.crime = CaseSnapshot.from_crime(data)
        elif isinstance(data, IncidentRecorded):
            self.incident = CaseSnapshot.from_incident(data)
        else:  # an outcome or a completion: about a referral or task, not the case
            return None, ()
        # The crime decides for the matter once there is one (rules.md "Case").
        case = self.crime or self.incident
        if case is None:
            return None, ()
        decisions = decide(case, self.history, self.policy, self.at, WorkingDayCalendar())
        self.history = carry_out(self.history, decisions, self.at)
        return case, decisions


def explain_event(
    raw: bytes,
    *,
    policy_path: Path,
    now: datetime | None,
    out: TextIO,
    after: Sequence[bytes] = (),
) -> int:
    """Print the decisions for an event, after carrying out those of `after` (oldest first)."""
    from referral_bridge.bootstrap import load_policy

    policy = load_policy(policy_path)
    at = now or datetime.now(UTC)
    matter = _Matter(policy, at)
    events: list[InboundEvent] = []
    for number, body in enumerate([*after, raw], start=1):
        try:
            events.append(parse_inbound(body))
        except InvalidMessage as exc:
            which = "the event" if number == len(after) + 1 else f"earlier event {number}"
            print(f"{which} is not valid: {exc.reason.value}: {exc.detail}", file=out)
            return 1
    *earlier, event = events
    if isinstance(event.data, ReferralOutcome | TaskCompleted):
        print(f"{_loop_summary(event.data)}; no rule applies to it", file=out)
        return 0
    for previous in earlier:
        matter.apply(previous)
    if earlier:
        print(f"after {len(earlier)} earlier event(s) of the matter, carried out", file=out)
    case, decisions = matter.apply(event)
    data = event.data
    if case is None:
        assert isinstance(data, ConsentUpdated)
        print(
            f"consent.updated: case {data.case_ref}, victim {data.victim_id}: "
            f"{data.referral.value}; the case is decided again with this consent when it is known",
            file=out,
        )
        return 0
    print(
        f"{case.kind.value} {case.case_ref} v{case.version}, category {case.category}, "
        f"decided as at {at.isoformat()} with policy {policy_path}",
        file=out,
    )
    for decision in decisions:
        _print(decision, out)
    check_at = review_at(case, policy)
    if check_at is not None:
        print(
            f"  crime data integrity: a crime was disclosed; if none is recorded from "
            f"{case.case_ref} by {check_at.isoformat()}, the force crime registrar gets an "
            "officer.task.crime_review (crime_not_recorded)",
            file=out,
        )
    return 0


def _loop_summary(data: ReferralOutcome | TaskCompleted) -> str:
    """What the worker does with an outcome or a completion (rules.md "closing the loop")."""
    if isinstance(data, TaskCompleted):
        return (
            f"task.completed: task {data.task_id} ({data.result.value}) closes that task, "
            "if the bridge issued it"
        )
    reason = LEAFLET_REASONS.get(data.outcome)
    then = (
        f"a leaflet task ({reason}) due 1 working day after it"
        if reason
        else "recorded against the referral only"
    )
    return (
        f"victim.referral.outcome: {data.outcome.value} from {data.provider} for referral "
        f"{data.referral_id}: {then}"
    )


def _print(decision: Decision, out: TextIO) -> None:
    target = (
        f" -> {decision.provider}/{decision.service}"
        if decision.service
        else (f" -> {decision.provider}" if decision.provider else "")
    )
    when = ""
    if decision.deadline:
        when = f", deadline {decision.deadline.isoformat()}"
        if decision.late:
            when += " (late)"
    elif decision.due_by:
        when = f", due by {decision.due_by.isoformat()}"
    elif decision.hold_until:
        when = f", hold until {decision.hold_until.isoformat()}"
    print(
        f"  victim {decision.victim_id}: {decision.outcome.value.upper()} "
        f"({decision.reason}){target}{when}",
        file=out,
    )
    print(f"    rule {decision.rule} [{decision.regime}]: {decision.explanation}", file=out)
