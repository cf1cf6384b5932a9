"""The transport on the embedded filesystem broker: the core flows, with no server running."""

# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these tests drive it directly.

from __future__ import annotations

import builtins
from pathlib import Path
from queue import Empty
from typing import Any

import pytest

from referral_bridge.core.events import DeadLetterReason
from referral_bridge.transport import (
    Ack,
    DeadLetter,
    Publisher,
    Retry,
    TransportConfigError,
    broker_spec,
)
from tests.integration.conftest import BrokerHarness, RecordingHandler
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NOT_UTF8 = b"\xff\xfe{not json at all\x00\x80"


class TestBrokerSpec:
    """Choosing the broker from the configured URL."""

    def test_no_url_means_the_embedded_broker_under_the_data_dir(self, tmp_path: Path) -> None:
        """Its queue and control folders live under DATA_DIR/broker."""
        spec = broker_spec(None, tmp_path)
        assert spec.embedded
        assert not spec.supports_confirms
        assert spec.transport_options["data_folder_in"] == str(tmp_path / "broker" / "queue")
        assert spec.transport_options["data_folder_out"] == str(tmp_path / "broker" / "queue")
        assert spec.transport_options["control_folder"] == str(tmp_path / "broker" / "control")

    def test_an_amqp_url_means_rabbitmq_with_publisher_confirms(self, tmp_path: Path) -> None:
        """AMQP connections are opened in confirm mode."""
        spec = broker_spec("amqp://guest:guest@127.0.0.1:5672//", tmp_path)
        assert not spec.embedded
        assert spec.supports_confirms
        assert spec.transport_options["confirm_publish"] is True

    def test_an_unsupported_scheme_is_refused(self, tmp_path: Path) -> None:
        """A typo cannot silently fall back to a broker that loses messages on a crash."""
        with pytest.raises(TransportConfigError, match="redis"):
            broker_spec("redis://localhost:6379/0", tmp_path)

    def test_the_password_never_shows(self, tmp_path: Path) -> None:
        """Neither the spec's repr nor its display URL carries the password."""
        spec = broker_spec("amqp://bridge:s3cret-pw@rabbit.example:5672/prod", tmp_path)
        assert "s3cret-pw" not in repr(spec)
        assert "s3cret-pw" not in spec.display_url

    def test_connecting_creates_the_folders(self, tmp_path: Path) -> None:
        """Nothing is created until a connection is asked for."""
        spec = broker_spec(None, tmp_path)
        assert not (tmp_path / "broker").exists()
        spec.connection().release()
        assert (tmp_path / "broker" / "queue").is_dir()


class TestEmbeddedFlows:
    """Deliver, ack, dead-letter and retry on the filesystem broker."""

    def test_publish_inbound_from_another_publisher_reaches_the_handler(
        self, embedded: BrokerHarness
    ) -> None:
        """A separate Publisher (as the simulator would be) feeds the worker's queue."""
        handler = RecordingHandler(Ack())
        with Publisher(embedded.spec, embedded.topology) as simulator:
            simulator.publish_inbound(NOT_UTF8, "crime.recorded")
        embedded.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        assert handler.received[0].body == NOT_UTF8
        assert handler.received[0].routing_key == "crime.recorded"

    def test_ack_removes_the_message(self, embedded: BrokerHarness) -> None:
        """After Ack and a clean stop, nothing is put back on the queue."""
        handler = RecordingHandler(Ack())
        embedded.publisher.publish_inbound(b"{}", "crime.recorded")
        running = embedded.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 1)
        running.halt()
        assert embedded.depth(embedded.topology.work_queue) == 0

    def test_a_message_being_retried_is_kept_on_a_clean_stop(self, embedded: BrokerHarness) -> None:
        """A message the handler keeps retrying is on the work or retry queue once run() returns."""
        handler = RecordingHandler(Retry("busy"))
        embedded.publisher.publish_inbound(b"{}", "crime.recorded")
        running = embedded.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) >= 3)
        running.halt()
        queues = (embedded.topology.work_queue, embedded.topology.retry_queue)
        assert sum(embedded.depth(queue) for queue in queues) == 1

    def test_dead_letter_parks_the_original_bytes_with_all_five_headers(
        self, embedded: BrokerHarness
    ) -> None:
        """The embedded DLQ holds the body byte for byte and the x-rb-* headers."""
        handler = RecordingHandler(
            DeadLetter(
                reason=DeadLetterReason.SCHEMA_VIOLATION, detail="data.version missing", attempts=3
            )
        )
        embedded.publisher.publish_inbound(NOT_UTF8, "incident.recorded")
        running = embedded.start_consumer(handler)
        parked = embedded.fetch_eventually(embedded.topology.dead_letter_queue)
        running.halt()
        assert parked.body == NOT_UTF8
        assert parked.headers["x-rb-reason"] == "schema_violation"
        assert parked.headers["x-rb-detail"] == "data.version missing"
        assert parked.headers["x-rb-attempts"] == 3
        assert parked.headers["x-rb-original-routing-key"] == "incident.recorded"
        assert parked.headers["x-rb-failed-at"].endswith("Z")
        assert embedded.depth(embedded.topology.work_queue) == 0

    def test_a_replayed_message_that_fails_again_keeps_its_replay_history(
        self, embedded: BrokerHarness
    ) -> None:
        """x-rb-replay-count and x-rb-first-failed-at survive a second trip to the DLQ."""
        handler = RecordingHandler(
            DeadLetter(reason=DeadLetterReason.PROCESSING_ERROR, detail="still failing", attempts=5)
        )
        embedded.publisher.publish(
            exchange="",
            routing_key=embedded.topology.work_queue,
            body=b"{}",
            headers={
                "x-rb-original-routing-key": "crime.recorded",
                "x-rb-replay-count": 2,
                "x-rb-first-failed-at": "2026-11-20T10:00:00.000Z",
            },
        )
        running = embedded.start_consumer(handler)
        parked = embedded.fetch_eventually(embedded.topology.dead_letter_queue)
        running.halt()
        assert parked.headers["x-rb-replay-count"] == 2
        assert parked.headers["x-rb-first-failed-at"] == "2026-11-20T10:00:00.000Z"
        assert parked.headers["x-rb-reason"] == "processing_error"

    def test_retry_brings_the_message_back(self, embedded: BrokerHarness) -> None:
        """A copy returns through the retry queue unchanged, with its routing key and count."""
        handler = RecordingHandler(Retry("database busy", attempts=1), Ack())
        embedded.publisher.publish_inbound(NOT_UTF8, "consent.updated")
        running = embedded.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 2)
        running.halt()
        first, second = handler.received
        assert (first.attempts, second.attempts) == (0, 1)
        assert second.body == NOT_UTF8
        assert second.routing_key == "consent.updated"
        assert embedded.depth(embedded.topology.work_queue) == 0
        assert embedded.depth(embedded.topology.retry_queue) == 0

    def test_a_handler_exception_neither_crashes_nor_acks(self, embedded: BrokerHarness) -> None:
        """The consumer keeps running and the message comes back to the handler."""
        handler = RecordingHandler(ValueError("boom"), Ack())
        embedded.publisher.publish_inbound(b"{}", "crime.recorded")
        running = embedded.start_consumer(handler)
        assert wait_until(lambda: len(handler.received) == 2)
        assert running.alive
        assert running.errors == []

    def test_setting_the_stop_event_ends_run_promptly(self, embedded: BrokerHarness) -> None:
        """run() returns within about one drain timeout of the stop request."""
        running = embedded.start_consumer(RecordingHandler(Ack()), drain_timeout=1.0)
        took = running.halt()
        assert not running.alive
        assert took < 2.5


class TestEmbeddedFiles:
    def test_a_fetch_during_a_write_finds_nothing_and_the_message_is_kept(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """kombu's own writer creates the file empty first: a fetch in between read it empty,
        deleted it, and the message was lost. The fetch is forced into exactly that moment."""
        spec = broker_spec(None, tmp_path)
        queue_folder = str(spec.data_folders[0])
        real_open = builtins.open
        fetched_meanwhile: list[str] = []

        with spec.connection() as writing, spec.connection() as reading:
            writer, reader = writing.default_channel, reading.default_channel

            def open_then_fetch(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
                handle = real_open(file, mode, *args, **kwargs)
                if "w" in mode and str(file).startswith(queue_folder):
                    try:
                        fetched_meanwhile.append(repr(reader._get("q")))
                    except Empty:
                        fetched_meanwhile.append("nothing")
                    except ValueError as exc:  # the JSON of an empty file
                        fetched_meanwhile.append(type(exc).__name__)
                return handle

            monkeypatch.setattr(builtins, "open", open_then_fetch)
            writer._put("q", {"body": "complete"})
            monkeypatch.undo()

            assert fetched_meanwhile == ["nothing"]
            assert reader._get("q") == {"body": "complete"}
