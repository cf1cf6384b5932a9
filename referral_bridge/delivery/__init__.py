"""Getting outbox messages to providers and officers: routes, retries, parking and fallbacks.

Delivery runs from the ledger's outbox, so a restart loses nothing. Each provider has a route
(AMQP on the force broker or its own, or HTTPS); a failed attempt is retried briefly in place,
then parked with a growing backoff while other work flows on; a circuit breaker per provider
stops hammering one that is down; a rejection or a passed deadline issues a leaflet task.
"""

from referral_bridge.delivery.amqp import AmqpRoute, OutboxPublisher, ReferralsBrokerPublisher
from referral_bridge.delivery.circuit import CircuitBreaker, CircuitState
from referral_bridge.delivery.engine import DeliveryEngine
from referral_bridge.delivery.errors import (
    DeliveryError,
    DeliveryRejectedError,
    TransientDeliveryError,
)
from referral_bridge.delivery.fallbacks import (
    FALLBACK_EVENT,
    REASON_REJECTED,
    REASON_UNREACHABLE,
    FallbackIssuer,
)
from referral_bridge.delivery.https import HttpsRoute
from referral_bridge.delivery.policy import DeliveryPolicy, park_delay
from referral_bridge.delivery.results import PassReport
from referral_bridge.delivery.routes import Route

__all__ = [
    "FALLBACK_EVENT",
    "REASON_REJECTED",
    "REASON_UNREACHABLE",
    "AmqpRoute",
    "CircuitBreaker",
    "CircuitState",
    "DeliveryEngine",
    "DeliveryError",
    "DeliveryPolicy",
    "DeliveryRejectedError",
    "FallbackIssuer",
    "HttpsRoute",
    "OutboxPublisher",
    "PassReport",
    "ReferralsBrokerPublisher",
    "Route",
    "TransientDeliveryError",
    "park_delay",
]
