"""The port every delivery route implements, and the key a message's receiver goes by."""

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


#: The receiver of messages without a provider (officers' tasks on the force broker), as its
#: circuit and its metrics label know it.
TASKS_KEY = "officer-tasks"


def receiver_key(provider: str | None) -> str:
    """A message's receiver as circuits, metrics and logs know it: its provider, or the tasks'."""
    return provider or TASKS_KEY
