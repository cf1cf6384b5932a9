"""The audit trail's hash chain on SQLite and PostgreSQL: appended as one chain, tampering found,
and on PostgreSQL a bridge role that cannot alter it (issue 10 item 3)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from referral_bridge.core.audit_chain import GENESIS, ChainReport, row_hash, verify_chain
from referral_bridge.errors import LedgerPrivilegeError, LedgerSchemaError
from referral_bridge.ledger import AuditFacts, Ledger, OutboxMessage
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import chain_rows
from referral_bridge.operator.audit import AuditRecord, AuditTrail
from tests.fakes import (
    bridge_role,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
SKEW = timedelta(minutes=5)


def note(n: int, *, at: datetime = NOW) -> AuditRecord:
    return AuditRecord(
        at=at, action="dead_letter_revealed", actor=f"op{n}", message_id=f"D-{n}", detail="why"
    )


def verify(ledger: Ledger) -> ChainReport:
    with ledger.engine.connect() as connection:
        return verify_chain(chain_rows(connection), max_skew=SKEW)


@pytest.fixture
def five(ledger: Ledger) -> Ledger:
    AuditTrail(ledger.engine).append_all([note(n) for n in range(1, 6)])
    assert verify(ledger).intact
    return ledger


def as_owner_without_triggers(ledger: Ledger, *statements: str, **params: object) -> None:
    """What the tables' owner can do: switch the append-only triggers off and change rows."""
    with ledger.engine.begin() as connection:
        if ledger.dialect == "postgresql":
            connection.execute(text("ALTER TABLE rb_audit DISABLE TRIGGER USER"))
        else:
            for name in ("rb_audit_no_update", "rb_audit_no_delete"):
                connection.execute(text(f"DROP TRIGGER {name}"))
        for statement in statements:
            connection.execute(text(statement), params)
        if ledger.dialect == "postgresql":
            connection.execute(text("ALTER TABLE rb_audit ENABLE TRIGGER USER"))


def hash_of(ledger: Ledger, record_id: int) -> str:
    with ledger.engine.connect() as connection:
        return str(
            connection.execute(
                select(t.audit.c.row_hash).where(t.audit.c.id == record_id)
            ).scalar_one()
        )


class TestAppending:
    def test_every_way_in_appends_to_one_chain(self, ledger: Ledger) -> None:
        """Operator tools, hand-overs and resends: each record follows the one before."""
        trail = AuditTrail(ledger.engine)
        trail.append(note(1))
        with ledger.transaction() as tx:
            tx.add_outbox(
                OutboxMessage(
                    message_id="R-1",
                    event_id="e-1",
                    kind="referral",
                    exchange="x",
                    routing_key="lancs",
                    headers={},
                    body=b"sealed",
                    provider="lancs",
                    audit=AuditFacts(case_ref="LC-1", victim_id="P-1", provider="lancs"),
                ),
                NOW,
            )
        ledger.mark_published("R-1", NOW)
        trail.append_all([note(2), note(3)])

        report = verify(ledger)

        assert (report.intact, report.checked) == (True, 4)
        with ledger.engine.connect() as connection:
            rows = connection.execute(select(t.audit).order_by(t.audit.c.id)).all()
        assert [r.prev_hash for r in rows[1:]] == [r.row_hash for r in rows[:-1]]

    def test_a_second_record_after_the_same_one_is_refused(self, five: Ledger) -> None:
        """The unique prev_hash: whatever bypasses the chain's lock cannot fork it."""
        fork = {"at": NOW, "action": "x", "actor": "y", "prev_hash": hash_of(five, 2)}
        fork["row_hash"] = row_hash(str(fork["prev_hash"]), fork)

        with pytest.raises(IntegrityError), five.engine.begin() as connection:
            connection.execute(t.audit.insert().values(**fork))

        assert verify(five).intact


class TestTamperingIsFound:
    def test_an_edited_field(self, five: Ledger) -> None:
        as_owner_without_triggers(five, "UPDATE rb_audit SET actor = 'someone else' WHERE id = 3")

        report = verify(five)

        assert report.broken is not None
        assert report.broken.id == 3

    def test_a_deleted_record(self, five: Ledger) -> None:
        as_owner_without_triggers(five, "DELETE FROM rb_audit WHERE id = 3")

        report = verify(five)

        assert report.broken is not None
        assert report.broken.id == 4

    def test_a_backdated_record_inserted_between_two_others(self, five: Ledger) -> None:
        """Made to look as if it followed record 2: the record that did follow it breaks."""
        backdated = NOW - timedelta(days=40)
        forged = {"at": backdated, "action": "referral_sent", "actor": "x"}
        digest = row_hash(hash_of(five, 2), forged)
        as_owner_without_triggers(
            five,
            "DROP INDEX uq_rb_audit_prev_hash",
            "UPDATE rb_audit SET id = id + 1000 WHERE id >= 3",
            # With a server time that fits, too: the owner can set it with the trigger off.
            "INSERT INTO rb_audit (id, at, action, actor, prev_hash, row_hash, server_at) "
            "VALUES (3, :at, 'referral_sent', 'x', :prev, :digest, "
            "(SELECT server_at FROM rb_audit WHERE id = 2))",
            at=t.UtcDateTime().process_bind_param(backdated, five.engine.dialect),
            prev=hash_of(five, 2),
            digest=digest,
        )

        report = verify(five)

        assert report.broken is not None
        assert report.broken.id == 1003

    def test_reordered_records(self, five: Ledger) -> None:
        as_owner_without_triggers(
            five,
            "UPDATE rb_audit SET id = -2 WHERE id = 2",
            "UPDATE rb_audit SET id = 2 WHERE id = 4",
            "UPDATE rb_audit SET id = 4 WHERE id = -2",
        )

        report = verify(five)

        assert report.broken is not None
        assert report.broken.id == 2


def _create_version_6(url: str) -> None:
    """A version-6 ledger with three audit records, as a version-6 bridge left it."""
    Ledger.open(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        postgres = connection.dialect.name == "postgresql"
        connection.execute(text("DROP INDEX uq_rb_audit_prev_hash"))
        if postgres:
            connection.execute(text("DROP TRIGGER rb_audit_server_at ON rb_audit"))
        for column in ("prev_hash", "row_hash", "server_at"):
            connection.execute(text(f"ALTER TABLE rb_audit DROP COLUMN {column}"))
        connection.execute(text("ALTER TABLE rb_records DROP COLUMN erased_at"))
        connection.execute(text("DROP TABLE rb_jobs"))
        connection.execute(text("UPDATE rb_schema_info SET value = '6'"))
        for n in range(1, 4):
            connection.execute(
                text("INSERT INTO rb_audit (at, action, actor) VALUES (:at, 'old', :actor)"),
                {"at": (NOW - timedelta(days=n)).replace(tzinfo=None), "actor": f"op{n}"},
            )
    engine.dispose()


class TestUpgradeToVersion7:
    def test_records_already_written_are_chained_and_new_ones_follow(self, ledger_url: str) -> None:
        _create_version_6(ledger_url)

        ledger = Ledger.open(ledger_url)
        try:
            AuditTrail(ledger.engine).append(note(4))
            report = verify(ledger)
            with ledger.engine.connect() as connection:
                version = connection.execute(select(t.schema_info.c.value)).scalar_one()
            assert (report.intact, report.checked, version) == (True, 4, str(t.SCHEMA_VERSION))
            with (
                pytest.raises(DBAPIError, match="append-only"),
                ledger.engine.begin() as connection,
            ):
                connection.execute(text("UPDATE rb_audit SET actor = 'x'"))
        finally:
            ledger.dispose()


# --- PostgreSQL: the bridge's least-privilege role ------------------------------------------


@pytest.fixture
def pg_owner_url(pg_database_url: str) -> str:
    from tests.fakes import empty_ledger_database

    empty_ledger_database(pg_database_url)
    return pg_database_url


@pytest.fixture
def pg_bridge_url(pg_owner_url: str) -> Iterator[str]:
    with bridge_role(pg_owner_url) as url:
        yield url


def run_as(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


@pytest.mark.integration
class TestTheBridgeRole:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE rb_audit SET actor = 'x'",
            "DELETE FROM rb_audit",
            "TRUNCATE rb_audit",
            "ALTER TABLE rb_audit DISABLE TRIGGER USER",
            "DROP TRIGGER rb_audit_no_update ON rb_audit",
            "CREATE OR REPLACE FUNCTION rb_audit_append_only() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "CREATE TRIGGER rb_sneaky BEFORE INSERT ON rb_audit "
            "FOR EACH ROW EXECUTE FUNCTION rb_audit_server_time()",
        ],
        ids=["update", "delete", "truncate", "disable", "drop", "replace", "new-trigger"],
    )
    def test_it_cannot_alter_the_audit_trail_or_its_guards(
        self, pg_bridge_url: str, statement: str
    ) -> None:
        with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
            run_as(pg_bridge_url, statement)

    def test_it_opens_for_work_and_appends_to_the_chain(self, pg_bridge_url: str) -> None:
        ledger = Ledger.open_for_worker(pg_bridge_url)
        try:
            AuditTrail(ledger.engine).append_all([note(1), note(2)])
            report = verify(ledger)
        finally:
            ledger.dispose()

        assert (report.intact, report.checked) == (True, 2)

    def test_the_server_stamps_its_own_time_whatever_the_insert_says(
        self, pg_bridge_url: str
    ) -> None:
        ledger = Ledger.open_for_worker(pg_bridge_url)
        try:
            backdated = NOW - timedelta(days=40)
            with ledger.engine.begin() as connection:
                fields = {"at": backdated, "action": "referral_sent", "actor": "referral-bridge"}
                prev = GENESIS
                connection.execute(
                    t.audit.insert().values(
                        **fields,
                        prev_hash=prev,
                        row_hash=row_hash(prev, fields),
                        server_at=backdated,
                    )
                )
            report = verify(ledger)
            with ledger.engine.connect() as connection:
                server_at = connection.execute(select(t.audit.c.server_at)).scalar_one()
        finally:
            ledger.dispose()

        assert abs(server_at - datetime.now(UTC)) < timedelta(minutes=1)
        assert report.broken is None
        assert report.skewed == (1,)  # a consistent chain, but the backdating shows

    def test_appends_from_many_connections_at_once_stay_one_chain(self, pg_bridge_url: str) -> None:
        ledger = Ledger.open_for_worker(pg_bridge_url)
        errors: list[BaseException] = []

        def append(worker: int) -> None:
            try:
                trail = AuditTrail(ledger.engine)
                for n in range(10):
                    trail.append(note(worker * 100 + n))
            except BaseException as exc:  # noqa: BLE001  (a thread's failure must reach `errors == []`)
                errors.append(exc)

        try:
            threads = [threading.Thread(target=append, args=(w,)) for w in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            report = verify(ledger)
        finally:
            ledger.dispose()

        assert errors == []
        assert (report.intact, report.checked) == (True, 60)


@pytest.mark.integration
class TestRunRefuses:
    def test_a_superuser(self, pg_owner_url: str) -> None:
        Ledger.open(pg_owner_url).dispose()

        with pytest.raises(LedgerPrivilegeError, match="superuser") as raised:
            Ledger.open_for_worker(pg_owner_url)

        assert "referral-bridge migrate --grant" in str(raised.value)

    def test_a_role_that_may_update_the_audit_trail(
        self, pg_owner_url: str, pg_bridge_url: str
    ) -> None:
        role = pg_bridge_url.split("://", 1)[1].split("@", 1)[0]
        run_as(pg_owner_url, f'GRANT UPDATE (detail) ON rb_audit TO "{role}"')

        with pytest.raises(LedgerPrivilegeError, match="may UPDATE rb_audit"):
            Ledger.open_for_worker(pg_bridge_url)

    def test_a_schema_not_yet_migrated_and_says_how(self, pg_owner_url: str) -> None:
        with pytest.raises(
            LedgerSchemaError, match="referral-bridge migrate` as the ledger's owner"
        ):
            Ledger.open_for_worker(pg_owner_url)

    def test_the_bridge_role_cannot_migrate_and_is_told_who_can(
        self, pg_owner_url: str, pg_bridge_url: str
    ) -> None:
        run_as(pg_owner_url, "UPDATE rb_schema_info SET value = '6'")

        with pytest.raises(LedgerPrivilegeError, match="naming the ledger's owner role"):
            Ledger.open(pg_bridge_url)

    def test_sqlite_is_still_migrated_at_start_up(self, tmp_path: Path) -> None:
        ledger = Ledger.open_for_worker(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        try:
            with ledger.engine.connect() as connection:
                assert _version(connection) == t.SCHEMA_VERSION
        finally:
            ledger.dispose()


def _version(connection: Connection) -> int:
    return int(connection.execute(select(t.schema_info.c.value)).scalar_one())
