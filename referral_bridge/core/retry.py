"""When a message whose processing failed is tried again, and when it has had its attempts.

The count travels on the message itself (the transport's attempts header on each retry copy),
so every worker sees the same count and a restart forgets nothing. These functions only compute;
the transport reads and writes the headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

#: A count larger than this in a header is not ours (nor plausible): it is read as this.
_MOST_ATTEMPTS = 10_000


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How many attempts a message gets, and how long it waits between them.

    The wait doubles with each failed attempt, from `first_delay` up to `longest_delay`.
    """

    max_attempts: int
    first_delay: timedelta
    longest_delay: timedelta

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.first_delay <= timedelta(0) or self.longest_delay < self.first_delay:
            raise ValueError("need 0 < first_delay <= longest_delay")

    def exhausted(self, attempts: int) -> bool:
        """Whether `attempts` failed attempts are all the message gets."""
        return attempts >= self.max_attempts

    def delay(self, attempts: int) -> timedelta:
        """How long to wait before the next attempt after `attempts` failed ones.

        A retry that was not counted (0 attempts, e.g. the ledger was down) waits the first delay.
        """
        doublings = min(max(attempts, 1) - 1, 32)
        return min(self.first_delay * (1 << doublings), self.longest_delay)


def attempts_carried(value: object) -> int:
    """The failed attempts a message's attempts header says it has had; 0 if none or unusable.

    An unusable value never strands a message: it just starts counting afresh.
    """
    if isinstance(value, bool):
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        return 0
    return min(max(value, 0), _MOST_ATTEMPTS)


def parse_not_before(value: object) -> datetime | None:
    """The moment a retry copy's not-before header names, or None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def is_due(not_before: datetime | None, now: datetime) -> bool:
    """Whether a retry copy may be tried now; one with no readable time always may."""
    return not_before is None or not_before <= now
