"""The kombu transport: topology, a consumer that settles messages in one place, publishing.

Business logic lives elsewhere: the consumer hands raw bytes to an injected handler and carries
out the verdict it returns.
"""

from referral_bridge.core.verdicts import Ack, DeadLetter, Handler, InboundMessage, Retry, Verdict
from referral_bridge.transport.consumer import Consumer
from referral_bridge.transport.embedded import BrokerSpec, broker_spec, embedded_broker_spec
from referral_bridge.transport.errors import (
    BrokerUnavailableError,
    PublishError,
    QueueNotFoundError,
    TopologyError,
    TransportConfigError,
    TransportError,
)
from referral_bridge.transport.publisher import Publisher
from referral_bridge.transport.topology import Topology, declare, queue_depth

__all__ = [
    "Ack",
    "BrokerSpec",
    "BrokerUnavailableError",
    "Consumer",
    "DeadLetter",
    "Handler",
    "InboundMessage",
    "PublishError",
    "Publisher",
    "QueueNotFoundError",
    "Retry",
    "Topology",
    "TopologyError",
    "TransportConfigError",
    "TransportError",
    "Verdict",
    "broker_spec",
    "declare",
    "embedded_broker_spec",
    "queue_depth",
]
