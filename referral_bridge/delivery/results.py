"""What came of one attempt at a message, and what one delivery pass did."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Result(StrEnum):
    """What came of one attempt at one outbox row."""

    DELIVERED = "delivered"
    PARKED = "parked"
    REJECTED = "rejected"
    WAITING = "waiting"
    CIRCUIT_OPEN = "circuit_open"
    #: Another worker claimed the row first (or it was cancelled meanwhile): not ours to send.
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    #: Something other than a delivery error went wrong with this row (logged); tried next pass.
    FAILED = "failed"


@dataclass
class PassReport:
    """What one delivery pass did, by result."""

    counts: dict[Result, int] = field(default_factory=dict)
    fallbacks: int = 0

    def add(self, result: Result) -> None:
        self.counts[result] = self.counts.get(result, 0) + 1

    def add_counts(self, other: PassReport) -> None:
        """Count in what a follow-up pass (the fallback tasks' own) did."""
        for result, count in other.counts.items():
            self.counts[result] = self.counts.get(result, 0) + count

    @property
    def delivered(self) -> int:
        return self.counts.get(Result.DELIVERED, 0)
