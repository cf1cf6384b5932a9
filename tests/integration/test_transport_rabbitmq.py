"""The transport against a real RabbitMQ: topology, delivery of raw bytes, verdicts, confirms."""

# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these tests drive it directly.

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from kombu.entity import Queue

from referral_bridge.core.events import DeadLetterReason
from referral_bridge.transport import (
    Ack,
    BrokerUnavailableError,
    Consumer,
    DeadLetter,
    Publisher,
    PublishError,
    Retry,
    Verdict,
    broker_spec,
    declare,
)
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import (
    BrokerHarness,
    RecordingHandler,
    RunningConsumer,
    unique_topology,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_UTF8 = b"\xff\xfe{not json at all\x00\x80"


class TestTopology:
    """Declaring the contract's topology."""

    def test_declaring_the_topology_twice_is_harmless(self, rabbit: BrokerHarness) -> None:
        """A second declaration on a fresh channel succeeds and leaves the queues in place."""
        with rabbit.spec.connection() as connection:
            declare(connection.channel(), rabbit.topology)
            declare(connection.channel(), rabbit.topology)
        assert rabbit.depth(rabbit.topology.work_queue) == 0
        assert rabbit.depth(rabbit.topology.dead_letter_queue) == 0

    def test_the_dead_letter_queue_has_no_message_ttl(self, rabbit: BrokerHarness) -> None:
        """Redeclaring the DLQ with a TTL is refused, so the declared one has none."""
        from amqp.exceptions import PreconditionFailed

        with rabbit.spec.connection() as connection:
            declare(connection.channel(), rabbit.topology)
            with_ttl = Queue(rabbit.topology.dead_letter_queue, durable=True, message_ttl=60)
            with pytest.raises(PreconditionFailed):
                with_ttl(connection.channel()).declare()

    def test_an_inbound_event_is_routed_to_the_work_queue(self, rabbit: BrokerHarness) -> None:
        """A crime.* event published to the inbound exchange lands in the work queue."""
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 1)


class TestDelivery:
    """What the handler is given."""

    def test_invalid_utf8_declared_as_json_reaches_the_handler_byte_for_byte(
        self, rabbit: BrokerHarness
    ) -> None:
        """Neither kombu nor py-amqp decode or reject the body on the way in."""
        handler = RecordingHandler(Ack())
        rabbit.publisher.publish(
            exchange=rabbit.topology.inbound_exchange,
            routing_key="crime.recorded",
            body=NOT_UTF8,
            content_type="application/json",
            content_encoding="utf-8",
        )
        rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        assert handler.received[0].body == NOT_UTF8

    def test_a_body_with_a_content_encoding_is_not_transcoded(self, rabbit: BrokerHarness) -> None:
        """Big-endian UTF-16 labelled utf-16 arrives as sent; decoding and re-encoding would not."""
        body = b"\xfe\xff\x00{\x00}"
        handler = RecordingHandler(Ack())
        rabbit.publisher.publish(
            exchange=rabbit.topology.inbound_exchange,
            routing_key="crime.recorded",
            body=body,
            content_encoding="utf-16",
        )
        rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        assert handler.received[0].body == body

    def test_the_handler_sees_the_routing_key_and_headers(self, rabbit: BrokerHarness) -> None:
        """The routing key the event was published with is passed along."""
        handler = RecordingHandler(Ack())
        rabbit.publisher.publish_inbound(b"{}", "consent.updated")
        rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        assert handler.received[0].routing_key == "consent.updated"
        assert handler.received[0].redelivered is False


class TestVerdicts:
    """Ack, DeadLetter and Retry, and a handler that raises."""

    def test_ack_removes_the_message(self, rabbit: BrokerHarness) -> None:
        """After Ack the message is gone even once the consumer's channel is closed."""
        handler = RecordingHandler(Ack())
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        running = rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        running.halt()
        assert rabbit.depth(rabbit.topology.work_queue) == 0

    def test_dead_letter_parks_the_original_bytes_with_all_five_headers(
        self, rabbit: BrokerHarness
    ) -> None:
        """The DLQ gets the body byte for byte and the x-rb-* headers; the original is acked."""
        handler = RecordingHandler(
            DeadLetter(
                reason=DeadLetterReason.INVALID_ENCODING, detail="body is not UTF-8", attempts=1
            )
        )
        rabbit.publisher.publish(
            exchange=rabbit.topology.inbound_exchange,
            routing_key="incident.recorded",
            body=NOT_UTF8,
            content_type="application/json",
        )
        running = rabbit.start_consumer(handler)
        parked = rabbit.fetch_eventually(rabbit.topology.dead_letter_queue)
        running.halt()
        assert parked.body == NOT_UTF8
        assert parked.headers["x-rb-reason"] == "invalid_encoding"
        assert parked.headers["x-rb-detail"] == "body is not UTF-8"
        assert parked.headers["x-rb-attempts"] == 1
        assert parked.headers["x-rb-original-routing-key"] == "incident.recorded"
        assert datetime.fromisoformat(parked.headers["x-rb-failed-at"]).utcoffset() is not None
        assert rabbit.depth(rabbit.topology.work_queue) == 0

    def test_a_dead_letter_is_persistent(self, rabbit: BrokerHarness) -> None:
        """Dead letters are published with delivery mode 2."""
        handler = RecordingHandler(
            DeadLetter(reason=DeadLetterReason.INVALID_JSON, detail="x", attempts=1)
        )
        rabbit.publisher.publish_inbound(b"nope", "crime.recorded")
        rabbit.start_consumer(handler)
        parked = rabbit.fetch_eventually(rabbit.topology.dead_letter_queue)
        assert parked.properties["delivery_mode"] == 2

    def test_retry_brings_the_message_back_through_the_retry_queue(
        self, rabbit: BrokerHarness
    ) -> None:
        """A copy comes back (not a redelivery): same bytes and routing key, the count kept."""
        handler = RecordingHandler(Retry("database busy"), Ack())
        rabbit.publisher.publish_inbound(NOT_UTF8, "crime.recorded")
        running = rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 2)
        running.halt()
        first, second = handler.received
        assert (second.body, second.routing_key) == (NOT_UTF8, "crime.recorded")
        assert (first.attempts, second.attempts) == (0, 0)  # an uncounted retry
        # The copy's own x-rb-* headers are the bridge's bookkeeping: the count travels as
        # `attempts`, and nothing x-rb-* reaches the handler (or, later, an operator) as it came.
        assert not [name for name in second.headers if name.startswith("x-rb-")]
        assert rabbit.depth(rabbit.topology.work_queue) == 0
        assert rabbit.depth(rabbit.topology.retry_queue) == 0

    def test_a_handler_exception_neither_crashes_nor_acks(self, rabbit: BrokerHarness) -> None:
        """The consumer keeps running and the message comes back to the handler."""
        handler = RecordingHandler(RuntimeError("boom"), Ack())
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        running = rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 2)
        assert running.alive
        assert running.errors == []
        assert handler.received[0].body == handler.received[1].body

    @pytest.mark.parametrize("copy", ["dead letter", "retry copy"])
    def test_a_copy_that_cannot_be_stored_leaves_the_message_unacked(
        self, rabbit: BrokerHarness, copy: str
    ) -> None:
        """With its queue gone the copy is unroutable, so the original is requeued, not acked."""
        gate = threading.Event()
        stored: dict[str, tuple[Verdict, str]] = {
            "dead letter": (
                DeadLetter(reason=DeadLetterReason.INVALID_JSON, detail="x", attempts=1),
                rabbit.topology.dead_letter_queue,
            ),
            "retry copy": (Retry("x", attempts=1), rabbit.topology.retry_queue),
        }
        verdict, queue = stored[copy]
        handler = RecordingHandler(verdict, gate=gate)
        running = rabbit.start_consumer(handler)
        rabbit.publisher.publish_inbound(b"nope", "crime.recorded")
        assert wait_until(lambda: len(handler.received) == 1)
        # Only now: the consumer and publisher both declare the topology when they connect.
        with rabbit.spec.connection() as connection:
            connection.channel().queue_delete(queue=queue)
        gate.set()
        assert wait_until(lambda: len(handler.received) >= 2)
        running.halt()
        assert rabbit.depth(rabbit.topology.work_queue) == 1
        assert handler.received[1].attempts == 0, "the count grows only with a stored copy"


class TestFlowControl:
    """Prefetch and stopping."""

    def test_prefetch_bounds_the_unacked_messages(self, rabbit: BrokerHarness) -> None:
        """With prefetch 2 and the handler stuck, three of five messages stay ready."""
        gate = threading.Event()
        handler = RecordingHandler(Ack(), gate=gate)
        for _ in range(5):
            rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        rabbit.start_consumer(handler, prefetch=2)
        try:
            assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 3)
            assert len(handler.received) == 1
        finally:
            gate.set()
        assert wait_until(lambda: len(handler.received) == 5)

    def test_setting_the_stop_event_ends_run_promptly(self, rabbit: BrokerHarness) -> None:
        """run() returns within about one drain timeout of the stop request."""
        running = rabbit.start_consumer(RecordingHandler(Ack()), drain_timeout=1.0)
        took = running.halt()
        assert not running.alive
        assert took < 2.5
        assert running.errors == []

    def test_stopping_finishes_the_message_in_hand(self, rabbit: BrokerHarness) -> None:
        """A stop requested while the handler works still lets that message be acked."""
        gate = threading.Event()
        handler = RecordingHandler(Ack(), gate=gate)
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        running = rabbit.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        running.stop.set()
        gate.set()
        running.halt()
        assert rabbit.depth(rabbit.topology.work_queue) == 0


class TestPublisherConfirms:
    """Publishing only counts once the broker confirmed it."""

    def test_publishing_to_a_missing_exchange_raises_publish_error(
        self, rabbit: BrokerHarness
    ) -> None:
        """The broker's 404 channel error surfaces as PublishError, not silent success."""
        with pytest.raises(PublishError, match="exchange"):
            rabbit.publisher.publish(
                exchange=f"{rabbit.topology.inbound_exchange}.missing",
                routing_key="crime.recorded",
                body=b"{}",
            )

    def test_the_publisher_recovers_after_a_refused_publish(self, rabbit: BrokerHarness) -> None:
        """A channel closed by the broker is replaced, so the next publish succeeds."""
        with pytest.raises(PublishError):
            rabbit.publisher.publish(exchange="no-such-exchange-here", routing_key="x", body=b"")
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded")
        assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 1)

    def test_an_inbound_event_no_queue_receives_raises_publish_error(
        self, rabbit: BrokerHarness
    ) -> None:
        """publish_inbound is mandatory: an unbound routing key is an error, not a lost event."""
        with pytest.raises(PublishError, match="no queue receives"):
            rabbit.publisher.publish_inbound(b"{}", "weather.report")

    def test_published_messages_are_persistent(self, rabbit: BrokerHarness) -> None:
        """Messages are sent with delivery mode 2 and keep their message id."""
        rabbit.publisher.publish_inbound(b"{}", "crime.recorded", message_id="evt-1")
        message = rabbit.fetch_eventually(rabbit.topology.work_queue)
        assert message.properties["delivery_mode"] == 2
        assert message.properties["message_id"] == "evt-1"


def _close_broker_connections(named: str) -> int:
    """Have RabbitMQ close the connections whose client-provided name is `named`."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        pytest.skip("rabbitmqctl is needed to make the broker drop a connection")
    listing = subprocess.run(
        [rabbitmqctl, "list_connections", "pid", "client_properties", "--silent"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [
        line.split("\t")[0]
        for line in listing.splitlines()
        if line.startswith("<") and f'"{named}"' in line
    ]
    for pid in pids:
        subprocess.run(
            [rabbitmqctl, "close_connection", pid, "test: simulated connection loss"],
            capture_output=True,
            check=True,
            timeout=60,
        )
    return len(pids)


@pytest.mark.slow
class TestConnectionLoss:
    """The broker dropping the bridge's connections."""

    def test_consumer_and_publisher_carry_on_after_the_broker_drops_them(
        self, rabbit: BrokerHarness
    ) -> None:
        """Both reconnect by themselves and the next message is handled."""
        name = f"{rabbit.topology.work_queue}.conn"
        options = {**rabbit.spec.transport_options, "client_properties": {"connection_name": name}}
        rabbit.spec = replace(rabbit.spec, transport_options=options)
        rabbit.publisher = Publisher(rabbit.spec, rabbit.topology)
        handler = RecordingHandler(Ack())
        running = rabbit.start_consumer(handler)
        rabbit.publisher.publish_inbound(b"1", "crime.recorded")
        assert wait_until(lambda: len(handler.received) == 1)
        assert _close_broker_connections(name) == 2
        rabbit.publisher.publish_inbound(b"2", "crime.recorded")
        assert wait_until(lambda: len(handler.received) == 2, timeout=20)
        assert running.alive
        assert [m.body for m in handler.received] == [b"1", b"2"]


@pytest.mark.slow
class TestHalfOpenConnection:
    """A consuming connection that silently stops carrying anything."""

    def test_the_consumer_notices_by_heartbeat_reconnects_and_handles_the_next_message(
        self, rabbit: BrokerHarness, rabbitmq_url: str
    ) -> None:
        proxy = FaultProxy.for_url(rabbitmq_url).start()
        through_proxy = replace(rabbit.spec, url=proxy.url_through(rabbitmq_url))
        handler = RecordingHandler(Ack())
        running = RunningConsumer(
            consumer=Consumer(
                through_proxy,
                rabbit.topology,
                handler=handler,
                publisher=rabbit.publisher,
                drain_timeout=0.2,
                heartbeat=2,
            )
        ).start()
        try:
            rabbit.publisher.publish_inbound(b"1", "crime.recorded")
            assert wait_until(lambda: len(handler.received) == 1)
            proxy.silence()
            rabbit.publisher.publish_inbound(b"2", "crime.recorded")

            # Without heartbeats it would wait on the silent connection until TCP keepalive.
            assert wait_until(lambda: len(handler.received) == 2, timeout=20)
            assert [m.body for m in handler.received] == [b"1", b"2"]
        finally:
            running.halt()
            proxy.close()


class TestUnreachableBroker:
    """A broker that cannot be reached at all."""

    UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"

    def test_the_publisher_gives_up_with_broker_unavailable(self, tmp_path: Path) -> None:
        """Bounded retries end in BrokerUnavailableError naming what to check."""
        spec = broker_spec(self.UNREACHABLE, tmp_path)
        publisher = Publisher(spec, unique_topology(), retry_attempts=2, retry_max_wait=0.05)
        with pytest.raises(BrokerUnavailableError, match="check that it is running"):
            publisher.publish_inbound(b"{}", "crime.recorded")

    def test_the_consumer_gives_up_with_broker_unavailable(self, tmp_path: Path) -> None:
        """run() raises instead of retrying forever, so the service manager can step in."""
        spec = broker_spec(self.UNREACHABLE, tmp_path)
        topology = unique_topology()
        consumer = Consumer(
            spec,
            topology,
            handler=RecordingHandler(Ack()),
            publisher=Publisher(spec, topology),
            reconnect_attempts=2,
            reconnect_max_wait=0.05,
        )
        with pytest.raises(BrokerUnavailableError, match="restart the worker"):
            consumer.run(threading.Event())
