"""The wire names: pinned to the contract, and written nowhere else in the package."""

from __future__ import annotations

import re
from pathlib import Path

from referral_bridge import wire

PACKAGE = Path(__file__).resolve().parents[2] / "referral_bridge"
#: A quoted wire name: one of our headers, or a content type we put on the wire or read off it.
WIRE_LITERAL = re.compile(
    r"""["'](x-rb-[a-z-]*|x-delivery-count|idempotency-key|application/"""
    r"""(?:cloudevents\+json|json|jose|octet-stream))["']""",
    re.IGNORECASE,
)


class TestTheNames:
    """Each name says what the contract (docs/spec, sections 4 and 6) says."""

    def test_content_types(self) -> None:
        assert (wire.CLOUDEVENTS_JSON, wire.JSON_CONTENT, wire.JOSE, wire.OCTET_STREAM) == (
            "application/cloudevents+json",
            "application/json",
            "application/jose",
            "application/octet-stream",
        )

    def test_dead_letter_headers(self) -> None:
        assert (
            wire.REASON_HEADER,
            wire.DETAIL_HEADER,
            wire.FAILED_AT_HEADER,
            wire.ATTEMPTS_HEADER,
            wire.ORIGINAL_ROUTING_KEY_HEADER,
            wire.REPLAY_COUNT_HEADER,
            wire.FIRST_FAILED_AT_HEADER,
        ) == (
            "x-rb-reason",
            "x-rb-detail",
            "x-rb-failed-at",
            "x-rb-attempts",
            "x-rb-original-routing-key",
            "x-rb-replay-count",
            "x-rb-first-failed-at",
        )

    def test_every_bridge_header_starts_with_the_prefix_inbound_messages_lose(self) -> None:
        headers = [
            value
            for name, value in vars(wire).items()
            if name.endswith("_HEADER") and isinstance(value, str) and value.startswith("x-rb")
        ]
        assert len(headers) == 9
        assert all(value.startswith(wire.BRIDGE_HEADER_PREFIX) for value in headers)


def test_no_other_module_spells_a_wire_name_out() -> None:
    spelled = {
        f"{path.relative_to(PACKAGE)}: {match.group(1)}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "wire.py"
        for match in WIRE_LITERAL.finditer(path.read_text(encoding="utf-8"))
    }
    assert spelled == set(), "import it from referral_bridge.wire"
