"""JSON Schemas of the wire contract, generated from the models so they cannot disagree.

Other teams validate against the files in `schemas/`; a test fails when a model changes and the
files were not regenerated (`referral-bridge schemas write schemas`). Inbound schemas describe
what the bridge accepts (pydantic's validation mode); outbound schemas describe what it emits
(serialization mode). The per-type schemas cover a message's `data`; the envelope has its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from referral_bridge.core.events import (
    CloudEvent,
    ConsentUpdated,
    CrimeRecorded,
    CrimeReviewTask,
    DeadLetterHeaders,
    EscalationTask,
    IncidentRecorded,
    LeafletTask,
    ReferralOutcome,
    ReferralPayload,
    TaskCompleted,
    UpdatePayload,
    WithdrawalPayload,
)

__all__ = ["SCHEMA_ID_BASE", "check_schemas", "generate_schemas", "render_schema", "write_schemas"]

#: A stable, resolvable-nowhere base: the files are shipped, not served.
SCHEMA_ID_BASE = "urn:referral-bridge:schemas:"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"

_Mode = Literal["validation", "serialization"]

# file name -> (model, mode, title)
_SCHEMAS: dict[str, tuple[type[BaseModel], _Mode, str]] = {
    "cloudevent.envelope.schema.json": (
        CloudEvent,
        "validation",
        "CloudEvents 1.0 envelope of every inbound event",
    ),
    "crime.recorded.v1.schema.json": (
        CrimeRecorded,
        "validation",
        "crime.recorded data, schemaversion 1",
    ),
    "incident.recorded.v1.schema.json": (
        IncidentRecorded,
        "validation",
        "incident.recorded data, schemaversion 1",
    ),
    "consent.updated.v1.schema.json": (
        ConsentUpdated,
        "validation",
        "consent.updated data, schemaversion 1",
    ),
    "victim.referral.outcome.v1.schema.json": (
        ReferralOutcome,
        "validation",
        "victim.referral.outcome data (from a provider), schemaversion 1",
    ),
    "task.completed.v1.schema.json": (
        TaskCompleted,
        "validation",
        "task.completed data (from the force's task system), schemaversion 1",
    ),
    "victim.referral.created.v2.payload.schema.json": (
        ReferralPayload,
        "serialization",
        "victim.referral.created signed payload (inside the JWS), schemaversion 2",
    ),
    "victim.referral.updated.v2.payload.schema.json": (
        UpdatePayload,
        "serialization",
        "victim.referral.updated signed payload (inside the JWS), schemaversion 2",
    ),
    "victim.referral.withdrawn.v2.payload.schema.json": (
        WithdrawalPayload,
        "serialization",
        "victim.referral.withdrawn signed payload (inside the JWS), schemaversion 2",
    ),
    "officer.task.leaflet.v1.schema.json": (
        LeafletTask,
        "serialization",
        "officer.task.leaflet data, schemaversion 1",
    ),
    "officer.task.crime_review.v1.schema.json": (
        CrimeReviewTask,
        "serialization",
        "officer.task.crime_review data, schemaversion 1",
    ),
    "officer.task.escalation.v1.schema.json": (
        EscalationTask,
        "serialization",
        "officer.task.escalation data, schemaversion 1",
    ),
    "dead-letter.headers.schema.json": (
        DeadLetterHeaders,
        "serialization",
        "Headers of a message on referral-bridge.dead-letter",
    ),
}


def generate_schemas() -> dict[str, dict[str, Any]]:
    """Build every contract schema, keyed by the file name it is published under."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, (model, mode, title) in _SCHEMAS.items():
        schema = model.model_json_schema(mode=mode)
        schema["$schema"] = _DRAFT
        schema["$id"] = f"{SCHEMA_ID_BASE}{name}"
        schema["title"] = title
        schemas[name] = schema
    return schemas


def render_schema(schema: dict[str, Any]) -> str:
    """Format a schema the one way it is stored, so regeneration gives byte-identical files."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into `directory` (created if missing); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, schema in generate_schemas().items():
        path = directory / name
        path.write_text(render_schema(schema), encoding="utf-8")
        written.append(path)
    return written


def check_schemas(directory: Path) -> list[str]:
    """Name the schema files in `directory` that are missing or differ from the models."""
    drifted: list[str] = []
    for name, schema in generate_schemas().items():
        path = directory / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            drifted.append(name)
            continue
        if current != render_schema(schema):
            drifted.append(name)
    return drifted
