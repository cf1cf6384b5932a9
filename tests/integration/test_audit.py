"""The audit trail on SQLite and PostgreSQL: appended, queried, never changed."""

from __future__ import annotations

import dataclasses
import inspect
import re
from datetime import UTC, datetime, timedelta

import pytest

from referral_bridge.ledger import AuditFacts, Ledger, OutboxMessage
from referral_bridge.operator import audit as audit_module
from referral_bridge.operator.audit import (
    DEAD_LETTER_REVEALED,
    AuditQuery,
    AuditRecord,
    AuditTrail,
)

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CONSENT_AT = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


@pytest.fixture
def trail(ledger: Ledger) -> AuditTrail:
    return AuditTrail(ledger.engine)


def sent(
    *, case_ref: str, victim_id: str, provider: str, at: datetime = AT, message_id: str = "R-1"
) -> AuditRecord:
    return AuditRecord(
        at=at,
        action="referral_sent",
        actor="referral-bridge",
        message_id=message_id,
        provider=provider,
        case_ref=case_ref,
        victim_id=victim_id,
        lawful_basis="consent",
        consent_state="given",
        consent_recorded_at=CONSENT_AT,
        consent_recorded_by="PC 4412",
        detail="delivered by amqp",
    )


@pytest.fixture
def three_disclosures(trail: AuditTrail) -> None:
    trail.append_all(
        [
            sent(case_ref="LC-1", victim_id="P-1", provider="lancs", message_id="R-1"),
            sent(
                case_ref="LC-1",
                victim_id="P-2",
                provider="homicide",
                at=AT + timedelta(hours=1),
                message_id="R-2",
            ),
            sent(
                case_ref="LC-2",
                victim_id="P-1",
                provider="lancs",
                at=AT + timedelta(days=1),
                message_id="R-3",
            ),
        ]
    )


def message_ids(records: list[AuditRecord]) -> list[str | None]:
    return [record.message_id for record in records]


class TestAppend:
    def test_an_appended_record_comes_back_whole_with_an_id(self, trail: AuditTrail) -> None:
        record = sent(case_ref="LC-1", victim_id="P-1", provider="lancs")

        record_id = trail.append(record)

        [stored] = trail.query(AuditQuery())
        assert stored == dataclasses.replace(record, id=record_id)

    def test_personal_data_typed_into_the_detail_is_scrubbed(self, trail: AuditTrail) -> None:
        trail.append(
            AuditRecord(
                at=AT,
                action=DEAD_LETTER_REVEALED,
                actor="operator",
                message_id="abc",
                detail="INC-42: caller jane@example.org on 07700 900123, born 1984-02-29",
            )
        )

        [stored] = trail.query(AuditQuery())
        assert stored.detail is not None
        assert not re.search(r"example\.org|07700|1984", stored.detail)
        assert stored.detail.startswith("INC-42: caller")


class TestQuery:
    @pytest.mark.usefixtures("three_disclosures")
    def test_by_case(self, trail: AuditTrail) -> None:
        assert message_ids(trail.query(AuditQuery(case_ref="LC-1"))) == ["R-1", "R-2"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_by_victim(self, trail: AuditTrail) -> None:
        assert message_ids(trail.query(AuditQuery(victim_id="P-1"))) == ["R-1", "R-3"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_by_provider(self, trail: AuditTrail) -> None:
        assert message_ids(trail.query(AuditQuery(provider="homicide"))) == ["R-2"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_by_time_from_since_inclusive_to_until_exclusive(self, trail: AuditTrail) -> None:
        query = AuditQuery(since=AT + timedelta(hours=1), until=AT + timedelta(days=1))

        assert message_ids(trail.query(query)) == ["R-2"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_by_action(self, trail: AuditTrail) -> None:
        trail.append(AuditRecord(at=AT, action=DEAD_LETTER_REVEALED, actor="op", message_id="D"))

        assert message_ids(trail.query(AuditQuery(action=DEAD_LETTER_REVEALED))) == ["D"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_criteria_combine(self, trail: AuditTrail) -> None:
        assert message_ids(trail.query(AuditQuery(case_ref="LC-1", victim_id="P-1"))) == ["R-1"]

    @pytest.mark.usefixtures("three_disclosures")
    def test_a_limit_returns_the_oldest_first(self, trail: AuditTrail) -> None:
        assert message_ids(trail.query(AuditQuery(limit=2))) == ["R-1", "R-2"]


def test_a_hand_over_recorded_by_the_ledger_is_found_by_victim(
    ledger: Ledger, trail: AuditTrail
) -> None:
    facts = AuditFacts(
        case_ref="LC-9",
        victim_id="P-9",
        provider="lancs",
        lawful_basis="consent",
        consent_state="given",
        consent_recorded_at=CONSENT_AT,
        consent_recorded_by="PC 4412",
    )
    with ledger.transaction() as tx:
        tx.add_outbox(
            OutboxMessage(
                message_id="R-9",
                event_id="event-9",
                kind="referral",
                exchange="victim-services.referrals",
                routing_key="lancs",
                headers={},
                body=b"sealed",
                provider="lancs",
                audit=facts,
            ),
            AT,
        )
    ledger.mark_published("R-9", AT)

    [record] = trail.query(AuditQuery(victim_id="P-9"))

    assert (record.action, record.provider, record.case_ref) == ("referral_sent", "lancs", "LC-9")
    assert (record.consent_state, record.consent_recorded_at) == ("given", CONSENT_AT)


def test_the_audit_module_never_updates_or_deletes() -> None:
    source = inspect.getsource(audit_module).lower()

    assert not re.search(r"\.(update|delete)\(|\b(update|delete)\s+(from\s+)?rb_audit", source)
