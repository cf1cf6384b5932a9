"""The port every delivery route implements."""

from __future__ import annotations

from typing import Protocol

from referral_bridge.ledger import OutboxMessage


class Route(Protocol):
    """Hands one outbox message to its receiver; raises a DeliveryError subclass if it cannot.

    Returning means the receiver has the message (a broker confirm, an HTTP 2xx or 409).
    """

    #: For logs: e.g. "amqp-force", "amqp-provider", "https".
    name: str
    #: For the audit record: "amqp" or "https".
    audit_route: str

    def deliver(self, message: OutboxMessage) -> None: ...

    def close(self) -> None: ...
