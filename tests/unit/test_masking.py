"""Schema-driven masking of inbound bodies: nothing personal shows, the rest helps an operator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from referral_bridge.core.events import (
    Address,
    ConsentState,
    Contact,
    ContactMethod,
    Name,
    Needs,
    Relationship,
    Victim,
    VictimConsent,
    VictimKind,
)
from referral_bridge.masking import (
    MASKED,
    MASKED_UNKNOWN,
    PERSONAL_FIELDS,
    mask_body,
    mask_document,
)
from tests.unit.factories import make_crime, make_victim

Path = tuple[str | int, ...]

#: Where a victim's personal data lives, relative to the victim (pinned here on purpose).
VICTIM_PERSONAL: tuple[Path, ...] = (
    ("name",),
    ("date_of_birth",),
    ("contact",),
    ("needs", "language"),
    ("needs", "accessibility"),
    ("consent", "recorded_by"),
)


def envelope(event_type: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "event-1",
        "source": "urn:test",
        "type": event_type,
        "time": "2026-11-23T10:00:00Z",
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": data,
        **extra,
    }


def crime_document(*victims: Victim) -> dict[str, Any]:
    return envelope("crime.recorded", make_crime(*victims).model_dump(mode="json"))


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path, value


def at(document: Any, path: Path) -> Any:
    for step in path:
        document = document[step]
    return document


#: Every generated personal string starts with this, so a leak is easy to spot.
PII = "PII:"
text = st.text(min_size=1, max_size=30).map(lambda value: PII + value)
optional_text = st.none() | text


@st.composite
def victims(draw: st.DrawFn) -> Victim:
    """A valid Victim with generated values in every personal field."""
    consent = draw(st.sampled_from(ConsentState))
    return Victim(
        victim_id=draw(st.from_regex(r"\AP-[0-9]{1,8}\Z")),
        kind=draw(st.sampled_from(VictimKind)),
        name=Name(
            title=draw(optional_text),
            given=draw(optional_text),
            family=draw(text),
            contact_person=draw(optional_text),
        ),
        date_of_birth=draw(st.none() | st.dates(date(1900, 1, 1), date(2026, 1, 1))),
        deceased=draw(st.booleans()),
        relationship=draw(st.none() | st.sampled_from(Relationship)),
        contact=Contact(
            phone=draw(optional_text),
            email=draw(optional_text),
            address=draw(
                st.none()
                | st.builds(
                    Address,
                    lines=st.lists(text, min_size=1, max_size=8).map(tuple),
                    postcode=optional_text,
                )
            ),
            preferred=draw(st.sampled_from(ContactMethod)),
            safe_to_contact=draw(st.booleans()),
            safe_contact_notes=draw(optional_text),
        ),
        needs=Needs(language=draw(optional_text), accessibility=draw(optional_text)),
        consent=VictimConsent(
            referral=consent,
            recorded_at=datetime(2026, 11, 23, tzinfo=UTC),
            recorded_by=draw(optional_text),
        ),
    )


class TestVictims:
    @settings(deadline=None, max_examples=60)
    @given(st.lists(victims(), min_size=1, max_size=3, unique_by=lambda v: v.victim_id))
    def test_every_personal_field_path_of_a_generated_victim_is_masked(
        self, generated: list[Victim]
    ) -> None:
        document = crime_document(*generated)
        masked = mask_document(document)

        for index in range(len(generated)):
            victim = ("data", "victims", index)
            for path, value in leaves(document):
                if any(path[: len(victim) + len(p)] == (*victim, *p) for p in VICTIM_PERSONAL):
                    assert at(masked, path) == (None if value is None else MASKED), path

    @settings(deadline=None, max_examples=60)
    @given(victims())
    def test_no_personal_value_of_a_generated_victim_survives_anywhere(
        self, victim: Victim
    ) -> None:
        shown = json.dumps(mask_document(crime_document(victim)), ensure_ascii=False)

        assert PII not in shown

    def test_the_victims_ids_kind_flags_and_consent_state_are_shown(self) -> None:
        victim = make_victim("P-0042", consent=ConsentState.GIVEN)
        masked = mask_document(crime_document(victim))["data"]["victims"][0]

        assert (masked["victim_id"], masked["kind"]) == ("P-0042", "person")
        assert masked["consent"]["referral"] == "given"
        assert masked["needs"]["vulnerable"] is False

    def test_null_under_a_personal_field_stays_null(self) -> None:
        victim = make_victim(date_of_birth=None, email=None)
        masked = mask_document(crime_document(victim))["data"]["victims"][0]

        assert masked["date_of_birth"] is None
        assert masked["contact"]["email"] is None
        assert masked["contact"]["phone"] == MASKED


class TestOtherPeople:
    def test_the_officers_name_and_email_are_masked_and_collar_and_unit_shown(self) -> None:
        officer = mask_document(crime_document(make_victim()))["data"]["officer"]

        assert officer == {
            "collar": "PC 0000",
            "name": MASKED,
            "unit": "Test Unit",
            "email": MASKED,
        }

    def test_who_recorded_a_consent_update_is_masked_and_the_rest_shown(self) -> None:
        data = {
            "case_ref": "LC-26-0000001",
            "victim_id": "P-0001",
            "referral": "given",
            "recorded_at": "2026-11-23T10:00:00Z",
            "recorded_by": "PC Jane Doe",
            "lawful_basis": "consent",
        }

        masked = mask_document(envelope("consent.updated", data))["data"]

        assert masked == {**data, "recorded_by": MASKED}


class TestBodiesThatFailValidation:
    def test_an_unknown_field_is_masked_with_its_key_shown(self) -> None:
        document = crime_document(make_victim())
        document["data"]["victims"][0]["nickname"] = "Jay"

        masked = mask_document(document)["data"]["victims"][0]

        assert masked["nickname"] == MASKED_UNKNOWN

    def test_a_key_that_does_not_look_like_a_field_name_is_masked_too(self) -> None:
        document = crime_document(make_victim())
        document["data"]["Jane Doe"] = {"phone": "07700 900123"}

        masked = mask_document(document)["data"]

        assert "Jane Doe" not in json.dumps(masked)
        assert masked["[masked key 1]"] == {"phone": MASKED_UNKNOWN}

    def test_an_object_where_a_string_is_expected_is_masked(self) -> None:
        document = crime_document(make_victim())
        document["data"]["offence"]["label"] = {"note": "Jane Doe"}

        assert mask_document(document)["data"]["offence"]["label"] == {"note": MASKED_UNKNOWN}

    def test_an_invalid_value_in_a_non_personal_scalar_field_is_shown(self) -> None:
        """The operator needs to see why `kind` failed; it holds no personal data by contract."""
        document = crime_document(make_victim())
        document["data"]["victims"][0]["kind"] = "robot"

        assert mask_document(document)["data"]["victims"][0]["kind"] == "robot"

    def test_an_extra_flag_is_shown_when_it_is_a_boolean_and_masked_otherwise(self) -> None:
        document = crime_document(make_victim())
        document["data"]["flags"] = {"hate": True, "modern_slavery": True, "county_lines": "Jay"}

        flags = mask_document(document)["data"]["flags"]

        assert flags == {"hate": True, "modern_slavery": True, "county_lines": MASKED_UNKNOWN}

    def test_the_data_of_an_unknown_event_type_is_masked_whole(self) -> None:
        document = crime_document(make_victim())
        document["type"] = "crime.exploded"

        masked = mask_document(document)

        assert masked["type"] == "crime.exploded"
        assert {value for _, value in leaves(masked["data"])} <= {MASKED_UNKNOWN, None}

    def test_an_extra_envelope_attribute_is_masked(self) -> None:
        masked = mask_document(envelope("crime.recorded", {}, subject="Jane Doe"))

        assert masked["subject"] == MASKED_UNKNOWN

    def test_a_json_body_that_is_not_an_object_is_masked_whole(self) -> None:
        assert mask_document(["Jane Doe", 42, None]) == [MASKED_UNKNOWN, MASKED_UNKNOWN, None]


class TestMaskBody:
    def test_a_json_body_comes_back_masked_with_its_size_and_hash(self) -> None:
        body = json.dumps(crime_document(make_victim())).encode()

        masked = mask_body(body)

        assert (masked.size, masked.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert masked.is_json
        assert masked.document["data"]["victims"][0]["name"]["family"] == MASKED

    def test_a_body_that_is_not_json_is_described_by_size_and_hash_only(self) -> None:
        masked = mask_body(b'{"name": "Jane Doe", "dob": ')

        assert (masked.is_json, masked.document) == (False, None)
        assert masked.size == 28

    def test_a_body_that_is_not_utf8_is_described_by_size_and_hash_only(self) -> None:
        masked = mask_body(b'{"name": "\xff"}')

        assert (masked.is_json, masked.document) == (False, None)


def test_every_personal_field_names_a_field_of_its_model() -> None:
    """A renamed field must not silently stop being masked."""
    assert all(name in model.model_fields for model, name in PERSONAL_FIELDS)
