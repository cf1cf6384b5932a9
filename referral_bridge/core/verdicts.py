"""What the application says about one inbound message, independent of any broker library.

The service returns a Verdict; the transport's consumer carries it out (ack, dead-letter, or
requeue) in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from referral_bridge.core.events import DeadLetterReason

__all__ = ["Ack", "DeadLetter", "Handler", "InboundMessage", "Retry", "Verdict"]


@dataclass(frozen=True, kw_only=True)
class InboundMessage:
    """One message as delivered: the body exactly as published, never decoded by kombu."""

    body: bytes = field(repr=False)  # may hold personal data
    headers: dict[str, Any] = field(repr=False)
    routing_key: str
    redelivered: bool
    delivery_tag: Any
    #: Attempts at this message that already failed, as carried by its retry copies (so the
    #: same for every worker, and across restarts); 0 on its first delivery.
    attempts: int = 0


@dataclass(frozen=True)
class Ack:
    """Every effect of the message is durable: remove it from the queue."""


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """The message can never be processed: park its original bytes on the dead-letter queue."""

    reason: DeadLetterReason
    detail: str  # human-readable and free of personal data
    attempts: int


@dataclass(frozen=True)
class Retry:
    """A failure that may pass: deliver the message again after a delay, without waiting for it.

    `attempts` counts the failed attempts so far, this one included; None when this failure does
    not count towards the message's attempts (an outage, not the message's fault).
    """

    detail: str  # human-readable and free of personal data
    attempts: int | None = None


Verdict = Ack | DeadLetter | Retry
Handler = Callable[[InboundMessage], Verdict]
