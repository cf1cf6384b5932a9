"""Crime data integrity (rules.md): a crime disclosed in an incident must be recorded as one."""

from __future__ import annotations

from datetime import datetime, timedelta

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.events import CaseKind
from referral_bridge.core.policy import Policy


def review_at(incident: CaseSnapshot, policy: Policy) -> datetime | None:
    """When to check that a crime was recorded from this incident; None if there is no need.

    Only an incident where a crime was disclosed and no crime is linked needs a check.
    """
    if incident.kind is not CaseKind.INCIDENT or not incident.crime_disclosed:
        return None
    if incident.linked_refs:
        return None
    return incident.reported_at + timedelta(hours=policy.crime_recording.review_after_hours)


def review_due_by(raised_at: datetime, policy: Policy, calendar: WorkingDayCalendar) -> datetime:
    """When the crime registrar must have reviewed it."""
    return calendar.add_working_days(raised_at, policy.crime_recording.review_due_working_days)
