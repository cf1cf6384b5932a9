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
    """A transient failure: put the message back to be delivered again later."""

    detail: str


Verdict = Ack | DeadLetter | Retry
Handler = Callable[[InboundMessage], Verdict]
