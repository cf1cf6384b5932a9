# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""Trying a failed message again later, through the broker: never by waiting in the consumer.

A message whose processing failed is copied, original bytes unchanged, to the retry queue with
its failed attempts and the earliest time to try it again in headers; the original is acked once
the copy is stored. On RabbitMQ the copy's per-message TTL expires it back into the work queue.
The embedded broker has no TTL, so `DueRetries` moves due copies back from the consumer loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kombu.connection import Connection
from kombu.entity import Queue

from referral_bridge.core.retry import is_due, parse_not_before
from referral_bridge.transport.errors import TransportError
from referral_bridge.transport.publisher import Publisher
from referral_bridge.transport.topology import Topology
from referral_bridge.wire import DELIVERY_COUNT_HEADER, NOT_BEFORE_HEADER, OCTET_STREAM

log = structlog.get_logger(__name__)

#: Headers RabbitMQ adds each time a copy expires back; our attempts header is the count we keep.
_BROKER_DEATH_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", DELIVERY_COUNT_HEADER)


def without_broker_death_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` without those RabbitMQ added when it dead-lettered or redelivered the message
    to us (a quorum queue's delivery count is carried on in our attempts header instead)."""
    return {k: v for k, v in headers.items() if not k.startswith(_BROKER_DEATH_PREFIXES)}


class DueRetries:
    """Embedded broker only: moves retry copies whose time has come back to the work queue.

    Called from the consumer loop between messages, it never waits: it reads the retry queue at
    most once per `min_gap`, when the earliest copy it knows of is due, and at least once per
    `idle_gap` (for copies an earlier run left). A copy is acked only after it was written again:
    to the work queue when due, back to the retry queue when not. So a crash loses nothing the
    embedded broker would not lose anyway (the copy in hand).
    """

    def __init__(
        self,
        topology: Topology,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime],
        min_gap: timedelta = timedelta(milliseconds=250),
        idle_gap: timedelta = timedelta(seconds=5),
    ) -> None:
        self._topology = topology
        self._publisher = publisher
        self._clock = clock
        self._min_gap = min_gap
        self._idle_gap = idle_gap
        self._last_pass = datetime.min.replace(tzinfo=UTC)
        self._next_pass = self._last_pass

    def expect(self, due: datetime) -> None:
        """A copy was just scheduled for `due`: look again by then."""
        self._next_pass = min(self._next_pass, due)

    def promote(self, connection: Connection) -> int:
        """Move the due copies to the work queue, if it is time to look; how many were moved."""
        now = self._clock()
        if now < self._next_pass or now < self._last_pass + self._min_gap:
            return 0
        self._last_pass = now
        moved, earliest = 0, now + self._idle_gap
        channel = connection.channel()
        try:
            waiting = channel.queue_declare(queue=self._topology.retry_queue, passive=True)
            queue = Queue(self._topology.retry_queue, no_declare=True)(channel)
            # Copies not yet due go back to the end of the queue: look at each one once.
            for _ in range(int(waiting.message_count)):
                message = queue.get(no_ack=False)
                if message is None:
                    break
                headers = dict(message.headers or {})
                not_before = parse_not_before(headers.get(NOT_BEFORE_HEADER))
                due = is_due(not_before, now)
                self._publisher.publish(
                    exchange="",
                    routing_key=self._topology.work_queue if due else self._topology.retry_queue,
                    body=raw_body(message),
                    headers=headers,
                    message_id=message.properties.get("message_id"),
                    content_type=message.content_type or OCTET_STREAM,
                    content_encoding=message.content_encoding or "binary",
                )
                message.ack()
                if due:
                    moved += 1
                elif not_before is not None:
                    earliest = min(earliest, not_before)
        except TransportError as exc:
            # The copy in hand is put back when the channel closes; the next pass tries again.
            log.error("transport.retry_promotion_failed", error_type=type(exc).__name__)
        finally:
            channel.close()
        self._next_pass = earliest
        if moved:
            log.info("transport.retries_due", count=moved)
        return moved


def raw_body(message: Any) -> bytes:
    """A kombu message's body as the bytes that were published."""
    body = message.body
    if isinstance(body, bytes):
        return body
    # Only reachable if a transport decoded the body despite auto_decode being off.
    return str(body).encode(message.content_encoding or "utf-8")
