"""What processing one event came to: done (`Handled`), or about nothing the bridge sent."""

from __future__ import annotations

from dataclasses import dataclass

from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import DeadLetterReason


class UnknownReferenceError(Exception):
    """An outcome or completion about something the bridge never sent: dead-lettered with
    `reason` (`unknown_referral`, `unknown_task`). `detail` holds ids only, no personal data."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Handled:
    """What processing one event did, for logs and tests."""

    result: str
    matter_ref: str | None
    decisions: tuple[Decision, ...] = ()
