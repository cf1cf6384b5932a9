"""Officer tasks and provider outcomes in the ledger (schema version 5), SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select

from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _task_body(task_id: str, unit: str, due_by: datetime) -> bytes:
    data = {"task_id": task_id, "officer": {"collar": "PC 1", "unit": unit}}
    return json.dumps({"id": task_id, "data": data | {"due_by": due_by.isoformat()}}).encode()


def _outbox_row(task_id: str, kind: str, body: bytes) -> dict[str, object]:
    return {
        "message_id": task_id,
        "event_id": "e",
        "kind": kind,
        "exchange": "officer.tasks",
        "routing_key": kind,
        "headers": {},
        "body": body,
        "created_at": AT,
        "attempts": 1,
        "maybe_delivered": False,
    }


def create_version_4_with_tasks(url: str) -> None:
    """A version-4 ledger holding a leaflet task, a raised crime review and a resolved one."""
    Ledger.open(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        t.referral_outcomes.drop(connection)
        t.tasks.drop(connection)
        connection.execute(t.schema_info.update().values(value="4"))
        connection.execute(
            t.actions.insert().values(
                case_ref="LC-1",
                victim_id="P-1",
                action="leaflet",
                target="declined",
                message_id="task-leaflet-1",
                provider="lancashire-victim-services",
                due_at=AT + timedelta(days=1),
                at=AT,
            )
        )
        connection.execute(
            t.outbox.insert(),
            [
                _outbox_row("task-leaflet-1", "task.leaflet", _task_body("x", "Response B", AT)),
                _outbox_row(
                    "task-review-1",
                    "task.crime_review",
                    _task_body("task-review-1", "Crime Bureau", AT + timedelta(days=3)),
                ),
            ],
        )
        for review in (
            {"task_id": "task-review-1", "raised_at": AT, "resolved_at": None},
            {"task_id": "task-review-2", "raised_at": AT, "resolved_at": AT + timedelta(hours=5)},
            {"task_id": None, "raised_at": None, "resolved_at": None},
        ):
            connection.execute(
                t.crime_reviews.insert().values(
                    incident_ref=f"INC-{review['task_id'] or 'unraised'}", review_at=AT, **review
                )
            )
    engine.dispose()


class TestUpgradeToVersion5:
    def test_tasks_issued_before_the_upgrade_are_backfilled(self, ledger_url: str) -> None:
        create_version_4_with_tasks(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            with ledger.engine.connect() as connection:
                rows = {r.task_id: r for r in connection.execute(select(t.tasks))}
                version = connection.execute(select(t.schema_info.c.value)).scalar_one()
        finally:
            ledger.dispose()

        assert version == str(t.SCHEMA_VERSION)
        assert set(rows) == {"task-leaflet-1", "task-review-1", "task-review-2"}
        leaflet = rows["task-leaflet-1"]
        assert (leaflet.kind, leaflet.reason, leaflet.case_ref, leaflet.victim_id) == (
            "leaflet",
            "declined",
            "LC-1",
            "P-1",
        )
        assert (leaflet.officer_unit, leaflet.issued_at, leaflet.due_by) == (
            "Response B",
            AT,
            AT + timedelta(days=1),
        )
        review = rows["task-review-1"]
        assert (review.kind, review.reason, review.case_ref, review.officer_unit) == (
            "crime_review",
            "crime_not_recorded",
            "INC-task-review-1",
            "Crime Bureau",
        )
        assert (review.due_by, review.completed_at) == (AT + timedelta(days=3), None)
        closed = rows["task-review-2"]
        assert (closed.due_by, closed.officer_unit) == (None, None)
        assert (closed.completed_at, closed.completed_by, closed.result) == (
            AT + timedelta(hours=5),
            None,
            "crime_recorded",
        )
