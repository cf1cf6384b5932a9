"""Schema upgrades at start-up and the audit record a hand-over leaves (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

from referral_bridge.errors import LedgerSchemaError
from referral_bridge.ledger import (
    AuditFacts,
    CancelReason,
    DeliveryState,
    Ledger,
    OutboxMessage,
)
from referral_bridge.ledger import schema as t
from referral_bridge.operator.audit import AuditRecord, AuditTrail
from tests.fakes import ledger_url_for

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
V2_OUTBOX_COLUMNS = {
    "provider",
    "next_attempt_at",
    "last_error",
    "rejected_at",
    "deadline",
    "fallback_task_id",
    "audit",
}


def create_version_1(url: str) -> None:
    """The ledger as schema version 1 left it: every table but the audit, the old outbox."""
    v1 = MetaData()
    for table in t.metadata.sorted_tables:
        if table.name not in {t.outbox.name, t.audit.name}:
            table.to_metadata(v1)
    Table(
        "rb_outbox",
        v1,
        Column("message_id", String(64), primary_key=True),
        Column("event_id", String(200), nullable=False),
        Column("kind", String(32), nullable=False),
        Column("exchange", String(200), nullable=False),
        Column("routing_key", String(200), nullable=False),
        Column("headers", JSON, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", t.UtcDateTime(), nullable=False),
        Column("published_at", t.UtcDateTime()),
        Column("attempts", Integer, nullable=False, default=0),
    )
    engine = create_engine(url)
    with engine.begin() as connection:
        v1.create_all(connection)
        connection.execute(t.schema_info.insert().values(key="schema_version", value="1"))
        connection.execute(
            v1.tables["rb_outbox"]
            .insert()
            .values(
                message_id="old-1",
                event_id="e",
                kind="task.leaflet",
                exchange="x",
                routing_key="k",
                headers={},
                body=b"{}",
                created_at=AT,
                attempts=0,
            )
        )
    engine.dispose()


class TestUpgradeFromVersion1:
    def test_opening_a_version_1_ledger_adds_the_delivery_columns_and_the_audit_table(
        self, ledger_url: str
    ) -> None:
        """Start-up migrates in place and records the new version."""
        create_version_1(ledger_url)
        ledger = Ledger.open(ledger_url)
        try:
            with ledger.engine.connect() as connection:
                columns = {c["name"] for c in inspect(connection).get_columns("rb_outbox")}
                version = connection.execute(select(t.schema_info.c.value)).scalar_one()
                has_audit = inspect(connection).has_table("rb_audit")
            assert columns >= V2_OUTBOX_COLUMNS
            assert has_audit
            assert version == str(t.SCHEMA_VERSION)
        finally:
            ledger.dispose()

    def test_rows_written_before_the_upgrade_are_still_pending(self, ledger_url: str) -> None:
        """An unsent outbox row survives the upgrade and is still published."""
        create_version_1(ledger_url)
        ledger = Ledger.open(ledger_url)
        try:
            assert [d.message_id for d in ledger.deliveries()] == ["old-1"]
        finally:
            ledger.dispose()


class TestOpeningWithoutMigrating:
    """Operator tools open the ledger with migrate=False: they never change its schema."""

    def test_a_ledger_of_the_current_version_opens(self, ledger_url: str) -> None:
        Ledger.open(ledger_url).dispose()

        Ledger.open(ledger_url, migrate=False).dispose()

    def test_an_older_schema_is_refused_and_left_as_it_was(self, ledger_url: str) -> None:
        create_version_1(ledger_url)

        with pytest.raises(LedgerSchemaError, match="does not migrate"):
            Ledger.open(ledger_url, migrate=False)
        engine = create_engine(ledger_url)
        with engine.connect() as connection:
            version = connection.execute(select(t.schema_info.c.value)).scalar_one()
            has_audit = inspect(connection).has_table("rb_audit")
        engine.dispose()
        assert (version, has_audit) == ("1", False)

    def test_an_empty_database_is_refused_and_left_empty(self, ledger_url: str) -> None:
        if ledger_url.startswith("sqlite"):
            create_engine(ledger_url).connect().close()  # an empty SQLite file

        with pytest.raises(LedgerSchemaError):
            Ledger.open(ledger_url, migrate=False)
        engine = create_engine(ledger_url)
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
        engine.dispose()
        assert tables == []


#: `last_error` of the rows version 7 cancelled, as it wrote them (the texts are frozen here).
V7_CANCELLED = {
    "withdrawn": "cancelled: consent was withdrawn before delivery; never sent",
    "after-attempt": (
        "cancelled: consent was withdrawn after an attempt that may have reached the provider; "
        "not tried again, and its withdrawal follows"
    ),
    "nothing-to-withdraw": (
        "cancelled: its referral was never delivered, so there is nothing to withdraw"
    ),
    "update": "cancelled: its referral was withdrawn before it was sent; never sent",
    "case-closed": "cancelled: the crime was cancelled or transferred before delivery; never sent",
    "odd": "cancelled: a text no version of the bridge wrote",
}


def create_version_7_with_cancellations(url: str) -> None:
    """A version-7 ledger: cancelled rows told apart only by `last_error`, beside a refused row
    (whose error text mentions cancelling), a pending one and a delivered one."""
    Ledger.open(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE rb_outbox DROP COLUMN cancel_reason"))
        connection.execute(t.schema_info.update().values(value="7"))
        closed: dict[str, tuple[datetime | None, str | None]] = {
            name: (AT, error) for name, error in V7_CANCELLED.items()
        }
        closed["refused"] = (AT, "http_400: cancelled: is not a cancellation here")
        closed["pending"] = (None, "connect_failed: refused")
        closed["delivered"] = (None, None)
        for name, (rejected_at, last_error) in closed.items():
            connection.execute(
                text(
                    "INSERT INTO rb_outbox (message_id, event_id, kind, exchange, routing_key, "
                    "headers, body, created_at, published_at, attempts, rejected_at, last_error, "
                    "maybe_delivered) VALUES (:id, 'e', 'referral', 'x', 'k', '{}', :body, :at, "
                    ":published, 0, :rejected, :error, false)"
                ),
                {
                    "id": name,
                    "body": b"sealed",
                    "at": AT.replace(tzinfo=None),
                    "published": AT.replace(tzinfo=None) if name == "delivered" else None,
                    "rejected": rejected_at.replace(tzinfo=None) if rejected_at else None,
                    "error": last_error,
                },
            )
    engine.dispose()


class TestUpgradeToVersion8:
    """Cancellation becomes a state of its own (`cancel_reason`), read from version 7's texts."""

    def test_each_cancelled_row_gets_the_reason_its_text_names(self, ledger_url: str) -> None:
        create_version_7_with_cancellations(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            reasons = {d.message_id: d.cancel_reason for d in ledger.deliveries(state="all")}
        finally:
            ledger.dispose()

        assert reasons == {
            "withdrawn": CancelReason.CONSENT_WITHDRAWN,
            "after-attempt": CancelReason.WITHDRAWN_AFTER_ATTEMPT,
            "nothing-to-withdraw": CancelReason.NOTHING_TO_WITHDRAW,
            "update": CancelReason.REFERRAL_WITHDRAWN,
            "case-closed": CancelReason.CASE_CLOSED,
            "odd": CancelReason.UNKNOWN,
            "refused": None,
            "pending": None,
            "delivered": None,
        }

    def test_rows_keep_the_state_and_text_operators_saw(self, ledger_url: str) -> None:
        create_version_7_with_cancellations(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            rows = {d.message_id: d for d in ledger.deliveries(state="all")}
            cancelled = {d.message_id for d in ledger.deliveries(state="cancelled")}
        finally:
            ledger.dispose()

        assert cancelled == set(V7_CANCELLED)
        assert {name: rows[name].last_error for name in V7_CANCELLED} == V7_CANCELLED
        assert (rows["refused"].state, rows["pending"].state, rows["delivered"].state) == (
            DeliveryState.REJECTED,
            DeliveryState.PENDING,
            DeliveryState.DELIVERED,
        )


def _one_audit_record(ledger: Ledger) -> None:
    AuditTrail(ledger.engine).append(
        AuditRecord(at=AT, action="dead_letter_revealed", actor="tester", detail="why")
    )


def _audit_rows(ledger: Ledger) -> list[tuple[str, str | None]]:
    with ledger.engine.connect() as connection:
        return [(r.actor, r.detail) for r in connection.execute(select(t.audit))]


@pytest.fixture(params=["fresh", "upgraded from version 1"])
def audited_ledger(request: pytest.FixtureRequest, ledger_url: str) -> Iterator[Ledger]:
    if request.param != "fresh":
        create_version_1(ledger_url)
    ledger = Ledger.open(ledger_url)
    try:
        _one_audit_record(ledger)
        yield ledger
    finally:
        ledger.dispose()


class TestAuditIsAppendOnly:
    """Triggers created at migration refuse any change to rb_audit, whoever asks."""

    @pytest.mark.parametrize(
        "statement",
        ["UPDATE rb_audit SET actor = 'someone else'", "DELETE FROM rb_audit"],
        ids=["update", "delete"],
    )
    def test_changing_an_audit_record_fails_and_leaves_it_as_it_was(
        self, audited_ledger: Ledger, statement: str
    ) -> None:
        with (
            pytest.raises(DBAPIError, match="append-only"),
            audited_ledger.engine.begin() as connection,
        ):
            connection.execute(text(statement))

        assert _audit_rows(audited_ledger) == [("tester", "why")]

    @pytest.mark.integration
    def test_truncating_fails_on_postgresql(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """SQLite has no TRUNCATE (its DELETE is covered above); PostgreSQL's is refused too."""
        ledger = Ledger.open(ledger_url_for("postgresql", request, tmp_path))
        try:
            _one_audit_record(ledger)
            with (
                pytest.raises(DBAPIError, match="append-only"),
                ledger.engine.begin() as connection,
            ):
                connection.execute(text("TRUNCATE rb_audit"))

            assert _audit_rows(ledger) == [("tester", "why")]
        finally:
            ledger.dispose()

    def test_appending_still_works(self, audited_ledger: Ledger) -> None:
        _one_audit_record(audited_ledger)

        assert len(_audit_rows(audited_ledger)) == 2


def referral_row(message_id: str) -> OutboxMessage:
    return OutboxMessage(
        message_id=message_id,
        event_id="event-1",
        kind="referral",
        exchange="victim-services.referrals",
        routing_key="lancashire-victim-services",
        headers={},
        body=b"sealed",
        provider="lancashire-victim-services",
        deadline=AT,
        audit=AuditFacts(
            case_ref="LC-26-0000001",
            victim_id="P-0001",
            provider="lancashire-victim-services",
            lawful_basis="consent",
            consent_state="given",
            consent_recorded_at=AT,
            consent_recorded_by="PC 1",
        ),
    )


class TestAuditOnHandOver:
    def test_marking_a_referral_published_writes_one_audit_record_with_the_consent(
        self, ledger_url: str
    ) -> None:
        """The disclosure is recorded with case, victim, provider, basis and consent."""
        ledger = Ledger.open(ledger_url)
        try:
            with ledger.transaction() as tx:
                tx.add_outbox(referral_row("ref-1"), AT)
            ledger.mark_published("ref-1", AT)
            with ledger.engine.connect() as connection:
                rows = connection.execute(select(t.audit)).all()
            assert len(rows) == 1
            record = rows[0]
            assert (record.action, record.message_id, record.provider) == (
                "referral_sent",
                "ref-1",
                "lancashire-victim-services",
            )
            assert (
                record.case_ref,
                record.victim_id,
                record.lawful_basis,
                record.consent_state,
            ) == (
                "LC-26-0000001",
                "P-0001",
                "consent",
                "given",
            )
            assert record.consent_recorded_at == AT
        finally:
            ledger.dispose()

    def test_marking_the_same_message_again_adds_no_second_audit_record(
        self, ledger_url: str
    ) -> None:
        """A republish after a crash is not a second disclosure."""
        ledger = Ledger.open(ledger_url)
        try:
            with ledger.transaction() as tx:
                tx.add_outbox(referral_row("ref-2"), AT)
            ledger.mark_published("ref-2", AT)
            ledger.mark_published("ref-2", AT)
            with ledger.engine.connect() as connection:
                count = connection.execute(select(func.count()).select_from(t.audit)).scalar_one()
            assert count == 1
        finally:
            ledger.dispose()

    def test_an_officer_task_leaves_no_disclosure_record(self, ledger_url: str) -> None:
        """Tasks carry no personal data to a third party, so they are not audited as disclosures."""
        ledger = Ledger.open(ledger_url)
        try:
            task = OutboxMessage(
                message_id="task-1",
                event_id="e",
                kind="task.leaflet",
                exchange="officer.tasks",
                routing_key="task.leaflet",
                headers={},
                body=b"{}",
            )
            with ledger.transaction() as tx:
                tx.add_outbox(task, AT)
            ledger.mark_published("task-1", AT)
            with ledger.engine.connect() as connection:
                count = connection.execute(select(func.count()).select_from(t.audit)).scalar_one()
            assert count == 0
        finally:
            ledger.dispose()
