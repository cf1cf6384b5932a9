"""Inbound data is taken as the contract types it, not coerced (contract §2, review finding 6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from referral_bridge.core.events import DeadLetterReason
from referral_bridge.core.parsing import InvalidMessage, parse_inbound
from referral_bridge.resources import SAMPLES

SAMPLE = SAMPLES / "crime-recorded-burglary.json"


def sample() -> dict[str, Any]:
    if not SAMPLE.exists():
        pytest.fail(f"the contract sample is missing: {SAMPLE}")
    document: dict[str, Any] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return document


def rejected(change: Callable[[dict[str, Any]], None]) -> InvalidMessage:
    document = sample()
    change(document["data"])
    with pytest.raises(InvalidMessage) as caught:
        parse_inbound(json.dumps(document).encode())
    return caught.value


def test_the_unchanged_sample_is_accepted() -> None:
    assert parse_inbound(json.dumps(sample()).encode()).id == sample()["id"]


@pytest.mark.parametrize(
    ("field_path", "change", "wording"),
    [
        ("data.version", lambda d: d.update(version="1"), "must be an integer"),
        ("data.reported_at", lambda d: d.update(reported_at=1795000000), "RFC 3339"),
        ("data.reported_at", lambda d: d.update(reported_at="2026-11-23"), "RFC 3339"),
        ("data.reported_at", lambda d: d.update(reported_at="2026-11-23T09:41:00"), "RFC 3339"),
        ("data.victims[0].deceased", lambda d: d["victims"][0].update(deceased="no"), "boolean"),
        ("data.victims[0].deceased", lambda d: d["victims"][0].update(deceased=0), "boolean"),
        # An extra flag's name is input: not echoed (issue 10), however harmless it looks.
        ("data.flags.<key>", lambda d: d["flags"].update(modern_slavery="yes"), "boolean"),
        (
            "data.victims[0].date_of_birth",
            lambda d: d["victims"][0].update(date_of_birth="1984-02-29T00:00:00Z"),
            "YYYY-MM-DD",
        ),
    ],
)
def test_a_value_of_the_wrong_json_type_is_a_schema_violation(
    field_path: str, change: Callable[[dict[str, Any]], None], wording: str
) -> None:
    failure = rejected(change)
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert failure.detail.startswith(f"{field_path}: ")
    assert wording in failure.detail


def test_the_same_victim_listed_twice_is_a_schema_violation() -> None:
    """Decisions are per victim id; a repeated victim would collide in the ledger later."""
    failure = rejected(lambda d: d["victims"].append(d["victims"][0]))
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert "listed twice" in failure.detail
    assert "Sample" not in failure.detail


def test_free_text_longer_than_the_ledger_keeps_is_a_schema_violation() -> None:
    """Too long for the ledger is bad input, not a processing error after five retries."""
    failure = rejected(lambda d: d["victims"][0]["contact"].update(safe_contact_notes="x" * 501))
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert "x" * 20 not in failure.detail
