# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these tests drive it directly.
"""AMQP delivery to a provider-facing broker (`broker_url`), against the real RabbitMQ.

The provider's broker here is the local RabbitMQ under a unique exchange name: the bridge must
declare only that exchange there, publish with confirms, and fail (transiently) when no queue
takes the message rather than see it silently dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from referral_bridge.delivery import AmqpRoute, ReferralsBrokerPublisher, TransientDeliveryError
from referral_bridge.ledger import OutboxMessage

pytestmark = pytest.mark.integration

PROVIDER = "lancashire-victim-services"


@pytest.fixture
def exchange_name(rabbitmq_url: str) -> Iterator[str]:
    name = f"rb-test-referrals-{uuid.uuid4().hex[:8]}"
    yield name
    with Connection(rabbitmq_url) as connection:
        connection.default_channel.exchange_delete(name)


def message(exchange: str, routing_key: str = PROVIDER) -> OutboxMessage:
    return OutboxMessage(
        message_id=str(uuid.uuid4()),
        event_id="e-1",
        kind="referral",
        exchange=exchange,
        routing_key=routing_key,
        headers={"x-rb-event-type": "victim.referral.created"},
        body=b'{"specversion":"1.0"}',
        provider=PROVIDER,
    )


def test_a_referral_reaches_the_providers_queue_on_its_own_broker(
    rabbitmq_url: str, exchange_name: str
) -> None:
    queue = Queue(
        f"{exchange_name}.{PROVIDER}",
        Exchange(exchange_name, type="topic", durable=True),
        routing_key=PROVIDER,
        auto_delete=True,
    )
    route = AmqpRoute(
        ReferralsBrokerPublisher(rabbitmq_url, exchange=exchange_name),
        name="amqp-provider",
        owns_publisher=True,
    )
    sent = message(exchange_name)
    try:
        with Connection(rabbitmq_url) as connection:
            bound = queue(connection.default_channel)
            bound.declare()
            route.deliver(sent)
            received = bound.get(no_ack=True)
            bound.delete()
    finally:
        route.close()

    assert received is not None
    body = received.body
    assert (body.encode() if isinstance(body, str) else body) == sent.body
    assert received.properties["message_id"] == sent.message_id
    assert received.properties["delivery_mode"] == 2


def test_a_referral_no_queue_takes_is_a_transient_failure(
    rabbitmq_url: str, exchange_name: str
) -> None:
    route = AmqpRoute(
        ReferralsBrokerPublisher(rabbitmq_url, exchange=exchange_name), owns_publisher=True
    )
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            route.deliver(message(exchange_name, routing_key="nobody-listens"))
    finally:
        route.close()

    assert caught.value.code == "publish_refused"


def test_an_unreachable_provider_broker_is_a_transient_failure(exchange_name: str) -> None:
    route = AmqpRoute(
        ReferralsBrokerPublisher("amqp://guest:guest@127.0.0.1:1//", exchange=exchange_name),
        owns_publisher=True,
    )
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            route.deliver(message(exchange_name))
    finally:
        route.close()

    assert caught.value.code == "broker_unavailable"
