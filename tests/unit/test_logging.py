"""Tests for the logging set-up: allow-listed keys, scrubbing, safe exceptions, JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import structlog
from pydantic import ValidationError
from structlog.testing import capture_logs

from referral_bridge.core.events import DeadLetterReason, Victim
from referral_bridge.logging import (
    REDACTED,
    configure_logging,
    describe_exception,
    redact,
    render_exception,
    scrub,
)

MARKER = "Zebedee Quixote-Marker"
EMAIL = "zebedee.quixote@example.org"


def run_redact(**event: Any) -> dict[str, Any]:
    return dict(redact(None, "info", event))


def marker_validation_error() -> ValidationError:
    """A ValidationError whose input (and so its default text) holds MARKER."""
    try:
        Victim.model_validate({"victim_id": MARKER, "kind": MARKER, "name": {"family": MARKER}})
    except ValidationError as exc:
        return exc
    raise AssertionError("the model accepted an invalid victim")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Configure JSON logging into a buffer; restore the logging set-up afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_library_levels = {name: logging.getLogger(name).level for name in ("kombu", "amqp")}
    buffer = io.StringIO()
    configure_logging(json=True, level="INFO", stream=buffer)
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_library_levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class TestScrub:
    @pytest.mark.parametrize(
        "text",
        [
            EMAIL,
            "07700 900123",
            "07700900123",
            "+44 7700 900123",
            "+44 (0)20 7946 0018",
            "(01772) 123456",
            "020-7946-0018",
            "PR1 1AA",
            "sw1a 1aa",
            "M11AE",
            "1984-02-29",
            "29/02/1984",
            "1/2/1984",
        ],
    )
    def test_personal_data_patterns_are_replaced(self, text: str) -> None:
        assert scrub(f"before {text} after") == f"before {REDACTED} after"

    @pytest.mark.parametrize(
        "text",
        [
            "LC-26-0114233",
            "P-00918273",
            "INC-20261123-0311",
            "7f1c2f0e-5a44-4b8e-9d7e-1f2a3b4c5d60",
            "2026-11-23T10:05:00Z",
            "2026-11-23 10:05:00+00:00",
            "ECDH-ES+A256KW A256GCM ES256",
            "lancashire-victim-services",
            "PC 4412",
        ],
    )
    def test_identifiers_and_timestamps_are_kept(self, text: str) -> None:
        assert scrub(text) == text


class TestRedact:
    def test_a_value_under_an_unknown_key_is_redacted(self) -> None:
        assert run_redact(event="x", victim_name=MARKER)["victim_name"] == REDACTED

    def test_a_value_under_an_allowed_key_is_kept(self) -> None:
        assert run_redact(event="x", case_ref="LC-26-0114233")["case_ref"] == "LC-26-0114233"

    def test_an_email_under_an_allowed_key_is_scrubbed(self) -> None:
        assert run_redact(detail=f"sent to {EMAIL}")["detail"] == f"sent to {REDACTED}"

    def test_a_date_of_birth_under_an_allowed_key_is_scrubbed(self) -> None:
        assert run_redact(detail="born 29/02/1984")["detail"] == f"born {REDACTED}"

    def test_the_event_text_itself_is_scrubbed(self) -> None:
        assert run_redact(event="call 07700 900123")["event"] == f"call {REDACTED}"

    def test_a_date_object_is_scrubbed_like_its_text(self) -> None:
        assert run_redact(detail=date(1984, 2, 29))["detail"] == REDACTED

    def test_a_timestamp_object_is_kept(self) -> None:
        moment = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)
        assert run_redact(due_by=moment)["due_by"] == "2026-11-23 10:05:00+00:00"

    def test_the_timestamp_key_is_not_scrubbed(self) -> None:
        assert run_redact(timestamp="2026-11-23")["timestamp"] == "2026-11-23"

    def test_numbers_booleans_and_none_are_kept_as_they_are(self) -> None:
        redacted = run_redact(count=3, duration_ms=1.5, dry_run=True, size=None)
        assert redacted == {"count": 3, "duration_ms": 1.5, "dry_run": True, "size": None}

    def test_an_enum_is_logged_as_its_value(self) -> None:
        assert run_redact(reason=DeadLetterReason.TOO_LARGE)["reason"] == "too_large"

    def test_a_mapping_under_an_allowed_key_is_redacted(self) -> None:
        assert run_redact(detail={"name": MARKER})["detail"] == REDACTED

    def test_bytes_under_an_allowed_key_are_redacted(self) -> None:
        assert run_redact(detail=MARKER.encode())["detail"] == REDACTED

    def test_a_list_under_an_allowed_key_is_scrubbed_item_by_item(self) -> None:
        assert run_redact(queue=["events", EMAIL])["queue"] == ["events", REDACTED]

    def test_a_validation_error_value_does_not_leak_its_input(self) -> None:
        rendered = run_redact(error=marker_validation_error())["error"]
        assert MARKER not in rendered
        assert "kind: not one of the allowed values" in rendered

    def test_processor_meta_keys_pass_through_untouched(self) -> None:
        record = object()
        assert run_redact(_record=record)["_record"] is record

    def test_capture_logs_shows_what_a_log_call_keeps(self) -> None:
        with capture_logs(processors=[redact]) as captured:
            structlog.get_logger().info("referral.sent", referral_id="r-1", phone="07700 900123")
        assert captured == [
            {"event": "referral.sent", "referral_id": "r-1", "phone": REDACTED, "log_level": "info"}
        ]


class TestRenderException:
    def test_exc_info_true_becomes_a_type_and_a_scrubbed_message(self) -> None:
        try:
            raise RuntimeError(f"could not reach {EMAIL}")
        except RuntimeError:
            event = dict(render_exception(None, "error", {"event": "x", "exc_info": True}))
        assert event == {
            "event": "x",
            "error_type": "RuntimeError",
            "error": f"could not reach {REDACTED}",
        }

    def test_an_exc_info_tuple_is_understood(self) -> None:
        exc = KeyError("victims")
        event = dict(render_exception(None, "error", {"exc_info": (KeyError, exc, None)}))
        assert event["error_type"] == "KeyError"

    def test_a_validation_error_is_replaced_by_its_translation(self) -> None:
        event = dict(render_exception(None, "error", {"exc_info": marker_validation_error()}))
        assert MARKER not in event["error"]
        assert "kind: not one of the allowed values" in event["error"]

    def test_stack_info_is_dropped(self) -> None:
        event = dict(render_exception(None, "info", {"event": "x", "stack_info": "File ..."}))
        assert event == {"event": "x"}

    def test_an_exception_with_a_broken_str_is_still_described(self) -> None:
        class UnprintableError(Exception):
            def __str__(self) -> str:
                raise RuntimeError

        assert describe_exception(UnprintableError()) == "(message unavailable)"


class TestConfiguredOutput:
    def test_each_event_is_one_json_object_per_line(self, stream: io.StringIO) -> None:
        log = structlog.get_logger("referral_bridge.test")
        log.info("first", detail="line one\nline two")
        log.warning("second")
        assert [line["event"] for line in lines(stream)] == ["first", "second"]

    def test_an_event_carries_level_logger_and_a_utc_iso_timestamp(
        self, stream: io.StringIO
    ) -> None:
        structlog.get_logger("referral_bridge.test").info("started")
        (line,) = lines(stream)
        assert (line["level"], line["logger"]) == ("info", "referral_bridge.test")
        assert datetime.fromisoformat(line["timestamp"]).utcoffset() == UTC.utcoffset(None)

    def test_a_marker_under_an_unknown_key_never_reaches_the_stream(
        self, stream: io.StringIO
    ) -> None:
        structlog.get_logger().info("decided", case_ref="LC-1", victim_name=MARKER)
        assert MARKER not in stream.getvalue()
        assert lines(stream)[0]["victim_name"] == REDACTED

    def test_an_exception_message_is_scrubbed_and_has_no_traceback(
        self, stream: io.StringIO
    ) -> None:
        try:
            raise ValueError(f"bad contact {EMAIL}")
        except ValueError:
            structlog.get_logger().exception("failed")
        assert EMAIL not in stream.getvalue()
        assert "Traceback" not in stream.getvalue()
        assert lines(stream)[0]["error_type"] == "ValueError"

    def test_a_validation_error_never_reaches_the_stream_with_its_input(
        self, stream: io.StringIO
    ) -> None:
        try:
            raise marker_validation_error()
        except ValidationError:
            structlog.get_logger().exception("rejected")
        assert MARKER not in stream.getvalue()
        assert lines(stream)[0]["error_type"] == "ValidationError"

    def test_stdlib_arguments_are_redacted_but_numbers_kept(self, stream: io.StringIO) -> None:
        logging.getLogger("kombu.messaging").warning(
            "Can't decode message body: %r, attempt %d", MARKER.encode(), 3
        )
        assert lines(stream)[0]["event"] == f"Can't decode message body: '{REDACTED}', attempt 3"

    def test_an_exception_logged_through_stdlib_is_reduced_to_type_and_message(
        self, stream: io.StringIO
    ) -> None:
        try:
            raise ConnectionError(f"refused for {EMAIL}")
        except ConnectionError:
            logging.getLogger("amqp").error("connection lost", exc_info=True)
        (line,) = lines(stream)
        assert (line["error_type"], line["error"]) == ("ConnectionError", f"refused for {REDACTED}")

    def test_library_info_logs_are_suppressed(self, stream: io.StringIO) -> None:
        logging.getLogger("kombu.connection").info("connected")
        assert stream.getvalue() == ""

    def test_events_below_the_configured_level_are_dropped(self, stream: io.StringIO) -> None:
        structlog.get_logger().debug("noisy")
        assert stream.getvalue() == ""

    def test_configuring_twice_does_not_duplicate_output(self, stream: io.StringIO) -> None:
        configure_logging(json=True, stream=stream)
        structlog.get_logger().info("once")
        assert len(lines(stream)) == 1

    @pytest.mark.usefixtures("stream")
    def test_capture_logs_still_works_after_configuration(self) -> None:
        with capture_logs() as captured:
            structlog.get_logger().info("captured", case_ref="LC-1")
        assert captured == [{"event": "captured", "case_ref": "LC-1", "log_level": "info"}]


class TestRendererChoice:
    def test_a_stream_that_is_not_a_terminal_gets_json(self, stream: io.StringIO) -> None:
        configure_logging(stream=stream)
        structlog.get_logger().info("auto")
        assert lines(stream)[0]["event"] == "auto"

    def test_the_console_renderer_is_not_json(self, stream: io.StringIO) -> None:
        configure_logging(json=False, stream=stream)
        structlog.get_logger().info("console", case_ref="LC-1")
        output = stream.getvalue()
        assert "console" in output
        assert not output.lstrip().startswith("{")

    def test_an_unknown_level_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
            configure_logging(level="LOUD", stream=io.StringIO())
