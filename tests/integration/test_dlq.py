"""Dead-letter tooling against real brokers: browse, replay and purge on RabbitMQ and embedded."""

# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these tests drive it directly.

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from referral_bridge.operator.deadletters import (
    DeadLetterFilter,
    DeadLetterMessage,
    DeadLetterNotFoundError,
    DeadLetterQueue,
    parse_duration,
)
from referral_bridge.transport.topology import Topology, dead_letter_queue_entity
from referral_bridge.wire import ORIGINAL_ROUTING_KEY_HEADER, REPLAY_COUNT_HEADER
from tests.integration.conftest import BrokerHarness

pytestmark = pytest.mark.integration

FAILED_AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NOT_UTF8 = b'{"name": "\xff\xfe"}'


def event_body(event_type: str = "crime.recorded", event_id: str = "event-1") -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "type": event_type}).encode()


def park(
    broker: BrokerHarness,
    body: bytes,
    *,
    reason: str = "schema_violation",
    routing_key: str = "crime.recorded",
    failed_at: datetime = FAILED_AT,
    message_id: str | None = None,
    extra_headers: Mapping[str, str | int] | None = None,
) -> None:
    """Dead-letter `body` as the consumer does: original bytes, the x-rb-* headers."""
    headers: dict[str, str | int] = {
        "x-rb-reason": reason,
        "x-rb-detail": f"{reason} detail",
        "x-rb-failed-at": failed_at.isoformat().replace("+00:00", "Z"),
        "x-rb-attempts": 1,
        **(extra_headers or {}),
    }
    broker.publisher.publish_dead_letter(
        body,
        headers,
        routing_key,
        content_type="application/cloudevents+json",
        content_encoding="utf-8",
        message_id=message_id,
    )


@pytest.fixture(params=["embedded", pytest.param("rabbit", marks=pytest.mark.integration)])
def broker(request: pytest.FixtureRequest) -> BrokerHarness:
    harness: BrokerHarness = request.getfixturevalue(str(request.param))
    return harness


@pytest.fixture
def queue(broker: BrokerHarness) -> DeadLetterQueue:
    return DeadLetterQueue(broker.spec, broker.topology)


def only(letters: list[DeadLetterMessage]) -> DeadLetterMessage:
    assert len(letters) == 1, [letter.summary() for letter in letters]
    return letters[0]


class TestBrowse:
    def test_a_dead_letter_is_read_with_its_reason_type_routing_key_attempts_and_size(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        body = event_body("incident.recorded")
        park(broker, body, reason="unknown_type", routing_key="incident.recorded")

        letter = only(queue.browse())

        assert letter.summary() == {
            "id": letter.id,
            "reason": "unknown_type",
            "event_type": "incident.recorded",
            "original_routing_key": "incident.recorded",
            "first_failed_at": "2026-11-23T10:00:00.000Z",
            "failed_at": "2026-11-23T10:00:00.000Z",
            "attempts": 1,
            "replay_count": 0,
            "size": len(body),
        }

    def test_the_body_is_read_byte_for_byte_even_when_it_is_not_utf8(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, NOT_UTF8, reason="invalid_encoding")

        assert only(queue.browse()).body == NOT_UTF8

    def test_browsing_leaves_every_dead_letter_on_the_queue(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        for number in range(3):
            park(broker, event_body(event_id=f"event-{number}"))

        first = [letter.id for letter in queue.browse()]
        second = [letter.id for letter in queue.browse()]

        assert broker.depth(broker.topology.dead_letter_queue) == 3
        assert sorted(first) == sorted(second)
        assert len(set(first)) == 3

    def test_a_count_header_of_non_ascii_digits_reads_as_none_not_a_crash(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        # '²'.isdigit() is True, and int('²') raises (issue 10, finding 5).
        park(broker, event_body(), extra_headers={"x-rb-attempts": "\u00b2"})

        assert only(queue.browse()).attempts is None

    def test_the_id_is_the_message_id_when_there_is_one(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(), message_id="msg-0001")

        assert only(queue.browse()).id == "msg-0001"

    def test_the_same_body_failed_at_two_times_gets_two_ids(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body())
        park(broker, event_body(), failed_at=FAILED_AT + timedelta(seconds=1))

        assert len({letter.id for letter in queue.browse()}) == 2

    def test_a_body_whose_type_is_not_a_type_name_has_no_event_type(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body("Jane Doe, 1 High Street"))

        assert only(queue.browse()).event_type is None

    def test_a_body_that_is_not_json_has_no_event_type(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, NOT_UTF8, reason="invalid_encoding")

        assert only(queue.browse()).event_type is None

    def test_filters_select_by_reason_type_and_failure_time(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body("crime.recorded", "a"), reason="too_large")
        park(broker, event_body("consent.updated", "b"), reason="too_large")
        later = FAILED_AT + timedelta(days=2)
        park(broker, event_body("crime.recorded", "c"), reason="schema_violation", failed_at=later)

        def reasons_and_types(selection: DeadLetterFilter) -> list[tuple[str, str | None]]:
            return sorted((letter.reason, letter.event_type) for letter in queue.browse(selection))

        assert reasons_and_types(DeadLetterFilter(reason="too_large")) == [
            ("too_large", "consent.updated"),
            ("too_large", "crime.recorded"),
        ]
        assert reasons_and_types(DeadLetterFilter(event_type="consent.updated")) == [
            ("too_large", "consent.updated")
        ]
        assert reasons_and_types(DeadLetterFilter(failed_since=later)) == [
            ("schema_violation", "crime.recorded")
        ]
        assert len(reasons_and_types(DeadLetterFilter(failed_before=later))) == 2

    def test_only_the_bridges_own_headers_have_their_values_shown(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(), extra_headers={"x-producer-note": "Jane Doe 07700 900123"})

        headers = only(queue.browse()).safe_headers()

        assert headers["x-producer-note"] == "[not shown]"
        assert headers["x-rb-reason"] == "schema_violation"


class TestReplay:
    def test_a_replay_republishes_the_original_body_with_its_routing_key_and_a_replay_count(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        body = event_body("consent.updated")
        park(broker, body, routing_key="consent.updated", message_id="msg-7")

        report = queue.replay(DeadLetterFilter(), publisher=broker.publisher)

        assert report.replayed == ("msg-7",)
        replayed = broker.fetch_eventually(broker.topology.work_queue)
        routing_key = (
            replayed.headers[ORIGINAL_ROUTING_KEY_HEADER]
            if broker.spec.embedded
            else replayed.delivery_info["routing_key"]
        )
        assert (bytes(replayed.body), routing_key) == (body, "consent.updated")
        assert replayed.headers[REPLAY_COUNT_HEADER] == 1
        assert replayed.properties.get("message_id") == "msg-7"

    def test_a_providers_outcome_goes_back_through_the_outcomes_exchange(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        """Its routing key is the provider's id, which only the outcomes exchange routes."""
        body = event_body("victim.referral.outcome")
        park(broker, body, reason="unknown_referral", routing_key="lancashire-victim-services")

        report = queue.replay(DeadLetterFilter(), publisher=broker.publisher)

        assert len(report.replayed) == 1
        replayed = broker.fetch_eventually(broker.topology.work_queue)
        assert bytes(replayed.body) == body
        if not broker.spec.embedded:
            assert replayed.delivery_info["exchange"] == broker.topology.outcomes_exchange

    def test_a_replayed_dead_letter_leaves_the_queue_and_the_others_stay(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(event_id="a"), reason="too_large")
        park(broker, event_body(event_id="b"), reason="schema_violation")

        queue.replay(DeadLetterFilter(reason="too_large"), publisher=broker.publisher)

        assert [letter.reason for letter in queue.browse()] == ["schema_violation"]
        assert broker.depth(broker.topology.work_queue) == 1

    def test_the_replay_count_goes_up_by_one_each_time(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(), extra_headers={REPLAY_COUNT_HEADER: 2})

        queue.replay(DeadLetterFilter(), publisher=broker.publisher)

        replayed = broker.fetch_eventually(broker.topology.work_queue)
        assert replayed.headers[REPLAY_COUNT_HEADER] == 3

    def test_a_dry_run_changes_nothing(self, broker: BrokerHarness, queue: DeadLetterQueue) -> None:
        park(broker, event_body())

        report = queue.replay(DeadLetterFilter(), publisher=broker.publisher, dry_run=True)

        assert len(report.selected) == 1
        assert report.replayed == ()
        assert broker.depth(broker.topology.dead_letter_queue) == 1
        assert broker.depth(broker.topology.work_queue) == 0

    def test_an_unknown_id_stops_the_replay_before_anything_is_done(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(), message_id="msg-1")

        with pytest.raises(DeadLetterNotFoundError, match="msg-404"):
            queue.replay(
                DeadLetterFilter(ids=frozenset({"msg-1", "msg-404"})), publisher=broker.publisher
            )

        assert broker.depth(broker.topology.dead_letter_queue) == 1
        assert broker.depth(broker.topology.work_queue) == 0

    def test_progress_is_reported_after_each_message(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        for number in range(3):
            park(broker, event_body(event_id=str(number)))
        seen: list[tuple[int, int]] = []

        queue.replay(
            DeadLetterFilter(),
            publisher=broker.publisher,
            on_progress=lambda done, total: seen.append((done, total)),
        )

        assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.integration
def test_on_rabbitmq_a_message_no_queue_receives_stays_dead_lettered(
    rabbit: BrokerHarness,
) -> None:
    park(rabbit, event_body(), routing_key="nothing.is.bound.to.this")
    queue = DeadLetterQueue(rabbit.spec, rabbit.topology)

    report = queue.replay(DeadLetterFilter(), publisher=rabbit.publisher)

    assert report.replayed == ()
    assert [letter_id for letter_id, _ in report.failed] == [only(queue.browse()).id]


@pytest.mark.integration
def test_on_rabbitmq_the_dead_letter_queue_has_no_message_ttl(rabbit: BrokerHarness) -> None:
    """Declaring it again with a TTL is refused: the broker's queue was declared without one."""
    park(rabbit, event_body())
    connection = rabbit.spec.connection()
    try:
        channel = connection.channel()
        with pytest.raises(connection.channel_errors):
            channel.queue_declare(
                queue=rabbit.topology.dead_letter_queue,
                durable=True,
                auto_delete=False,
                arguments={"x-message-ttl": 1000},
            )
    finally:
        connection.release()
    assert rabbit.depth(rabbit.topology.dead_letter_queue) == 1


def test_the_dead_letter_queue_is_declared_without_ttl_or_expiry() -> None:
    declared = dead_letter_queue_entity(Topology()).as_dict()

    assert not declared.get("queue_arguments")
    assert declared.get("expires") is None
    assert declared.get("message_ttl") is None


class TestPurge:
    def test_a_purge_records_each_message_before_removing_it(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(event_id="a"), message_id="msg-a")
        park(broker, event_body(event_id="b"), message_id="msg-b")
        recorded: list[str] = []

        report = queue.purge(
            DeadLetterFilter(ids=frozenset({"msg-a"})),
            before_remove=lambda letter: recorded.append(letter.id),
        )

        assert (recorded, report.purged) == (["msg-a"], ("msg-a",))
        assert [letter.id for letter in queue.browse()] == ["msg-b"]

    def test_when_recording_fails_nothing_is_removed(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        park(broker, event_body(event_id="a"))
        park(broker, event_body(event_id="b"))

        def fail(_letter: DeadLetterMessage) -> None:
            raise RuntimeError("ledger down")

        with pytest.raises(RuntimeError):
            queue.purge(DeadLetterFilter(), before_remove=fail)

        assert broker.depth(broker.topology.dead_letter_queue) == 2

    def test_when_the_removal_fails_the_failure_is_recorded_after_the_purge_record(
        self, embedded: BrokerHarness
    ) -> None:
        queue = DeadLetterQueue(embedded.spec, embedded.topology)
        park(embedded, event_body(event_id="a"), message_id="msg-a")
        folder = Path(str(embedded.spec.transport_options["data_folder_in"]))
        recorded: list[tuple[str, str]] = []

        def record_then_break_the_file(letter: DeadLetterMessage) -> None:
            recorded.append(("purged", letter.id))
            # A directory where the message file was: its removal fails (even as root).
            [path] = folder.glob(f"*.{embedded.topology.dead_letter_queue}.msg")
            path.unlink()
            path.mkdir()

        with pytest.raises(IsADirectoryError):
            queue.purge(
                DeadLetterFilter(),
                before_remove=record_then_break_the_file,
                on_remove_failed=lambda letter: recorded.append(("failed", letter.id)),
            )

        assert recorded == [("purged", "msg-a"), ("failed", "msg-a")]

    def test_purging_by_reason_and_age_keeps_newer_and_other_reasons(
        self, broker: BrokerHarness, queue: DeadLetterQueue
    ) -> None:
        old, new = FAILED_AT - timedelta(days=40), datetime.now(UTC)
        park(broker, event_body(event_id="old"), reason="too_large", failed_at=old)
        park(broker, event_body(event_id="new"), reason="too_large", failed_at=new)
        park(broker, event_body(event_id="other"), reason="invalid_json", failed_at=old)

        queue.purge(
            DeadLetterFilter(
                reason="too_large", failed_before=datetime.now(UTC) - parse_duration("30d")
            ),
            before_remove=lambda _letter: None,
        )

        remaining = sorted((letter.reason, letter.failed_at) for letter in queue.browse())
        assert [reason for reason, _ in remaining] == ["invalid_json", "too_large"]


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30d", timedelta(days=30)),
            ("12h", timedelta(hours=12)),
            ("90m", timedelta(minutes=90)),
            ("45s", timedelta(seconds=45)),
            ("2w", timedelta(weeks=2)),
        ],
    )
    def test_a_number_and_a_unit_is_a_duration(self, text: str, expected: timedelta) -> None:
        assert parse_duration(text) == expected

    @pytest.mark.parametrize("text", ["30", "d", "1.5d", "-3d", "30 days", ""])
    def test_anything_else_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(text)
