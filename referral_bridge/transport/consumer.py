# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""Consuming the work queue: hand each raw message to the handler, then carry out its verdict.

Long on purpose: every message is settled in exactly one method (`_settle`), so the paths that end
there (one message, a batch, a retry copy, a counted redelivery) live beside it.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from kombu.connection import Connection
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.messaging import Consumer as KombuConsumer
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from referral_bridge.core.events import DeadLetterReason
from referral_bridge.core.retry import RetryPolicy, attempts_carried
from referral_bridge.core.verdicts import (
    Ack,
    DeadLetter,
    Handler,
    InboundMessage,
    Retry,
    Verdict,
)
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import BrokerUnavailableError, TransportError
from referral_bridge.transport.publisher import Publisher
from referral_bridge.transport.retry import (
    DueRetries,
    raw_body,
    without_broker_death_headers,
)
from referral_bridge.transport.topology import (
    Topology,
    declare,
    work_queue_entity,
)
from referral_bridge.wire import (
    ATTEMPTS_HEADER,
    BRIDGE_HEADER_PREFIX,
    DELIVERY_COUNT_HEADER,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    FIRST_FAILED_AT_HEADER,
    NOT_BEFORE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    REPLAY_COUNT_HEADER,
)

log = structlog.get_logger(__name__)

#: Verdicts for a batch of messages, one each, in order (group commit).
BatchHandler = Callable[[Sequence[InboundMessage]], list[Verdict]]

#: Counts one more unsettled delivery of a message copy (named by a key without personal data)
#: at a time, and returns the count so far, shared by every worker and kept across restarts
#: (`Ledger.count_redelivery`): what a classic queue does not count itself.
RedeliveryCounter = Callable[[str, datetime], int]


#: The headers a message keeps from one failure to the next (set by `dlq replay`).
CARRIED_HEADERS = (REPLAY_COUNT_HEADER, FIRST_FAILED_AT_HEADER)
_MAX_REPLAYS = 10_000
_MAX_TIMESTAMP_CHARS = 40
#: Dot-separated words, as AMQP topic routing keys are.
_ROUTING_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}")


#: AMQP heartbeat of the consuming connection, in seconds. Both ends drop a connection silent
#: for about two periods, and the loop is silent while a handler runs; the worker passes a value
#: fitted to its longest in-place delivery (see worker.consumer_heartbeat_seconds).
DEFAULT_HEARTBEAT_SECONDS = 30.0

#: The longest the first message of a batch waits while more keep arriving (group commit).
DEFAULT_BATCH_MAX_WAIT_SECONDS = 0.02

#: The settings' defaults: 5 attempts, 1, 2, 4 and 8 s apart.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_attempts=5, first_delay=timedelta(seconds=1), longest_delay=timedelta(seconds=30)
)


def rfc3339_utc(moment: datetime) -> str:
    """`moment` as an RFC 3339 timestamp in UTC with a Z offset, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Consumer:
    """Consumes the work queue and settles each message by the verdict of an injected handler.

    The message in hand is acked, dead-lettered or retried in `_settle` and nowhere else. Nothing
    is acked unless the handler said so or its dead letter or retry copy was stored first, so a
    crash or a lost connection at any point leaves the message to be delivered again.

    A retry never waits here: the copy waits in the broker's retry queue (see transport.retry),
    so a message that keeps failing costs its attempts and holds up nothing else.
    """

    def __init__(
        self,
        spec: BrokerSpec,
        topology: Topology,
        *,
        handler: Handler,
        publisher: Publisher,
        prefetch: int = 16,
        idle_callback: Callable[[], None] | None = None,
        drain_timeout: float = 1.0,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        unparked_pause: float = 1.0,
        reconnect_attempts: int = 10,
        reconnect_max_wait: float = 30.0,
        clock: Callable[[], datetime] = _utc_now,
        on_dead_lettered: Callable[[DeadLetterReason], None] | None = None,
        on_retried: Callable[[], None] | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT_SECONDS,
        batch_handler: BatchHandler | None = None,
        batch_size: int = 1,
        batch_max_wait: float = DEFAULT_BATCH_MAX_WAIT_SECONDS,
        count_redelivery: RedeliveryCounter | None = None,
    ) -> None:
        """`batch_handler` (with `batch_size` > 1) turns on group commit: what prefetch has
        delivered is handed over in batches of up to `batch_size`, gathered for at most
        `batch_max_wait` seconds after the first; a lone message goes at once.

        `count_redelivery` counts the unsettled deliveries a classic queue does not (see
        `_unsettled`); without it a redelivery there counts as none."""
        self._spec = spec
        self._topology = topology
        self._handler = handler
        self._publisher = publisher
        self._prefetch = prefetch
        self._idle_callback = idle_callback
        self._drain_timeout = drain_timeout
        self._retry_policy = retry_policy
        self._unparked_pause = unparked_pause
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_max_wait = reconnect_max_wait
        self._clock = clock
        self._on_dead_lettered = on_dead_lettered
        self._on_retried = on_retried
        self._heartbeat = heartbeat
        self._batch_handler = batch_handler if batch_size > 1 else None
        self._batch_size = batch_size
        self._batch_max_wait = batch_max_wait
        self._count_redelivery = count_redelivery
        #: Messages delivered and not yet handed over (group commit only).
        self._batch: list[tuple[Message, InboundMessage]] = []
        self._stop = threading.Event()
        # RabbitMQ expires retry copies back into the work queue; the embedded broker cannot.
        self._due_retries = DueRetries(topology, publisher, clock=clock) if spec.embedded else None

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then finish the message in hand and return.

        A lost connection is re-established with exponential backoff; when the broker stays away
        for `reconnect_attempts` tries in a row, BrokerUnavailableError is raised. Exceptions from
        the idle callback propagate after the connection is closed, which puts every unacked
        message back on the queue.
        """
        self._stop = stop
        while not stop.is_set():
            connection = self._connect(stop)
            if connection is None:
                return
            try:
                self._consume(connection, stop)
            except _ConnectionLostError:
                # Drop it without a word: a half-open connection would never answer a close, and
                # the broker requeues what we held once it notices too.
                connection.collect()
                # A broker that accepts connections but drops every channel must not spin us.
                stop.wait(1.0)
                continue
            finally:
                _close_quietly(connection)

    def _connect(self, stop: threading.Event) -> Connection | None:
        """A connection with the topology declared, or None if `stop` was set while waiting."""

        def give_up(state: RetryCallState) -> bool:
            return stop.is_set() or state.attempt_number >= self._reconnect_attempts

        def sleep(seconds: float) -> None:
            stop.wait(seconds)

        def connect_once() -> Connection:
            connection = self._spec.connection(heartbeat=self._heartbeat)
            try:
                # One attempt: kombu's connect() would itself retry after 2 s inside our backoff.
                connection.ensure_connection(max_retries=0)
                with connection.channel() as channel:
                    declare(channel, self._topology)
            except (OperationalError, *connection.connection_errors) as exc:
                log.warning("transport.connect_failed", error_type=type(exc).__name__)
                connection.collect()
                raise _ConnectionLostError(str(exc)) from exc
            except BaseException:
                _close_quietly(connection)
                raise
            return connection

        retrying = Retrying(
            stop=give_up,
            wait=wait_exponential_jitter(multiplier=0.5, max=self._reconnect_max_wait),
            retry=retry_if_exception_type(_ConnectionLostError),
            sleep=sleep,
            reraise=True,
        )
        try:
            return retrying(connect_once)
        except _ConnectionLostError as exc:
            if stop.is_set():
                return None
            raise BrokerUnavailableError(
                f"cannot reach the broker at {self._spec.display_url} after "
                f"{self._reconnect_attempts} attempts ({exc.__cause__!r}); check that it is "
                "running and reachable, then restart the worker"
            ) from exc.__cause__

    def _consume(self, connection: Connection, stop: threading.Event) -> None:
        """Hand messages to the handler until `stop` is set; raise _ConnectionLostError on loss."""
        # What a lost channel had delivered comes back from the broker; never settle it here.
        self._batch = []
        try:
            channel = connection.channel()
            # py-amqp would otherwise turn bodies that have a content_encoding into str.
            if hasattr(channel, "auto_decode"):
                channel.auto_decode = False
            consumer = KombuConsumer(
                channel,
                queues=[work_queue_entity(self._topology)],
                no_ack=False,
                auto_declare=False,
                # on_message receives the kombu Message without decoding the body, so kombu's
                # habit of acking what it cannot decode never applies.
                on_message=self._on_message,
                on_decode_error=self._on_undecodable,
                prefetch_count=self._prefetch,
            )
            consumer.consume()
            log.info("transport.consuming", queue=self._topology.work_queue)
            while not stop.is_set():
                # Sends our heartbeat when due and raises a connection error when RabbitMQ's have
                # stopped arriving: a half-open connection (a NAT or firewall that forgot us)
                # otherwise just looks idle, and drain_events would time out here forever.
                connection.heartbeat_check()
                if self._idle_callback is not None:
                    self._idle_callback()
                if self._due_retries is not None:
                    self._due_retries.promote(connection)
                try:
                    connection.drain_events(timeout=self._drain_timeout)
                except TimeoutError:
                    continue
                if self._batch:
                    self._gather(connection)
                    self._run_batch()
            # The message in hand was settled inside drain_events; prefetched ones not yet
            # handed over go back to the queue when the channel closes.
            consumer.cancel()
            log.info("transport.stopped", queue=self._topology.work_queue)
        except (*connection.connection_errors, *connection.channel_errors) as exc:
            log.warning("transport.connection_lost", error_type=type(exc).__name__)
            raise _ConnectionLostError(str(exc)) from exc

    def _on_undecodable(self, message: Message, exc: Exception) -> None:
        """Kombu could not undo a compression header: still hand over the body as received."""
        log.warning("transport.undecodable_message", error_type=type(exc).__name__)
        self._on_message(message)

    def _gather(self, connection: Connection) -> None:
        """Take what has already arrived, up to a batch, never waiting for more.

        A message alone goes at once (latency); under a backlog prefetch keeps the socket
        full, so batches fill. `batch_max_wait` caps the time the first message waits while
        more keep trickling in.
        """
        deadline = time.monotonic() + self._batch_max_wait
        while len(self._batch) < self._batch_size and time.monotonic() < deadline:
            before = len(self._batch)
            try:
                connection.drain_events(timeout=0)
            except TimeoutError:
                return
            if len(self._batch) == before:  # a frame that was not a message (a heartbeat)
                continue

    def _run_batch(self) -> None:
        """Hand the batch to the batch handler and settle each message by its verdict."""
        batch, self._batch = self._batch, []
        inbound = [item for _, item in batch]
        assert self._batch_handler is not None
        try:
            verdicts = self._batch_handler(inbound)
        except Exception as exc:  # noqa: BLE001 (each message then goes alone)
            # Only the type is logged: the exception's text may quote personal data. Each
            # message then goes alone, so one bad message cannot fail the others.
            log.error("transport.batch_failed", error_type=type(exc).__name__, count=len(batch))
            for message, item in batch:
                self._handle_one(message, item)
            return
        acked: list[Message] = []
        for (message, item), verdict in zip(batch, verdicts, strict=True):
            if isinstance(verdict, Ack):
                acked.append(message)
            else:
                self._settle(message, item, verdict)
        self._ack_all(acked)

    def _ack_all(self, messages: list[Message]) -> None:
        """Ack the messages; one `multiple` ack when they are every unsettled message so far.

        Everything delivered before the last of them on this channel is in this batch or an
        earlier one, and the others were settled one by one above, so on RabbitMQ one ack with
        multiple=True covers exactly these. The embedded broker acks each.
        """
        if not messages:
            return
        if self._spec.embedded or len(messages) == 1:
            for message in messages:
                message.ack()
            return
        last = max(messages, key=lambda m: int(m.delivery_tag))
        last.ack(multiple=True)
        for message in messages:
            # kombu tracks acknowledgement per message; the broker has them all now.
            message._state = "ACK"

    def _on_message(self, message: Message) -> None:
        headers = dict(message.headers or {})
        body = raw_body(message)
        redelivered = _redelivered(message)
        carried = attempts_carried(headers.get(ATTEMPTS_HEADER))
        unsettled = self._unsettled(headers, body, carried, redelivered=redelivered)
        inbound = InboundMessage(
            body=body,
            headers=inbound_headers(headers),
            routing_key=_original_routing_key(message),
            redelivered=redelivered,
            delivery_tag=message.delivery_tag,
            attempts=carried + unsettled,
        )
        if unsettled and self._retry_policy.exhausted(inbound.attempts):
            # Not handed over again: a message that takes its worker down each time (a poison
            # message) would otherwise take every worker down in turn, for ever.
            self._settle(
                message,
                inbound,
                DeadLetter(
                    reason=DeadLetterReason.PROCESSING_ERROR,
                    detail=f"delivered {unsettled} times without being settled (a worker "
                    "stopped while handling it, or lost its connection); see the bridge's log, "
                    "fix the cause, then replay",
                    attempts=inbound.attempts,
                ),
            )
            return
        if self._batch_handler is not None:
            self._batch.append((message, inbound))
            return
        self._handle_one(message, inbound)

    def _unsettled(
        self, headers: Mapping[str, Any], body: bytes, carried: int, *, redelivered: bool
    ) -> int:
        """How often this copy of the message came back unsettled (a worker killed while
        handling it, on any worker): each is an attempt that failed, as the retry copies' are.

        A quorum queue says so itself (`x-delivery-count`). A classic queue (and the embedded
        broker) only marks a redelivery, so that is counted in the ledger, keyed by the copy:
        its body and the attempts and replays it carries (a retry copy or a replayed dead
        letter starts afresh, as on a quorum queue). Only redeliveries are counted, so the
        normal path costs nothing. If the count cannot be had (the ledger is away) the message
        goes to the handler, whose own failure then retries it.
        """
        if DELIVERY_COUNT_HEADER in headers or not redelivered:
            return attempts_carried(headers.get(DELIVERY_COUNT_HEADER))
        if self._count_redelivery is None:
            return 0
        key = _copy_key(body, carried, headers.get(REPLAY_COUNT_HEADER))
        try:
            return self._count_redelivery(key, self._clock())
        except Exception as exc:  # noqa: BLE001 (uncounted beats unprocessed)
            log.warning("transport.redelivery_not_counted", error_type=type(exc).__name__)
            return 0

    def _handle_one(self, message: Message, inbound: InboundMessage) -> None:
        try:
            verdict = self._handler(inbound)
        except Exception as exc:  # noqa: BLE001 (a handler's failure is a Retry)
            # Only the type is logged: the exception's text may quote personal data.
            log.error("transport.handler_failed", error_type=type(exc).__name__)
            verdict = self._handler_failed(inbound, type(exc).__name__)
        self._settle(message, inbound, verdict)

    def _handler_failed(self, inbound: InboundMessage, error_type: str) -> Verdict:
        """A handler that raised gets the message again, but not for ever."""
        attempts = inbound.attempts + 1
        if self._retry_policy.exhausted(attempts):
            return DeadLetter(
                reason=DeadLetterReason.PROCESSING_ERROR,
                detail=f"the handler raised {error_type} on each of {attempts} attempts; see "
                "the bridge's log, fix the cause, then replay",
                attempts=attempts,
            )
        return Retry(detail=f"handler raised {error_type}", attempts=attempts)

    def _settle(self, message: Message, inbound: InboundMessage, verdict: Verdict) -> None:
        """Ack, dead-letter or retry `message`: the one place a message leaves our hands."""
        match verdict:
            case Ack():
                message.ack()
            case DeadLetter(reason=reason, detail=detail, attempts=attempts):
                headers: dict[str, str | int] = {
                    REASON_HEADER: str(reason),
                    DETAIL_HEADER: detail,
                    FAILED_AT_HEADER: rfc3339_utc(self._clock()),
                    ATTEMPTS_HEADER: attempts,
                }
                for name in CARRIED_HEADERS:
                    value = inbound.headers.get(name)
                    if isinstance(value, str | int) and not isinstance(value, bool):
                        headers[name] = value
                publish = functools.partial(
                    self._publisher.publish_dead_letter, original_routing_key=inbound.routing_key
                )
                if not self._copy_then_ack(
                    message, inbound, headers, publish, failed="transport.dead_letter_failed"
                ):
                    return
                log.info("transport.dead_lettered", reason=str(reason), attempts=attempts)
                if self._on_dead_lettered is not None:
                    self._on_dead_lettered(reason)
            case Retry(detail=detail, attempts=attempts):
                self._retry_later(
                    message, inbound, detail, inbound.attempts if attempts is None else attempts
                )

    def _retry_later(
        self, message: Message, inbound: InboundMessage, detail: str, attempts: int
    ) -> None:
        """Store a copy on the retry queue to come back after the policy's delay; then ack."""
        delay = self._retry_policy.delay(attempts)
        now = self._clock()
        headers = without_broker_death_headers(inbound.headers)
        headers.update(
            {
                ATTEMPTS_HEADER: attempts,
                DETAIL_HEADER: detail,
                FAILED_AT_HEADER: rfc3339_utc(now),
                NOT_BEFORE_HEADER: rfc3339_utc(now + delay),
                ORIGINAL_ROUTING_KEY_HEADER: inbound.routing_key,
            }
        )
        publish = functools.partial(
            self._publisher.publish_retry, delay_seconds=delay.total_seconds()
        )
        if not self._copy_then_ack(
            message, inbound, headers, publish, failed="transport.retry_failed"
        ):
            return
        if self._due_retries is not None:
            self._due_retries.expect(now + delay)
        log.info("transport.retry_scheduled", attempts=attempts, retry_in_s=delay.total_seconds())
        if self._on_retried is not None:
            self._on_retried()

    def _copy_then_ack(
        self,
        message: Message,
        inbound: InboundMessage,
        headers: dict[str, Any],
        publish: Callable[..., None],
        *,
        failed: str,
    ) -> bool:
        """Ack `message` once `publish` stored its copy (original bytes, `headers`); else put
        it back, unacked, to come again later. Whether it was acked."""
        try:
            publish(
                inbound.body,
                headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                message_id=message.properties.get("message_id"),
            )
        except TransportError as exc:
            log.error(failed, error_type=type(exc).__name__)
            self._put_back(message)
            return False
        message.ack()
        return True

    def _put_back(self, message: Message) -> None:
        """Requeue a message the broker would not let us park (dead letter or retry copy).

        The pause is the one wait left in this thread: it applies only while the broker refuses
        to store what we publish (the retry or dead-letter queue is missing, or it is down).
        """
        self._stop.wait(self._unparked_pause)
        message.requeue()


class _ConnectionLostError(Exception):
    """Internal: the consuming connection broke; consumption resumes on a new one."""


def inbound_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers of a consumed message, less any `x-rb-*` a producer set.

    Those headers are the bridge's own (dead-letter reasons, details, times, counts) and operator
    tools show them; a producer's would otherwise travel into a dead letter and onto an
    operator's screen (a name, a phone number, terminal escapes). The two that `dlq replay` sets
    are kept, and only when well-formed.
    """
    kept = {
        name: value
        for name, value in headers.items()
        if not name.lower().startswith(BRIDGE_HEADER_PREFIX)
    }
    count = headers.get(REPLAY_COUNT_HEADER)
    if type(count) is int and 0 < count <= _MAX_REPLAYS:
        kept[REPLAY_COUNT_HEADER] = count
    first_failed = _timestamp(headers.get(FIRST_FAILED_AT_HEADER))
    if first_failed is not None:
        kept[FIRST_FAILED_AT_HEADER] = rfc3339_utc(first_failed)
    return kept


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > _MAX_TIMESTAMP_CHARS:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _original_routing_key(message: Message) -> str:
    headers = message.headers or {}
    original = headers.get(ORIGINAL_ROUTING_KEY_HEADER)
    # The bridge sets it only on what it puts straight into the work queue (the embedded broker,
    # through the default exchange); on one routed by an exchange it is a producer's, ignored.
    direct = not (message.delivery_info or {}).get("exchange")
    if direct and isinstance(original, str) and _ROUTING_KEY.fullmatch(original):
        return original
    return str((message.delivery_info or {}).get("routing_key") or "")


def _copy_key(body: bytes, carried: int, replays: object) -> str:
    """A SHA-256 naming one copy of a message (its body, attempts carried and replays): the
    ledger keeps a count under it, never the body."""
    digest = hashlib.sha256(body)
    digest.update(f"\0{carried}\0{replays if type(replays) is int else 0}".encode())
    return digest.hexdigest()


def _redelivered(message: Message) -> bool:
    if (message.delivery_info or {}).get("redelivered"):
        return True
    # The embedded broker marks a requeued message in its stored payload instead.
    raw = getattr(message, "_raw", None)
    return bool(isinstance(raw, dict) and raw.get("redelivered"))


def _close_quietly(connection: Connection) -> None:
    """Release a connection that may already be broken, without talking to a dead broker."""
    try:
        connection.release()
    except connection.connection_errors:
        connection.collect()
