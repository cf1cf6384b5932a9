"""Hostile or oversized sealed referrals end in a documented SealingError, never anything else.

Each reproduces a finding of the hardening review (issue 10): an off-curve `epk` raised
ValueError, whitespace inside a segment binascii.Error, deeply nested JSON RecursionError, and a
contract-valid 50 KB referral sealed to a token joserfc's default 64 KiB limit refused as
"tampered". The fuzz tests keep the forgery probes that held as bounded regression tests.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from referral_bridge.core.limits import (
    MAX_SEALED_EVENT_BYTES,
    MAX_SEALED_TOKEN_BYTES,
    MAX_SIGNED_PAYLOAD_BYTES,
)
from referral_bridge.sealing import (
    KeySet,
    MalformedTokenError,
    SealingError,
    TooLargeError,
    open_event,
)
from tests.profiles import examples
from tests.unit.test_sealing import PAYLOAD, Parties, _b64url, _header

_PARTIES = Parties()
_TOKEN = _PARTIES.seal()


def _padded(size: int) -> dict[str, Any]:
    """A payload whose JSON is exactly `size` bytes."""
    base = {"referral_id": "ref-0001", "pad": ""}
    overhead = len(json.dumps(base, separators=(",", ":")))
    return {**base, "pad": "a" * (size - overhead)}


def _open_body(body: bytes | str) -> Any:
    return open_event(
        body,
        decryption_keys=KeySet.of(_PARTIES.provider),
        verification_keys=KeySet.of(_PARTIES.bridge.public_key),
    )


class TestSizes:
    def test_a_50_kb_referral_seals_and_opens(self) -> None:
        payload = _padded(50_000)
        assert _PARTIES.open(_PARTIES.seal(payload)) == payload

    def test_the_largest_payload_seals_to_a_token_within_the_opening_limit(self) -> None:
        payload = _padded(MAX_SIGNED_PAYLOAD_BYTES)
        token = _PARTIES.seal(payload)
        assert len(token) <= MAX_SEALED_TOKEN_BYTES
        assert _PARTIES.open(token) == payload

    def test_a_payload_over_the_limit_is_refused_as_too_large_when_sealing(self) -> None:
        with pytest.raises(TooLargeError, match="too large to seal"):
            _PARTIES.seal(_padded(MAX_SIGNED_PAYLOAD_BYTES + 1))

    def test_a_token_over_the_limit_is_reported_as_too_large(self) -> None:
        segment = "A" * MAX_SEALED_TOKEN_BYTES
        with pytest.raises(TooLargeError, match="too large"):
            _PARTIES.open(".".join([_TOKEN.split(".")[0], "A", "A", segment, "A"]))

    def test_an_event_over_the_limit_is_reported_as_too_large(self) -> None:
        with pytest.raises(TooLargeError):
            _open_body(b"{" + b" " * MAX_SEALED_EVENT_BYTES + b"}")


class TestWrongShapes:
    def test_an_off_curve_ephemeral_key_is_a_malformed_token(self) -> None:
        header = _header(_TOKEN)
        header["epk"]["y"] = header["epk"]["x"]
        forged = ".".join([_b64url(json.dumps(header).encode()), *_TOKEN.split(".")[1:]])
        with pytest.raises(MalformedTokenError, match="epk"):
            _PARTIES.open(forged)

    @pytest.mark.parametrize("segment", [1, 2, 3, 4])
    def test_whitespace_inside_a_segment_is_a_malformed_token(self, segment: int) -> None:
        parts = _TOKEN.split(".")
        parts[segment] = " " + parts[segment]
        with pytest.raises(MalformedTokenError, match="base64url"):
            _PARTIES.open(".".join(parts))

    def test_whitespace_around_the_token_is_tolerated(self) -> None:
        assert _PARTIES.open(" \n" + _TOKEN + "\n") == PAYLOAD

    def test_deeply_nested_event_json_is_a_malformed_token(self) -> None:
        body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        with pytest.raises(MalformedTokenError, match="not valid JSON"):
            _open_body(body)

    def test_a_deeply_nested_header_is_a_malformed_token(self) -> None:
        header = _b64url(b"[" * 100_000 + b"]" * 100_000)
        with pytest.raises(SealingError):
            _PARTIES.open(".".join([header, *_TOKEN.split(".")[1:]]))


_ALPHABET = st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.= \n\t{}\"'\x00é"
)


class TestFuzz:
    """Bounded fuzzing: whatever the bytes, opening ends in a SealingError or the payload."""

    @settings(
        max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        position=st.integers(min_value=0, max_value=len(_TOKEN) - 1),
        length=st.integers(min_value=0, max_value=8),
        replacement=st.text(_ALPHABET, max_size=8),
    )
    def test_a_mutated_token_fails_only_with_a_sealing_error(
        self, position: int, length: int, replacement: str
    ) -> None:
        mutated = _TOKEN[:position] + replacement + _TOKEN[position + length :]
        with contextlib.suppress(SealingError):
            assert _PARTIES.open(mutated) == PAYLOAD

    @settings(max_examples=examples(200), deadline=None)
    @given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def test_any_body_fails_only_with_a_sealing_error(self, body: bytes) -> None:
        with pytest.raises(SealingError):
            _open_body(body)

    @settings(max_examples=examples(100), deadline=None)
    @given(
        header=st.dictionaries(
            st.sampled_from(["alg", "enc", "kid", "cty", "epk", "zip", "crit", "x"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=10,
            ),
        )
    )
    def test_any_protected_header_fails_only_with_a_sealing_error(
        self, header: dict[str, Any]
    ) -> None:
        forged = ".".join([_b64url(json.dumps(header).encode()), *_TOKEN.split(".")[1:]])
        with pytest.raises(SealingError):
            _PARTIES.open(forged)

    @settings(max_examples=examples(150), deadline=None)
    @given(
        epk=st.dictionaries(
            st.sampled_from(["kty", "crv", "x", "y", "d", "kid"]),
            st.sampled_from(["EC", "P-256", "P-384", "OKP", ""])
            | st.text(_ALPHABET, max_size=50)
            | st.integers(),
        )
    )
    def test_any_ephemeral_key_fails_only_with_a_sealing_error(self, epk: dict[str, Any]) -> None:
        header = {**_header(_TOKEN), "epk": epk}
        forged = ".".join([_b64url(json.dumps(header).encode()), *_TOKEN.split(".")[1:]])
        with pytest.raises(SealingError):
            _PARTIES.open(forged)
