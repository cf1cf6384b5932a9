"""`rules explain`: each victim's decision for an event, the rule and why; no personal data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decide import decide
from referral_bridge.core.events import ConsentUpdated, CrimeRecorded
from referral_bridge.core.parsing import InvalidMessage, parse_inbound


def explain_event(raw: bytes, *, policy_path: Path, now: datetime | None, out: TextIO) -> int:
    """Print the decisions for a case event as if nothing had been done for it yet."""
    from referral_bridge.bootstrap import load_policy

    policy = load_policy(policy_path)
    try:
        event = parse_inbound(raw)
    except InvalidMessage as exc:
        print(f"not a valid event: {exc.reason.value}: {exc.detail}", file=out)
        return 1
    data = event.data
    if isinstance(data, ConsentUpdated):
        print(
            f"consent.updated: case {data.case_ref}, victim {data.victim_id}: "
            f"{data.referral.value}; the case is decided again with this consent when it is known",
            file=out,
        )
        return 0
    case = (
        CaseSnapshot.from_crime(data)
        if isinstance(data, CrimeRecorded)
        else CaseSnapshot.from_incident(data)
    )
    at = now or datetime.now(UTC)
    print(
        f"{case.kind.value} {case.case_ref} v{case.version}, category {case.category}, "
        f"decided as at {at.isoformat()} with policy {policy_path}",
        file=out,
    )
    for decision in decide(case, {}, policy, at, WorkingDayCalendar()):
        target = (
            f" -> {decision.provider}/{decision.service}"
            if decision.service
            else (f" -> {decision.provider}" if decision.provider else "")
        )
        when = ""
        if decision.deadline:
            when = f", deadline {decision.deadline.isoformat()}"
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
    return 0
