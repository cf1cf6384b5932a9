"""The transport's error tree: every broker failure the rest of the bridge may see.

Library exceptions (py-amqp, kombu, OS errors) are translated into these at the edge, so callers
catch one family and operators read one kind of message. Messages name exchanges, queues and
routing keys only: never message bodies, which may hold victims' personal data.
"""

from __future__ import annotations


class TransportError(Exception):
    """Raised when the message broker cannot do what the bridge asked of it."""


class TransportConfigError(TransportError):
    """Raised when the configured broker URL names a transport the bridge does not support."""


class BrokerUnavailableError(TransportError):
    """Raised when the broker stays unreachable after the bounded reconnection attempts."""


class TopologyError(TransportError):
    """Raised when exchanges or queues cannot be declared, e.g. they exist with other settings."""


class PublishError(TransportError):
    """Raised when the broker refused, nacked, or could not route a message the bridge published.

    The message must be treated as not sent: the caller keeps it (outbox, unacked inbound message)
    and tries again later or parks it.
    """


class QueueNotFoundError(TransportError):
    """Raised when a queue asked about does not exist on the broker."""
