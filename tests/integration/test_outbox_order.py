"""A case's messages go out in the order they were written, whatever the writers' clocks said
(schema 9: `rb_outbox.seq`, numbered by the database; SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select, text

from referral_bridge.ledger import ActionKind, Ledger, OutboxMessage, RecordedAction
from referral_bridge.ledger import schema as t

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CASE = "CR-0001"
PROVIDER = "lancashire-victim-services"


def write_referral(ledger: Ledger, message_id: str, victim_id: str, at: datetime) -> None:
    """One event's transaction: a referral for a victim of CASE, as the service records it."""
    with ledger.transaction() as tx:
        tx.lock({CASE})
        tx.add_action(
            RecordedAction(
                case_ref=CASE,
                victim_id=victim_id,
                action=ActionKind.REFERRAL,
                target=PROVIDER,
                message_id=message_id,
                provider=PROVIDER,
                service=None,
                related_id=None,
                due_at=None,
            ),
            at,
        )
        tx.add_outbox(
            OutboxMessage(
                message_id=message_id,
                event_id=f"event-{message_id}",
                kind="referral",
                exchange="victim-services.referrals",
                routing_key=PROVIDER,
                headers={},
                body=b"sealed",
                provider=PROVIDER,
            ),
            at,
        )


def deliver_in_order(ledger: Ledger, now: datetime) -> list[str]:
    """What a delivery pass would send, in order: due rows, each once nothing holds it up."""
    sent: list[str] = []
    for _ in range(10):
        progressed = False
        for delivery in ledger.due_deliveries(now):
            if ledger.waiting_on(delivery, now) is None:
                assert ledger.claim_delivery(delivery.message_id, now, now + timedelta(minutes=1))
                assert ledger.mark_published(delivery.message_id, now)
                sent.append(delivery.message_id)
                progressed = True
        if not progressed:
            break
    return sent


class TestWriteOrder:
    def test_a_case_s_messages_written_by_a_clock_that_steps_back_go_out_in_write_order(
        self, ledger: Ledger
    ) -> None:
        """The second writer's clock is an hour behind the first's: it still goes second."""
        write_referral(ledger, "m-first", "P-0001", AT)
        write_referral(ledger, "m-second", "P-0002", AT - timedelta(hours=1))
        now = AT + timedelta(minutes=1)

        [first, second] = ledger.due_deliveries(now)

        assert (first.message_id, second.message_id) == ("m-first", "m-second")
        assert ledger.waiting_on(first, now) is None
        assert ledger.waiting_on(second, now) == "m-first"
        assert deliver_in_order(ledger, now) == ["m-first", "m-second"]

    def test_each_row_is_numbered_after_every_row_written_before_it(self, ledger: Ledger) -> None:
        for n in range(5):
            write_referral(ledger, f"m-{n}", f"P-{n:04}", AT - timedelta(minutes=n))

        with ledger.engine.connect() as connection:
            numbered = connection.execute(
                select(t.outbox.c.message_id).order_by(t.outbox.c.seq)
            ).scalars()
            assert list(numbered) == [f"m-{n}" for n in range(5)]


def set_back_to_version_8(url: str) -> None:
    """A version-8 ledger with three rows written out of message-id order: no `seq` yet."""
    Ledger.open(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER rb_outbox_number"))
            connection.execute(text("DROP INDEX uq_rb_outbox_seq"))
        connection.execute(text("ALTER TABLE rb_outbox DROP COLUMN seq"))
        connection.execute(t.schema_info.update().values(value="8"))
        for message_id, minutes in (("b", 0), ("a", 0), ("c", -5)):
            connection.execute(
                text(
                    "INSERT INTO rb_outbox (message_id, event_id, kind, exchange, routing_key, "
                    "headers, body, created_at, attempts, maybe_delivered) VALUES "
                    "(:id, 'e', 'referral', 'x', 'k', '{}', :body, :at, 0, false)"
                ),
                {
                    "id": message_id,
                    "body": b"sealed",
                    "at": (AT + timedelta(minutes=minutes)).replace(tzinfo=None),
                },
            )
    engine.dispose()


class TestUpgradeToVersion9:
    def test_rows_written_before_are_numbered_by_created_at_then_message_id(
        self, ledger_url: str
    ) -> None:
        set_back_to_version_8(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            order = [d.message_id for d in ledger.due_deliveries(AT + timedelta(hours=1))]
        finally:
            ledger.dispose()

        assert order == ["c", "a", "b"]

    def test_rows_written_after_the_upgrade_come_after_them(self, ledger_url: str) -> None:
        set_back_to_version_8(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            write_referral(ledger, "new", "P-0001", AT - timedelta(days=1))
            order = [d.message_id for d in ledger.due_deliveries(AT + timedelta(hours=1))]
        finally:
            ledger.dispose()

        assert order == ["c", "a", "b", "new"]
