"""A consumed message keeps none of a producer's `x-rb-*` headers (issue 10, finding 7)."""

from __future__ import annotations

from referral_bridge.transport.consumer import inbound_headers
from referral_bridge.wire import FIRST_FAILED_AT_HEADER, REPLAY_COUNT_HEADER

HOSTILE = "Jane Doe 07700 900456 \x1b[2J"


def test_a_producers_x_rb_headers_are_dropped_and_others_kept() -> None:
    kept = inbound_headers(
        {
            "x-rb-reason": HOSTILE,
            "X-RB-Detail": HOSTILE,
            "x-rb-original-routing-key": "crime.recorded",
            "traceparent": "00-abc-def-01",
        }
    )

    assert kept == {"traceparent": "00-abc-def-01"}


def test_the_replay_headers_are_kept_when_well_formed() -> None:
    kept = inbound_headers({REPLAY_COUNT_HEADER: 2, FIRST_FAILED_AT_HEADER: "2026-11-23T10:00:00Z"})

    assert kept == {REPLAY_COUNT_HEADER: 2, FIRST_FAILED_AT_HEADER: "2026-11-23T10:00:00.000Z"}


def test_malformed_replay_headers_are_dropped() -> None:
    for count, first_failed in (
        (HOSTILE, HOSTILE),
        (True, "2026-11-23"),  # a boolean is no count; a date without offset is no timestamp
        (-1, "2026-11-23T10:00:00"),
        (10**9, "x" * 1000),
    ):
        kept = inbound_headers({REPLAY_COUNT_HEADER: count, FIRST_FAILED_AT_HEADER: first_failed})
        assert kept == {}, (count, first_failed)
