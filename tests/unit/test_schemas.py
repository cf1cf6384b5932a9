"""Pin the published JSON Schemas to the models and the contract samples to the parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from referral_bridge.core.parsing import parse_inbound
from referral_bridge.resources import SAMPLES as SAMPLES_DIR
from referral_bridge.schemas import (
    SCHEMA_ID_BASE,
    check_schemas,
    generate_schemas,
    render_schema,
    write_schemas,
)

REPO = Path(__file__).parents[2]
SCHEMAS_DIR = REPO / "schemas"
SAMPLES = sorted(SAMPLES_DIR.glob("*.json"))
#: The team's copy of the contract, beside a development checkout only; a clone stands alone.
UPSTREAM_SAMPLES = REPO.parent / "shared" / "spec" / "samples"

EXPECTED_FILES = {
    "cloudevent.envelope.schema.json",
    "crime.recorded.v1.schema.json",
    "incident.recorded.v1.schema.json",
    "consent.updated.v1.schema.json",
    "victim.referral.outcome.v1.schema.json",
    "task.completed.v1.schema.json",
    "victim.referral.created.v2.payload.schema.json",
    "victim.referral.updated.v2.payload.schema.json",
    "victim.referral.withdrawn.v2.payload.schema.json",
    "officer.task.leaflet.v1.schema.json",
    "officer.task.crime_review.v1.schema.json",
    "officer.task.escalation.v1.schema.json",
    "dead-letter.headers.schema.json",
}


class TestPublishedSchemas:
    def test_the_committed_schemas_match_the_models(self) -> None:
        """Run `referral-bridge schemas write schemas` (or `make schemas`) if this fails."""
        assert check_schemas(SCHEMAS_DIR) == []

    def test_every_contract_message_has_a_schema(self) -> None:
        assert set(generate_schemas()) == EXPECTED_FILES

    def test_each_schema_names_itself_by_its_file_name(self) -> None:
        ids = {name: schema["$id"] for name, schema in generate_schemas().items()}
        assert ids == {name: f"{SCHEMA_ID_BASE}{name}" for name in EXPECTED_FILES}

    def test_contract_objects_forbid_unknown_fields(self) -> None:
        assert generate_schemas()["crime.recorded.v1.schema.json"]["additionalProperties"] is False

    def test_the_dead_letter_schema_uses_the_header_names(self) -> None:
        schema = generate_schemas()["dead-letter.headers.schema.json"]
        assert set(schema["required"]) == {
            "x-rb-reason",
            "x-rb-detail",
            "x-rb-failed-at",
            "x-rb-attempts",
            "x-rb-original-routing-key",
        }


class TestWriteAndCheck:
    def test_written_schemas_pass_the_check(self, tmp_path: Path) -> None:
        write_schemas(tmp_path)
        assert check_schemas(tmp_path) == []

    def test_writing_returns_one_path_per_schema(self, tmp_path: Path) -> None:
        assert {path.name for path in write_schemas(tmp_path / "new")} == EXPECTED_FILES

    def test_a_missing_file_is_reported(self, tmp_path: Path) -> None:
        write_schemas(tmp_path)
        (tmp_path / "consent.updated.v1.schema.json").unlink()
        assert check_schemas(tmp_path) == ["consent.updated.v1.schema.json"]

    def test_an_edited_file_is_reported(self, tmp_path: Path) -> None:
        write_schemas(tmp_path)
        path = tmp_path / "officer.task.leaflet.v1.schema.json"
        schema = json.loads(path.read_text(encoding="utf-8"))
        schema["required"].remove("due_by")
        path.write_text(render_schema(schema), encoding="utf-8")
        assert check_schemas(tmp_path) == ["officer.task.leaflet.v1.schema.json"]

    def test_files_are_indented_sorted_and_end_with_a_newline(self) -> None:
        text = render_schema({"b": 1, "a": {"c": 2}})
        assert text == '{\n  "a": {\n    "c": 2\n  },\n  "b": 1\n}\n'


class TestContractSamples:
    def test_the_package_carries_the_contract_samples(self) -> None:
        assert {path.name for path in SAMPLES} >= {
            "crime-recorded-burglary.json",
            "incident-recorded-asb.json",
            "consent-updated.json",
        }

    @pytest.mark.parametrize("sample", SAMPLES, ids=[path.name for path in SAMPLES])
    def test_a_contract_sample_parses(self, sample: Path) -> None:
        event = parse_inbound(sample.read_bytes())
        assert event.type == json.loads(sample.read_bytes())["type"]

    @pytest.mark.skipif(
        not UPSTREAM_SAMPLES.is_dir(), reason="no contract folder beside this checkout"
    )
    def test_the_packaged_samples_match_the_contract_folder(self) -> None:
        """Only where the team's contract folder sits beside the checkout: the copies stay true."""
        upstream = {p.name: p.read_bytes() for p in UPSTREAM_SAMPLES.glob("*.json")}
        assert {p.name: p.read_bytes() for p in SAMPLES} == upstream
