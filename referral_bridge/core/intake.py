"""The provider's web inbox decisions (issue 13), pure: a referral's state, how close its
deadline is, who may see which team, and when repeated failed sign-ins lock an account.

The web shell (`referral_bridge/intake`) reads the clock and the store and passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from referral_bridge.core.events import ProviderOutcome


class Role(StrEnum):
    """An intake worker sees the referrals of their teams; an administrator sees every team and
    the record of who opened what."""

    INTAKE = "intake"
    ADMIN = "admin"


class IntakeState(StrEnum):
    NEW = "new"
    ACCEPTED = "accepted"
    CONTACTED = "contacted"
    UNABLE_TO_CONTACT = "unable_to_contact"
    DECLINED_BY_VICTIM = "declined_by_victim"
    RETURNED = "returned"
    WITHDRAWN = "withdrawn"


#: How each state reads on a page.
STATE_LABELS: dict[IntakeState, str] = {
    IntakeState.NEW: "new",
    IntakeState.ACCEPTED: "accepted",
    IntakeState.CONTACTED: "contacted",
    IntakeState.UNABLE_TO_CONTACT: "unable to contact",
    IntakeState.DECLINED_BY_VICTIM: "declined by victim",
    IntakeState.RETURNED: "returned",
    IntakeState.WITHDRAWN: "withdrawn",
}

#: The outcomes a case worker can record, in the order the form offers them (contract §3).
OUTCOME_CHOICES: tuple[ProviderOutcome, ...] = tuple(ProviderOutcome)

#: Outcomes after which the deadline no longer matters: the victim has been dealt with.
_SETTLED = frozenset(
    {
        IntakeState.CONTACTED,
        IntakeState.UNABLE_TO_CONTACT,
        IntakeState.DECLINED_BY_VICTIM,
        IntakeState.RETURNED,
        IntakeState.WITHDRAWN,
    }
)


def state_of(outcome: str | None, withdrawn: bool) -> IntakeState:
    """Withdrawn wins over any outcome; no outcome yet is `new`."""
    if withdrawn:
        return IntakeState.WITHDRAWN
    if outcome is None:
        return IntakeState.NEW
    return IntakeState(outcome)


class Urgency(StrEnum):
    OVERDUE = "overdue"
    #: Within `SOON` of the deadline.
    SOON = "soon"
    LATER = "later"
    #: An outcome is recorded (or the referral was withdrawn): nothing is due.
    DONE = "done"
    UNKNOWN = "unknown"


#: Closer than this to the deadline, a referral is flagged as due soon.
SOON = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class Closeness:
    urgency: Urgency
    #: E.g. "due in 1 day 3 hours", "overdue by 2 hours", "done".
    text: str


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in ((days, "day"), (hours, "hour")) if n
    ]
    if not parts:
        parts = [f"{minutes} minute{'s' if minutes != 1 else ''}"]
    return " ".join(parts)


def closeness(deadline: datetime | None, now: datetime, state: IntakeState) -> Closeness:
    """How close the Victims' Code deadline is, as a case worker reads it."""
    if state in _SETTLED:
        return Closeness(Urgency.DONE, "done")
    if deadline is None:
        return Closeness(Urgency.UNKNOWN, "no deadline given")
    left = deadline - now
    if left < timedelta(0):
        return Closeness(Urgency.OVERDUE, f"overdue by {_span(-left)}")
    urgency = Urgency.SOON if left <= SOON else Urgency.LATER
    return Closeness(urgency, f"due in {_span(left)}")


def may_see(role: Role, teams: Iterable[str], service: str | None) -> bool:
    """An administrator sees every team; an intake worker only theirs (and nothing unteamed)."""
    if role is Role.ADMIN:
        return True
    return service is not None and service in set(teams)


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """`failures` failed sign-ins within `window` lock the account for `lock`."""

    failures: int = 5
    window: timedelta = timedelta(minutes=15)
    lock: timedelta = timedelta(minutes=15)


def locked_until(
    failed_at: Sequence[datetime], now: datetime, policy: LockoutPolicy
) -> datetime | None:
    """When an account locked by recent failures opens again, or None if it is not locked.

    The lock runs from the failure that reached the limit; failures older than the window do
    not count.
    """
    recent = sorted(at for at in failed_at if now - at <= policy.window + policy.lock)
    for index in range(len(recent) - policy.failures + 1):
        first, last = recent[index], recent[index + policy.failures - 1]
        if last - first <= policy.window and now < last + policy.lock:
            return last + policy.lock
    return None
