"""Tests for parse_inbound: each dead-letter reason, their order, and PII-free details."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from referral_bridge.core.events import (
    ConsentUpdated,
    CrimeRecorded,
    DeadLetterReason,
    EventType,
    InboundEvent,
    Victim,
)
from referral_bridge.core.parsing import (
    MAX_DEPTH,
    InvalidMessage,
    parse_inbound,
    translate_validation_error,
)
from tests.profiles import examples

MARKER = "Zebedee Quixote-Marker"


def consent_event(**overrides: Any) -> dict[str, Any]:
    """A valid consent.updated message; keyword arguments replace (or, as None, drop) attributes."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "c3a1e8d2-9f40-4d6b-a2c1-55e0f7b9d812",
        "source": "urn:force:test:victim-care-unit",
        "type": "consent.updated",
        "time": "2026-11-23T14:12:00Z",
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": {
            "case_ref": "LC-26-0114233",
            "victim_id": "P-00918273",
            "referral": "given",
            "recorded_at": "2026-11-23T14:10:00Z",
            "recorded_by": "PC 4412",
            "lawful_basis": "consent",
        },
    }
    for key, value in overrides.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def victim(**overrides: Any) -> dict[str, Any]:
    """A valid person victim; keyword arguments replace fields."""
    return {
        "victim_id": "P-00918273",
        "kind": "person",
        "name": {"title": "Ms", "given": "Sample", "family": "Person"},
        "date_of_birth": "1984-02-29",
        "deceased": False,
        "relationship": None,
        "contact": {
            "phone": "07700 900123",
            "email": "sample.person@example.org",
            "address": {"lines": ["1 Example Street"], "postcode": "PR1 1AA"},
            "preferred": "phone",
            "safe_to_contact": True,
            "safe_contact_notes": None,
        },
        "needs": {"vulnerable": False, "intimidated": False, "persistently_targeted": False},
        "consent": {"referral": "not_asked"},
        **overrides,
    }


def crime_event(*victims: dict[str, Any]) -> dict[str, Any]:
    """A valid crime.recorded message with the given victims."""
    return consent_event(
        type="crime.recorded",
        data={
            "crime_ref": "LC-26-0114233",
            "version": 1,
            "reported_at": "2026-11-23T09:41:00Z",
            "recorded_at": "2026-11-23T10:04:12Z",
            "status": "recorded",
            "offence": {"ho_class": "28E", "label": "Burglary", "category": "burglary"},
            "officer": {
                "collar": "PC 1",
                "name": "A. Officer",
                "unit": "Response",
                "email": "a@b.c",
            },
            "victims": list(victims),
        },
    )


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def rejection(body: bytes, **kwargs: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        parse_inbound(body, **kwargs)
    return caught.value


class TestAcceptedMessages:
    def test_a_valid_consent_update_becomes_a_typed_event(self) -> None:
        event = parse_inbound(encode(consent_event()))
        assert event.type is EventType.CONSENT_UPDATED
        assert isinstance(event.data, ConsentUpdated)
        assert event.schemaversion == 1

    def test_a_valid_crime_keeps_every_victim(self) -> None:
        event = parse_inbound(encode(crime_event(victim(), victim(victim_id="P-2"))))
        assert isinstance(event.data, CrimeRecorded)
        assert [v.victim_id for v in event.data.victims] == ["P-00918273", "P-2"]

    def test_unknown_envelope_attributes_are_ignored(self) -> None:
        event = parse_inbound(encode(consent_event(traceparent="00-abc-def-01")))
        assert event.id == "c3a1e8d2-9f40-4d6b-a2c1-55e0f7b9d812"

    def test_datacontenttype_may_be_absent(self) -> None:
        event = parse_inbound(encode(consent_event(datacontenttype=None)))
        assert event.type is EventType.CONSENT_UPDATED

    def test_datacontenttype_may_carry_a_charset_parameter(self) -> None:
        body = encode(consent_event(datacontenttype="application/json; charset=utf-8"))
        assert parse_inbound(body).type is EventType.CONSENT_UPDATED

    def test_a_body_of_exactly_the_limit_is_accepted(self) -> None:
        body = encode(consent_event())
        assert parse_inbound(body, max_bytes=len(body)).type is EventType.CONSENT_UPDATED


class TestTooLarge:
    def test_a_body_over_the_limit_is_too_large(self) -> None:
        body = encode(consent_event())
        assert rejection(body, max_bytes=len(body) - 1).reason is DeadLetterReason.TOO_LARGE

    def test_size_is_checked_before_the_encoding(self) -> None:
        assert rejection(b"\xff" * 20, max_bytes=10).reason is DeadLetterReason.TOO_LARGE


class TestInvalidEncoding:
    def test_bytes_that_are_not_utf8_are_invalid_encoding(self) -> None:
        failure = rejection(b'{"id": "\xff"}')
        assert failure.reason is DeadLetterReason.INVALID_ENCODING
        assert "byte 8" in failure.detail

    def test_a_byte_order_mark_is_invalid_encoding(self) -> None:
        body = b"\xef\xbb\xbf" + encode(consent_event())
        assert rejection(body).reason is DeadLetterReason.INVALID_ENCODING


class TestInvalidJson:
    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b'{"id": ', id="truncated"),
            pytest.param(b"{'id': 1}", id="single quotes"),
            pytest.param(b'{"a": 1, "a": 2}', id="duplicate key"),
            pytest.param(b'{"a": NaN}', id="NaN"),
            pytest.param(b'{"a": -Infinity}', id="infinity"),
            pytest.param(b'{"a": 1e999}', id="float overflow"),
            pytest.param(b'{"a": 9223372036854775808}', id="integer beyond 64 bits"),
            pytest.param(b'{"a": ' + b"9" * 5000 + b"}", id="integer of 5000 digits"),
            pytest.param(b'{"a": "\\ud800"}', id="lone surrogate"),
        ],
    )
    def test_malformed_json_is_invalid_json(self, body: bytes) -> None:
        assert rejection(body).reason is DeadLetterReason.INVALID_JSON

    def test_duplicate_keys_inside_data_are_invalid_json(self) -> None:
        body = encode(consent_event()).replace(
            b'"referral": "given"', b'"referral": "given", "referral": "declined"'
        )
        assert rejection(body).reason is DeadLetterReason.INVALID_JSON

    def test_nesting_beyond_the_limit_is_invalid_json(self) -> None:
        body = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
        assert rejection(body).reason is DeadLetterReason.INVALID_JSON

    def test_nesting_beyond_the_interpreter_stack_is_invalid_json(self) -> None:
        body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        assert rejection(body).reason is DeadLetterReason.INVALID_JSON

    def test_the_detail_gives_the_position_of_a_syntax_error(self) -> None:
        assert rejection(b'{\n  "id" 1}').detail == "Expecting ':' delimiter at line 2 column 8"


class TestNotCloudEvent:
    @pytest.mark.parametrize(
        "document",
        [
            pytest.param([consent_event()], id="array"),
            pytest.param("consent.updated", id="string"),
            pytest.param(consent_event(specversion="0.3"), id="old specversion"),
            pytest.param(consent_event(specversion=1.0), id="numeric specversion"),
            pytest.param(consent_event(id=None), id="no id"),
            pytest.param(consent_event(id=""), id="empty id"),
            pytest.param(consent_event(id=42), id="numeric id"),
            pytest.param(consent_event(source=None), id="no source"),
            pytest.param(consent_event(type=None), id="no type"),
        ],
    )
    def test_a_body_without_the_required_attributes_is_not_a_cloudevent(
        self, document: Any
    ) -> None:
        assert rejection(encode(document)).reason is DeadLetterReason.NOT_CLOUDEVENT

    def test_attribute_names_are_case_sensitive(self) -> None:
        document = consent_event(type=None, Type="consent.updated")
        assert rejection(encode(document)).reason is DeadLetterReason.NOT_CLOUDEVENT

    def test_the_detail_names_each_missing_attribute(self) -> None:
        detail = rejection(encode(consent_event(id=None, source=None))).detail
        assert detail == "id: required field missing; source: required field missing"

    def test_a_broken_envelope_is_reported_before_an_unknown_type(self) -> None:
        document = consent_event(id=None, type="parcel.delivered")
        assert rejection(encode(document)).reason is DeadLetterReason.NOT_CLOUDEVENT


class TestUnknownKeys:
    def test_an_extra_flag_key_is_not_echoed(self) -> None:
        # Extra flags are allowed as booleans; a key shaped like a field name used to be shown.
        document = crime_event(victim())
        document["data"]["flags"] = {"jane_doe_07700900456": "yes"}
        failure = rejection(encode(document))
        assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
        assert failure.detail == "data.flags.<key>: must be a boolean"


class TestUnknownType:
    def test_a_type_the_bridge_does_not_handle_is_unknown(self) -> None:
        failure = rejection(encode(consent_event(type="parcel.delivered")))
        assert failure.reason is DeadLetterReason.UNKNOWN_TYPE
        assert "known types: consent.updated" in failure.detail

    def test_an_unknown_type_is_never_echoed_however_harmless_it_looks(self) -> None:
        # A type shaped like one can still carry a name and a phone number (issue 10).
        failure = rejection(encode(consent_event(type="jane.doe.07700900456")))
        assert failure.reason is DeadLetterReason.UNKNOWN_TYPE
        assert "jane" not in failure.detail
        assert "07700900456" not in failure.detail

    def test_a_type_is_matched_case_sensitively(self) -> None:
        failure = rejection(encode(consent_event(type="Consent.Updated")))
        assert failure.reason is DeadLetterReason.UNKNOWN_TYPE

    def test_a_type_that_could_be_free_text_is_not_echoed(self) -> None:
        failure = rejection(encode(consent_event(type=MARKER)))
        assert MARKER not in failure.detail

    def test_an_unknown_type_is_reported_before_its_version(self) -> None:
        document = consent_event(type="parcel.delivered", schemaversion=None)
        assert rejection(encode(document)).reason is DeadLetterReason.UNKNOWN_TYPE


class TestUnsupportedVersion:
    @pytest.mark.parametrize(
        "schemaversion",
        [
            pytest.param(None, id="missing"),
            pytest.param(2, id="newer"),
            pytest.param(0, id="zero"),
            pytest.param("1", id="string"),
            pytest.param(True, id="boolean"),
            pytest.param(1.0, id="float"),
        ],
    )
    def test_a_schemaversion_other_than_integer_1_is_unsupported(self, schemaversion: Any) -> None:
        document = consent_event(schemaversion=schemaversion)
        assert rejection(encode(document)).reason is DeadLetterReason.UNSUPPORTED_VERSION

    def test_the_detail_names_the_supported_versions(self) -> None:
        detail = rejection(encode(consent_event(schemaversion=2))).detail
        assert detail == "schemaversion 2 is not supported for consent.updated; supported: 1"

    def test_an_unsupported_version_is_reported_before_a_schema_violation(self) -> None:
        document = consent_event(schemaversion=2, data={"nonsense": True})
        assert rejection(encode(document)).reason is DeadLetterReason.UNSUPPORTED_VERSION


class TestSchemaViolation:
    @pytest.mark.parametrize(
        "document",
        [
            pytest.param(consent_event(data=None), id="no data"),
            pytest.param(consent_event(data=[1]), id="data not an object"),
            pytest.param(consent_event(datacontenttype="text/plain"), id="not JSON content"),
            pytest.param(consent_event(time="yesterday"), id="bad time"),
            pytest.param(consent_event(time="2026-11-23T14:12:00"), id="time without offset"),
            pytest.param(crime_event(victim(kind="robot")), id="bad enum"),
            pytest.param(crime_event(victim(shoe_size=9)), id="unknown data field"),
        ],
    )
    def test_data_that_breaks_its_schema_is_a_schema_violation(self, document: Any) -> None:
        assert rejection(encode(document)).reason is DeadLetterReason.SCHEMA_VIOLATION

    def test_a_nul_character_in_a_string_is_a_schema_violation(self) -> None:
        document = consent_event()
        document["data"]["lawful_basis"] = "consent\x00"
        assert rejection(encode(document)).reason is DeadLetterReason.SCHEMA_VIOLATION

    def test_field_names_in_data_are_case_sensitive(self) -> None:
        document = consent_event()
        document["data"]["Victim_ID"] = document["data"].pop("victim_id")
        assert rejection(encode(document)).reason is DeadLetterReason.SCHEMA_VIOLATION

    def test_the_detail_locates_the_bad_field(self) -> None:
        failure = rejection(encode(crime_event(victim(), victim(date_of_birth="29th Feb"))))
        assert failure.detail == "data.victims[1].date_of_birth: must be a date as YYYY-MM-DD"


class TestDetailsHoldNoPersonalData:
    @pytest.mark.parametrize(
        "field",
        ["date_of_birth", "kind", "deceased", "relationship", "name", "needs"],
    )
    def test_an_invalid_value_is_not_echoed(self, field: str) -> None:
        failure = rejection(encode(crime_event(victim(**{field: MARKER}))))
        assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
        assert MARKER not in failure.detail

    def test_a_free_text_key_is_masked_in_the_location(self) -> None:
        failure = rejection(encode(crime_event(victim(**{MARKER: 1}))))
        assert failure.detail == "data.victims[0].<key>: unexpected field"

    def test_an_unknown_key_is_masked_however_field_like_it_looks(self) -> None:
        # Only the contract's own field names are shown (issue 10: `jane_doe_07700900456`).
        failure = rejection(encode(crime_event(victim(middle_name="x"))))
        assert failure.detail == "data.victims[0].<key>: unexpected field"

    def test_at_most_ten_problems_are_listed(self) -> None:
        failure = rejection(encode(consent_event(data={f"field_{i}": i for i in range(15)})))
        assert failure.detail.count(";") == 10
        assert failure.detail.endswith("and 10 more problems")

    def test_a_rejection_reads_as_reason_then_detail(self) -> None:
        failure = InvalidMessage(DeadLetterReason.TOO_LARGE, "body is 9 bytes; the limit is 8")
        assert str(failure) == "too_large: body is 9 bytes; the limit is 8"


class TestTranslateValidationError:
    def test_the_prefix_starts_every_location(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Victim.model_validate(victim(date_of_birth=MARKER))
        translated = translate_validation_error(caught.value, prefix="victim")
        assert translated == "victim.date_of_birth: must be a date as YYYY-MM-DD"

    def test_an_empty_prefix_gives_bare_locations(self) -> None:
        with pytest.raises(ValidationError) as caught:
            Victim.model_validate(victim(kind=MARKER))
        assert translate_validation_error(caught.value, prefix="") == (
            "kind: not one of the allowed values"
        )


# --- Property tests: nothing but InvalidMessage ever escapes ------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
envelope_keys = st.sampled_from(
    ["specversion", "id", "source", "type", "time", "schemaversion", "datacontenttype", "data"]
)


def outcome(body: bytes) -> InboundEvent | InvalidMessage:
    """Parse `body`, returning the rejection instead of raising it; anything else propagates."""
    try:
        return parse_inbound(body)
    except InvalidMessage as exc:
        return exc


def parses_or_rejects(body: bytes) -> None:
    """Assert `body` gives an event or a well-formed rejection, and no other exception."""
    result = outcome(body)
    assert isinstance(result, InboundEvent) or (
        result.detail and isinstance(result.reason, DeadLetterReason)
    )


def set_at_random_path(document: Any, path: list[int], value: Any) -> Any:
    """Return a copy of `document` with the node that `path` leads to replaced by `value`."""
    document = copy.deepcopy(document)
    node = document
    for position, step in enumerate(path):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[step % len(keys)]
        child = node[key]
        if position == len(path) - 1 or not isinstance(child, dict | list):
            node[key] = value
            break
        node = child
    return document


class TestNothingButInvalidMessageEscapes:
    @given(st.binary(max_size=2000))
    def test_arbitrary_bytes(self, body: bytes) -> None:
        parses_or_rejects(body)

    @given(json_values)
    def test_arbitrary_json(self, document: Any) -> None:
        parses_or_rejects(json.dumps(document).encode())

    @given(st.dictionaries(envelope_keys, json_values))
    def test_arbitrary_envelopes(self, document: dict[str, Any]) -> None:
        parses_or_rejects(json.dumps(document).encode())

    @settings(max_examples=examples(300))
    @given(st.lists(st.integers(min_value=0, max_value=50), max_size=8), json_values)
    def test_a_valid_crime_with_one_node_replaced(self, path: list[int], value: Any) -> None:
        document = set_at_random_path(crime_event(victim(), victim()), path, value)
        parses_or_rejects(json.dumps(document).encode())

    @settings(max_examples=examples(300))
    @given(st.lists(st.integers(min_value=0, max_value=50), max_size=8))
    def test_a_marker_put_anywhere_in_a_crime_never_reaches_the_detail(
        self, path: list[int]
    ) -> None:
        document = set_at_random_path(crime_event(victim(), victim()), path, MARKER)
        result = outcome(json.dumps(document).encode())
        assert isinstance(result, InboundEvent) or MARKER not in result.detail
