# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""AMQP delivery: to the referrals exchange (provider id as routing key) with publisher confirms.

On the force broker the bridge's own Publisher is used. A provider may instead take referrals on
a broker of its own (`broker_url`): ReferralsBrokerPublisher talks to that broker and declares
only the referrals exchange there, never the bridge's inbound queues.

Over `amqps://` the provider broker's certificate must chain to `ca_bundle` (or the system CAs)
and name the URL's host. py-amqp takes no SSLContext object: given ``ssl={"context": {...}}`` it
builds one with ``ssl.create_default_context(**options)`` (CERT_REQUIRED) and sets its
``check_hostname`` from the same dict, then wraps the socket with the other items
(``server_hostname``). Plain ``ssl=True`` would verify no host name at all.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from amqp.exceptions import MessageNacked
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.exceptions import OperationalError
from kombu.messaging import Producer

from referral_bridge.delivery.errors import DeliveryError, TransientDeliveryError
from referral_bridge.display import mask_url
from referral_bridge.ledger import OutboxMessage
from referral_bridge.transport.errors import (
    BrokerUnavailableError,
    PublishError,
    TransportError,
)
from referral_bridge.transport.publisher import Outgoing
from referral_bridge.wire import CLOUDEVENTS_JSON

log = structlog.get_logger("referral_bridge.delivery.amqp")

PERSISTENT = 2


class OutboxPublisher(Protocol):
    """Publishes one message and returns only once the broker has it (confirms where supported)."""

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str,
        content_type: str,
        mandatory: bool = False,
    ) -> None: ...


class AmqpRoute:
    """Delivers by publishing to the message's exchange and routing key, mandatory and confirmed.

    A message no queue receives fails (mandatory) rather than being confirmed and dropped. Every
    broker failure is transient: the broker or the provider's queue may come back.
    """

    audit_route = "amqp"

    def __init__(
        self, publisher: OutboxPublisher, *, name: str = "amqp-force", owns_publisher: bool = False
    ) -> None:
        self.name = name
        self._publisher = publisher
        self._owns = owns_publisher
        #: The longest one attempt can take, if the publisher says (for the pass budget).
        self.max_attempt_seconds: float | None = getattr(publisher, "max_attempt_seconds", None)
        #: Whether the publisher can publish a window with one wait for all confirms (the
        #: force broker's Publisher); the delivery engine then sends a batch's rows together.
        self.windowed = callable(getattr(publisher, "publish_window", None))

    def deliver(self, message: OutboxMessage) -> None:
        try:
            self._publisher.publish(
                exchange=message.exchange,
                routing_key=message.routing_key,
                body=message.body,
                headers=message.headers,
                message_id=message.message_id,
                content_type=CLOUDEVENTS_JSON,
                mandatory=True,
            )
        except TransportError as exc:
            raise self._delivery_error(exc, message) from exc

    def deliver_window(self, messages: Sequence[OutboxMessage]) -> list[DeliveryError | None]:
        """Publish all, then wait for all confirms (when the publisher can): one round trip.

        One entry per message: None once the broker has it, else why not. A publisher without
        windows (a provider's own broker) publishes one message at a time.
        """
        window = getattr(self._publisher, "publish_window", None)
        if window is None:
            results: list[DeliveryError | None] = []
            for message in messages:
                try:
                    self.deliver(message)
                except DeliveryError as exc:
                    results.append(exc)
                else:
                    results.append(None)
            return results
        outcomes: list[TransportError | None] = window(
            [
                Outgoing(
                    exchange=m.exchange,
                    routing_key=m.routing_key,
                    body=m.body,
                    headers=m.headers,
                    message_id=m.message_id,
                    mandatory=True,
                )
                for m in messages
            ]
        )
        return [
            None if error is None else self._delivery_error(error, message)
            for message, error in zip(messages, outcomes, strict=True)
        ]

    def _delivery_error(self, exc: TransportError, message: OutboxMessage) -> DeliveryError:
        """Every broker failure is transient: the broker or the provider's queue may come back."""
        if isinstance(exc, BrokerUnavailableError):
            return TransientDeliveryError(
                "broker_unavailable", f"{self.name}: broker unreachable ({type(exc).__name__})"
            )
        if isinstance(exc, PublishError):
            return TransientDeliveryError(
                "publish_refused",
                f"{self.name}: the broker refused, nacked or could not route the message to "
                f"{message.exchange!r} / {message.routing_key!r}",
                maybe_delivered=False,
            )
        return TransientDeliveryError("broker_error", f"{self.name}: {type(exc).__name__}")

    def close(self) -> None:
        if self._owns:
            close = getattr(self._publisher, "close", None)
            if callable(close):
                close()


class ReferralsBrokerPublisher:
    """Publishes to a provider-facing RabbitMQ with confirms; declares only the referrals exchange.

    Publishes are serialised by a lock. A lost connection is dropped and re-opened on the next
    publish: the delivery engine's retries and parking do the waiting, not this class.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str,
        confirm_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ca_bundle: Path | None = None,
    ) -> None:
        self._url = url
        self._ssl = tls_options(url, ca_bundle=ca_bundle)
        self._connect_timeout = connect_timeout
        #: The longest one publish may take (connect + confirm), for the engine's pass budget.
        self.max_attempt_seconds = connect_timeout + confirm_timeout
        self._exchange = Exchange(
            exchange, type="topic", durable=True, auto_delete=False, delivery_mode=PERSISTENT
        )
        self._confirm_timeout = confirm_timeout
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._returned: list[str] = []

    @property
    def display_url(self) -> str:
        return mask_url(self._url)

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str,
        content_type: str,
        mandatory: bool = False,
    ) -> None:
        with self._lock:
            connection = self._connection or Connection(
                self._url,
                transport_options={"confirm_publish": True},
                connect_timeout=self._connect_timeout,
                ssl=self._ssl,
            )
            try:
                producer = self._ensure_producer(connection)
                self._returned.clear()
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=dict(headers),
                    content_type=content_type,
                    content_encoding="utf-8",
                    delivery_mode=PERSISTENT,
                    mandatory=mandatory,
                    confirm_timeout=self._confirm_timeout,
                    message_id=message_id,
                )
            except MessageNacked as exc:
                self._drop(connection)
                raise PublishError(
                    f"the provider broker nacked a message for {exchange!r} / {routing_key!r}"
                ) from exc
            except connection.channel_errors as exc:
                self._drop(connection)
                raise PublishError(
                    f"the provider broker refused a message for {exchange!r} / {routing_key!r}: "
                    f"{type(exc).__name__}; check the exchange and the bridge's permissions there"
                ) from exc
            except (OperationalError, OSError, *connection.connection_errors) as exc:
                self._drop(connection)
                raise BrokerUnavailableError(
                    f"provider broker at {self.display_url} unreachable ({type(exc).__name__})"
                ) from exc
            if self._returned:
                raise PublishError(
                    f"no queue on the provider broker receives {exchange!r} / {routing_key!r}; "
                    "the provider must declare and bind its queue"
                )

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._drop(self._connection)

    def _ensure_producer(self, connection: Connection) -> Producer:
        if self._producer is not None and connection is self._connection:
            return self._producer
        self._connection = connection
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        # Without a handler py-amqp raises from inside the confirm wait and loses the ack.
        channel.events["basic_return"].add(self._on_return)
        self._exchange.declare(channel=channel)
        self._producer = Producer(channel, auto_declare=False)
        return self._producer

    def _on_return(self, exc: Exception, _exchange: str, _routing_key: str, _message: Any) -> None:
        self._returned.append(type(exc).__name__)

    def _drop(self, connection: Connection) -> None:
        self._connection = None
        self._producer = None
        connection.collect()


def tls_options(url: str, *, ca_bundle: Path | None = None) -> dict[str, Any] | bool:
    """kombu/py-amqp `ssl` options for `url`: for amqps, certificate and host name verified.

    False for plain amqp (settings allow it only on loopback).
    """
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return False
    context: dict[str, Any] = {"check_hostname": True}
    if ca_bundle is not None:
        context["cafile"] = str(ca_bundle)
    # kombu would fill a None server_hostname from the URL, but turns "localhost" into
    # "127.0.0.1" first; name the host ourselves so the certificate is checked against it.
    return {"context": context, "server_hostname": parts.hostname}
