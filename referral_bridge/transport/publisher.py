# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""Publishing raw bytes, persistently, and on AMQP only counted as sent once the broker confirms.

Long on purpose: one channel's state: the connection, the confirm window and returned messages are
one state machine, and splitting it would share that state across modules.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog
from amqp import spec
from amqp.exceptions import MessageNacked
from kombu.connection import Connection
from kombu.exceptions import OperationalError
from kombu.messaging import Producer
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import BrokerUnavailableError, PublishError, TransportError
from referral_bridge.transport.topology import Topology, declare
from referral_bridge.wire import CLOUDEVENTS_JSON, OCTET_STREAM, ORIGINAL_ROUTING_KEY_HEADER

log = structlog.get_logger(__name__)

PERSISTENT = 2

HeaderValue = str | int


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """One message of a window published with `Publisher.publish_window`."""

    exchange: str
    routing_key: str
    body: bytes = field(repr=False)
    headers: Mapping[str, Any]
    message_id: str
    content_type: str = CLOUDEVENTS_JSON
    mandatory: bool = False


class _ConnectionLostError(Exception):
    """Internal: the connection broke during a publish; the publish is retried on a new one."""


class Publisher:
    """Publishes messages on a connection of its own, never on the consumer's.

    With py-amqp, waiting for a confirm on the consuming connection reads frames for that
    connection, which can deliver the next inbound message re-entrantly inside the handler of the
    current one. A separate connection keeps publishing and consuming apart.

    On RabbitMQ every publish waits for the broker's confirm, so returning means the broker has the
    message; a nack, a channel error (e.g. the exchange does not exist) or an unroutable mandatory
    message raises PublishError. Connection failures are retried a bounded number of times with
    exponential backoff and jitter on a fresh connection, then raise BrokerUnavailableError. A
    publish retried after a lost confirm may reach the broker twice: consumers must be idempotent
    (the contract's deterministic ids make them so).

    On the embedded broker there are no confirms: returning means the message file was written.

    Publishes are serialised by an internal lock, so one instance per process can be shared.
    """

    def __init__(
        self,
        spec: BrokerSpec,
        topology: Topology,
        *,
        confirm_timeout: float = 30.0,
        retry_attempts: int = 5,
        retry_max_wait: float = 10.0,
        declare_topology: bool = True,
    ) -> None:
        """`declare_topology=False` for a publisher that may only publish (a provider's broker
        account): the exchanges must then exist already (the bridge declares them)."""
        self._spec = spec
        self._declare_topology = declare_topology
        self._topology = topology
        self._confirm_timeout = confirm_timeout
        self._retry_attempts = retry_attempts
        self._retry_max_wait = retry_max_wait
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._returned: list[str] = []
        #: Messages published on the current channel since confirm mode began (RabbitMQ numbers
        #: its confirms by this), and the window's outcomes by that number: False while
        #: unconfirmed, True once acked, "nack" once nacked.
        self._published = 0
        self._window: dict[int, str | bool] = {}
        self._returned_ids: set[str] = set()

    @property
    def topology(self) -> Topology:
        return self._topology

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        content_type: str = CLOUDEVENTS_JSON,
        content_encoding: str = "utf-8",
        mandatory: bool = False,
        expiration: float | None = None,
    ) -> None:
        """Publish `body` unchanged as a persistent message; return once the broker has it.

        `mandatory` makes a message that no queue receives fail with PublishError (AMQP only)
        instead of vanishing. `expiration` is a per-message TTL in seconds (AMQP only).
        Raises PublishError or BrokerUnavailableError.
        """
        properties: dict[str, Any] = {}
        if message_id is not None:
            properties["message_id"] = message_id
        if expiration is not None and not self._spec.embedded:
            properties["expiration"] = expiration
        with self._lock:
            retrying = Retrying(
                stop=stop_after_attempt(self._retry_attempts),
                wait=wait_exponential_jitter(multiplier=0.2, max=self._retry_max_wait, jitter=0.5),
                retry=retry_if_exception_type(_ConnectionLostError),
                reraise=True,
            )
            try:
                for attempt in retrying:
                    with attempt:
                        self._publish_once(
                            exchange=exchange,
                            routing_key=routing_key,
                            body=body,
                            headers=dict(headers or {}),
                            content_type=content_type,
                            content_encoding=content_encoding,
                            mandatory=mandatory,
                            properties=properties,
                        )
            except _ConnectionLostError as exc:
                raise BrokerUnavailableError(
                    f"could not publish to exchange {exchange!r}: broker at "
                    f"{self._spec.display_url} unreachable after {self._retry_attempts} attempts "
                    f"({exc.__cause__!r}); check that it is running and reachable"
                ) from exc.__cause__

    def publish_window(self, messages: Sequence[Outgoing]) -> list[TransportError | None]:
        """Publish every message, then wait for all their confirms: one round trip per window.

        Returns one entry per message: None once the broker confirmed it, else the error for
        that message (PublishError: nacked, refused or unroutable; BrokerUnavailableError: the
        connection went or the confirms did not come in time, so it may or may not be stored).
        Nothing is retried here: the caller publishes what failed again on its own (`publish`),
        which retries, so one bad message never fails the window. The embedded broker has no
        confirms: there each message is simply published in turn.
        """
        if not self._spec.supports_confirms:
            results: list[TransportError | None] = []
            for message in messages:
                try:
                    self.publish(
                        exchange=message.exchange,
                        routing_key=message.routing_key,
                        body=message.body,
                        headers=message.headers,
                        message_id=message.message_id,
                        content_type=message.content_type,
                        mandatory=message.mandatory,
                    )
                except TransportError as exc:
                    results.append(exc)
                else:
                    results.append(None)
            return results
        if not messages:
            return []
        with self._lock:
            return self._publish_window_once(messages)

    def _publish_window_once(self, messages: Sequence[Outgoing]) -> list[TransportError | None]:
        connection = self._connection or self._spec.connection()
        sequence: list[int] = []
        try:
            self._ensure_producer(connection)
            channel = self._channel
            if not channel._confirm_selected:
                # py-amqp selects confirm mode lazily, on the first confirmed publish.
                channel._confirm_selected = True
                channel.confirm_select()
            self._returned_ids.clear()
            self._window.clear()
            for message in messages:
                prepared = channel.prepare_message(
                    message.body,
                    0,
                    message.content_type,
                    "utf-8",
                    dict(message.headers),
                    {"delivery_mode": PERSISTENT, "message_id": message.message_id},
                )
                # The plain publish: py-amqp's confirmed one waits for each confirm in turn.
                channel._basic_publish(
                    prepared,
                    exchange=message.exchange,
                    routing_key=message.routing_key,
                    mandatory=message.mandatory,
                )
                self._published += 1
                sequence.append(self._published)
                self._window[self._published] = False
            deadline = time.monotonic() + self._confirm_timeout
            while any(self._window[number] is False for number in sequence):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("publisher confirms did not arrive in time")
                channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=remaining)
        except connection.channel_errors as exc:
            self._drop_channel()
            return self._window_results(messages, sequence, PublishError, str(exc))
        except (TimeoutError, OperationalError, *connection.connection_errors) as exc:
            log.warning("transport.publish_connection_lost", error_type=type(exc).__name__)
            self._drop_connection(connection)
            return self._window_results(messages, sequence, BrokerUnavailableError, str(exc))
        return self._window_results(messages, sequence, BrokerUnavailableError, "")

    def _window_results(
        self,
        messages: Sequence[Outgoing],
        sequence: list[int],
        unconfirmed: type[TransportError],
        cause: str,
    ) -> list[TransportError | None]:
        results: list[TransportError | None] = []
        for index, message in enumerate(messages):
            state = self._window.get(sequence[index]) if index < len(sequence) else False
            where = f"exchange {message.exchange!r} routing key {message.routing_key!r}"
            if state == "nack":
                results.append(PublishError(f"the broker nacked a message for {where}"))
            elif state is True and message.message_id in self._returned_ids:
                results.append(PublishError(f"no queue receives messages sent to {where}"))
            elif state is True:
                results.append(None)
            else:
                results.append(
                    unconfirmed(f"no confirm for a message to {where} ({cause or 'no answer'})")
                )
        self._window.clear()
        return results

    def _on_confirm(self, outcome: str | bool, delivery_tag: int, multiple: bool) -> None:
        for number, state in self._window.items():
            if state is False and (number <= delivery_tag if multiple else number == delivery_tag):
                self._window[number] = outcome

    def publish_dead_letter(
        self,
        body: bytes,
        headers: Mapping[str, HeaderValue],
        original_routing_key: str,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Put the original bytes, unchanged, on the dead-letter queue with the x-rb-* headers.

        Goes through the default exchange straight to the queue, and as mandatory so that a
        missing dead-letter queue is an error rather than a lost message.
        """
        self.publish(
            exchange="",
            routing_key=self._topology.dead_letter_queue,
            body=body,
            headers={**headers, ORIGINAL_ROUTING_KEY_HEADER: original_routing_key},
            message_id=message_id,
            content_type=content_type or OCTET_STREAM,
            content_encoding=content_encoding or "binary",
            mandatory=True,
        )

    def publish_retry(
        self,
        body: bytes,
        headers: Mapping[str, Any],
        *,
        delay_seconds: float,
        content_type: str | None = None,
        content_encoding: str | None = None,
        message_id: str | None = None,
    ) -> None:
        """Put a copy of a failed message, original bytes unchanged, on the retry queue.

        On RabbitMQ it expires after `delay_seconds` back into the work queue; the embedded
        broker has no TTL, so there the consumer moves it back (see transport.retry). Mandatory,
        so that a missing retry queue is an error rather than a lost message.
        """
        self.publish(
            exchange="",
            routing_key=self._topology.retry_queue,
            body=body,
            headers=headers,
            message_id=message_id,
            content_type=content_type or OCTET_STREAM,
            content_encoding=content_encoding or "binary",
            mandatory=True,
            expiration=delay_seconds,
        )

    def publish_inbound(
        self,
        body: bytes,
        routing_key: str,
        *,
        message_id: str | None = None,
        content_type: str = CLOUDEVENTS_JSON,
        exchange: str | None = None,
    ) -> None:
        """Publish an inbound event as the police systems (or a provider) would.

        On AMQP it goes to `exchange` (default: the inbound exchange) with `routing_key`. On the
        embedded broker it is written straight into the work queue with the routing key in a
        header, because there the topic bindings are known only to the process that declared
        them.
        """
        if self._spec.embedded:
            self.publish(
                exchange="",
                routing_key=self._topology.work_queue,
                body=body,
                headers={ORIGINAL_ROUTING_KEY_HEADER: routing_key},
                message_id=message_id,
                content_type=content_type,
            )
            return
        self.publish(
            exchange=exchange or self._topology.inbound_exchange,
            routing_key=routing_key,
            body=body,
            message_id=message_id,
            content_type=content_type,
            mandatory=True,
        )

    def close(self) -> None:
        """Close the publishing connection; a later publish opens a new one."""
        with self._lock:
            connection, self._connection = self._connection, None
            self._channel = self._producer = None
            if connection is not None:
                connection.release()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _publish_once(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        content_type: str,
        content_encoding: str,
        mandatory: bool,
        properties: dict[str, Any],
    ) -> None:
        connection = self._connection or self._spec.connection()
        try:
            producer = self._ensure_producer(connection)
            self._returned.clear()
            # A content_type with bytes makes kombu send the body as is, without serialising.
            producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                headers=headers,
                content_type=content_type,
                content_encoding=content_encoding,
                delivery_mode=PERSISTENT,
                mandatory=mandatory and self._spec.supports_confirms,
                confirm_timeout=self._confirm_timeout,
                **properties,
            )
            self._published += 1
        except MessageNacked as exc:
            self._drop_channel()
            raise PublishError(
                f"the broker nacked a message for exchange {exchange!r} routing key "
                f"{routing_key!r}; it is not stored. Check the broker's logs and disk space"
            ) from exc
        except connection.channel_errors as exc:
            self._drop_channel()
            raise PublishError(
                f"the broker refused a message for exchange {exchange!r} routing key "
                f"{routing_key!r}: {exc}. Check that the exchange exists (the bridge declares "
                "its topology at start-up) and the bridge's user may write to it"
            ) from exc
        except (OperationalError, *connection.connection_errors) as exc:
            log.warning("transport.publish_connection_lost", error_type=type(exc).__name__)
            self._drop_connection(connection)
            raise _ConnectionLostError(str(exc)) from exc
        if self._returned:
            raise PublishError(
                f"no queue receives messages sent to exchange {exchange!r} with routing key "
                f"{routing_key!r} ({self._returned[0]}); declare and bind the receiving queue"
            )

    def _ensure_producer(self, connection: Connection) -> Producer:
        if self._producer is not None and connection is self._connection:
            return self._producer
        self._connection = connection
        # One attempt: kombu's connect() would itself retry after 2 s inside our backoff.
        connection.ensure_connection(max_retries=0)
        channel = connection.channel()
        if self._spec.supports_confirms:
            # Without a handler py-amqp raises from inside the confirm wait and loses the ack.
            channel.events["basic_return"].add(self._on_return)
            channel.events["basic_ack"].add(functools.partial(self._on_confirm, True))
            channel.events["basic_nack"].add(functools.partial(self._on_confirm, "nack"))
        self._published = 0
        if self._declare_topology:
            declare(channel, self._topology)
        self._channel = channel
        self._producer = Producer(channel, auto_declare=False)
        return self._producer

    def _on_return(self, exc: Exception, _exchange: str, _routing_key: str, message: Any) -> None:
        self._returned.append(str(exc))
        message_id = (getattr(message, "properties", None) or {}).get("message_id")
        if isinstance(message_id, str):
            self._returned_ids.add(message_id)

    def _drop_channel(self) -> None:
        """Forget a channel the broker has closed; the next publish opens another."""
        channel, self._channel, self._producer = self._channel, None, None
        if channel is not None and getattr(channel, "is_open", False):
            channel.close()

    def _drop_connection(self, connection: Connection) -> None:
        """Forget a broken connection without talking to the broker, which may be gone."""
        self._connection = None
        self._channel = self._producer = None
        connection.collect()
