"""Schema versioning: create or upgrade the ledger at start-up, refuse a newer schema.

Long on purpose: one function per schema version, in order: an operator or reviewer reads the
upgrade path from the top to the bottom.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, and_, func, inspect, select, text

from referral_bridge.core.audit_chain import GENESIS, row_hash
from referral_bridge.errors import LedgerSchemaError
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.records import CancelReason

#: Arbitrary constant naming the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x52425F4D49475254


def _add_columns(connection: Connection, table: Table, names: list[str]) -> None:
    """ALTER TABLE ... ADD COLUMN for columns the metadata has and the database lacks."""
    present = {c["name"] for c in inspect(connection).get_columns(table.name)}
    preparer = connection.dialect.identifier_preparer
    for name in names:
        if name in present:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=connection.dialect)
        connection.execute(
            text(
                f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(name)} {kind}"
            )
        )


#: Names of the database objects that keep `rb_audit` append-only.
AUDIT_GUARD_FUNCTION = "rb_audit_append_only"
AUDIT_GUARD_TRIGGERS = ("rb_audit_no_update", "rb_audit_no_delete", "rb_audit_no_truncate")


def _protect_audit(connection: Connection) -> None:
    """Make `rb_audit` append-only in the database itself: UPDATE and DELETE raise.

    The operator tools need the ledger's write credentials to record a reveal, so "nothing updates
    or deletes" cannot rest on the code alone; a trigger also stops a stray script or hand-typed
    SQL. (A database owner can still drop the trigger: grant the bridge's role only SELECT and
    INSERT on rb_audit to close that too; see docs/operations.md.)
    """
    table = connection.dialect.identifier_preparer.quote(t.audit.name)
    if connection.dialect.name == "postgresql":
        connection.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {AUDIT_GUARD_FUNCTION}() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'rb_audit is append-only' "
                "USING ERRCODE = 'insufficient_privilege'; END $$"
            )
        )
        update, delete, truncate = AUDIT_GUARD_TRIGGERS
        for name, event, level in (
            (update, "UPDATE", "ROW"),
            (delete, "DELETE", "ROW"),
            (truncate, "TRUNCATE", "STATEMENT"),
        ):
            connection.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
            connection.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                    f"FOR EACH {level} EXECUTE FUNCTION {AUDIT_GUARD_FUNCTION}()"
                )
            )
        return
    # SQLite has no TRUNCATE; DELETE without WHERE fires the delete trigger (no truncate shortcut).
    for name, event in zip(AUDIT_GUARD_TRIGGERS[:2], ("UPDATE", "DELETE"), strict=True):
        connection.execute(
            text(
                f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'rb_audit is append-only'); END"
            )
        )


def _v2_delivery_and_audit(connection: Connection) -> None:
    _add_columns(
        connection,
        t.outbox,
        [
            "provider",
            "next_attempt_at",
            "last_error",
            "rejected_at",
            "deadline",
            "fallback_task_id",
            "audit",
        ],
    )
    t.audit.create(connection, checkfirst=True)
    _protect_audit(connection)
    t.links.create(connection, checkfirst=True)
    if inspect(connection).has_table(t.aliases.name):
        rows = connection.execute(select(t.aliases.c.ref, t.aliases.c.matter_ref)).all()
        if rows:
            connection.execute(
                t.links.insert(), [{"incident_ref": r.ref, "crime_ref": r.matter_ref} for r in rows]
            )
        t.aliases.drop(connection)


def _v3_delivery_claims(connection: Connection) -> None:
    _add_columns(connection, t.outbox, ["claimed_until", "maybe_delivered"])
    # Version 2 did not say how an attempt ended: any attempt at an unsent row may have arrived.
    connection.execute(
        t.outbox.update()
        .where(t.outbox.c.maybe_delivered.is_(None))
        .values(maybe_delivered=and_(t.outbox.c.attempts > 0, t.outbox.c.published_at.is_(None)))
    )


_PROCESSED_COLUMNS = "event_id, event_type, record_ref, result, processed_at"


def _v4_whole_life(connection: Connection) -> None:
    """Rules and contract version 2: referral generations and updates, reasons, lateness, the
    consent regime in the audit trail, crime reviews, and duplicates by `source` + `id`.

    Rows already written keep their meaning: referrals are generation 1 with unchanged ids,
    withdrawals were for withdrawn consent, and events seen before match by id alone.
    """
    _add_columns(connection, t.actions, ["facts"])
    _add_columns(connection, t.decisions, ["late"])
    _add_columns(connection, t.audit, ["consent_regime"])
    t.crime_reviews.create(connection, checkfirst=True)
    present = {c["name"] for c in inspect(connection).get_columns(t.processed_events.name)}
    if "source" in present:
        return
    # The primary key changes, which SQLite cannot alter: copy, recreate, copy back.
    old, keep = t.processed_events.name, "rb_processed_events_v2"
    # Every name below is a constant of this module: nothing comes from input.
    copy = f"CREATE TABLE {keep} AS SELECT {_PROCESSED_COLUMNS} FROM {old}"  # noqa: S608
    connection.execute(text(copy))
    connection.execute(text(f"DROP TABLE {old}"))
    t.processed_events.create(connection)
    back = f"INSERT INTO {old} (source, {_PROCESSED_COLUMNS}) SELECT '', {_PROCESSED_COLUMNS} FROM {keep}"  # noqa: S608, E501
    connection.execute(text(back))
    connection.execute(text(f"DROP TABLE {keep}"))


def _v5_closing_the_loop(connection: Connection) -> None:  # noqa: C901 (one migration's steps, each guarded)
    """Issue 8: officer tasks (`rb_tasks`) and provider outcomes (`rb_referral_outcomes`).

    Tasks issued before version 5 are backfilled, so they can be completed and escalated: every
    leaflet task (rb_actions) and every raised crime review. The officer's unit and a crime
    review's due time are only in the task message itself, so they are read from its outbox
    row (kept for ever); without one, the unit is NULL and a crime review has no due time (and
    is never escalated).
    """
    t.tasks.create(connection, checkfirst=True)
    t.referral_outcomes.create(connection, checkfirst=True)

    def sent(task_id: str) -> dict[str, Any]:
        body = connection.execute(
            select(t.outbox.c.body).where(t.outbox.c.message_id == task_id)
        ).scalar_one_or_none()
        try:
            data = json.loads(body)["data"] if body is not None else {}
        except (ValueError, KeyError, TypeError):
            data = {}
        return data if isinstance(data, dict) else {}

    def unit_and_due(data: dict[str, Any]) -> tuple[str | None, datetime | None]:
        officer = data.get("officer")
        unit = officer.get("unit") if isinstance(officer, dict) else None
        due = data.get("due_by")
        try:
            due_by = datetime.fromisoformat(due) if isinstance(due, str) else None
        except ValueError:
            due_by = None
        if due_by is not None and due_by.tzinfo is None:
            due_by = None
        return (unit[:100] if isinstance(unit, str) else None), due_by

    known = set(connection.execute(select(t.tasks.c.task_id)).scalars())
    rows: list[dict[str, Any]] = []
    leaflets = select(t.actions).where(t.actions.c.action == "leaflet")
    for action in connection.execute(leaflets):
        if action.message_id in known:
            continue
        unit, due_by = unit_and_due(sent(action.message_id))
        rows.append(
            {
                "task_id": action.message_id,
                "kind": "leaflet",
                "reason": action.target,
                "case_ref": action.case_ref,
                "victim_id": action.victim_id,
                "officer_unit": unit,
                "issued_at": action.at,
                "due_by": action.due_at or due_by,
            }
        )
    raised = select(t.crime_reviews).where(t.crime_reviews.c.task_id.is_not(None))
    for review in connection.execute(raised):
        if review.task_id in known:
            continue
        unit, due_by = unit_and_due(sent(review.task_id))
        resolved = review.resolved_at is not None
        rows.append(
            {
                "task_id": review.task_id,
                "kind": "crime_review",
                "reason": "crime_not_recorded",
                "case_ref": review.incident_ref,
                "victim_id": None,
                "officer_unit": unit,
                "issued_at": review.raised_at,
                "due_by": due_by,
                # A crime recorded since the task was raised closes it, as it does from now on.
                "completed_at": review.resolved_at if resolved else None,
                "completed_by": None,
                "result": "crime_recorded" if resolved else None,
            }
        )
    for row in rows:
        connection.execute(t.tasks.insert().values(**row))


def _v6_report_facts(connection: Connection) -> None:
    """The compliance report (issue 8): each decision's category and, for referrals, when the
    Victims' Code clock started; an index on `decided_at` for reports over a period.

    Rows already written keep NULL: the report shows their category as `unknown` and leaves
    them out of the time to referral.
    """
    _add_columns(connection, t.decisions, ["category", "clock_from"])
    index = next(i for i in t.decisions.indexes if i.name == "ix_rb_decisions_decided_at")
    index.create(connection, checkfirst=True)


#: Version 7: the PostgreSQL trigger that stamps each audit record with the server's time.
AUDIT_STAMP_FUNCTION = "rb_audit_server_time"
AUDIT_STAMP_TRIGGER = "rb_audit_server_at"


def _stamp_audit(connection: Connection) -> None:
    """PostgreSQL: set `server_at` to the server's clock on every insert, whatever it says.

    The bridge's role has no TRIGGER privilege and does not own the function, so a record it
    writes carries the time it was really written: a backdated `at` shows (`audit verify`).
    """
    if connection.dialect.name != "postgresql":
        return
    table = connection.dialect.identifier_preparer.quote(t.audit.name)
    connection.execute(
        text(
            f"CREATE OR REPLACE FUNCTION {AUDIT_STAMP_FUNCTION}() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN NEW.server_at := clock_timestamp(); RETURN NEW; END $$"
        )
    )
    connection.execute(text(f"DROP TRIGGER IF EXISTS {AUDIT_STAMP_TRIGGER} ON {table}"))
    connection.execute(
        text(
            f"CREATE TRIGGER {AUDIT_STAMP_TRIGGER} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {AUDIT_STAMP_FUNCTION}()"
        )
    )


def _v7_audit_chain_and_retention(connection: Connection) -> None:
    """Issue 10 items 3 and 7: the audit trail's hash chain and server time; retention.

    Records written before version 7 are chained in id order, as they are: the chain vouches for
    them from now on, not for what happened to them before. Their `server_at` stays NULL.
    """
    _add_columns(connection, t.audit, ["prev_hash", "row_hash", "server_at"])
    _add_columns(connection, t.records, ["erased_at"])
    t.jobs.create(connection, checkfirst=True)
    # The append-only trigger refuses the UPDATEs that chain old rows: lift it for this
    # transaction only (it is recreated below, before anything else can write).
    update_trigger = AUDIT_GUARD_TRIGGERS[0]
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"DROP TRIGGER IF EXISTS {update_trigger} ON {t.audit.name}"))
    else:
        connection.execute(text(f"DROP TRIGGER IF EXISTS {update_trigger}"))
    prev = GENESIS
    for row in connection.execute(select(t.audit).order_by(t.audit.c.id)).all():
        digest = row_hash(prev, dict(row._mapping))
        connection.execute(
            t.audit.update().where(t.audit.c.id == row.id).values(prev_hash=prev, row_hash=digest)
        )
        prev = digest
    _protect_audit(connection)
    for index in t.audit.indexes:
        if index.name == "uq_rb_audit_prev_hash":
            index.create(connection, checkfirst=True)
    _stamp_audit(connection)


def _v8_cancellation_state(connection: Connection) -> None:
    """Issue 12: a cancelled outbox row says so in `cancel_reason`, not in `last_error`.

    Before version 8 a cancelled row was a closed one (`rejected_at` set) whose `last_error`
    started `cancelled:`. Each such row gets the reason its text names; a text this version does
    not know (none was ever written) still counts as cancelled, as `unknown`. `last_error` keeps
    the text operators saw.
    """
    _add_columns(connection, t.outbox, ["cancel_reason"])
    o = t.outbox.c
    closed = and_(o.rejected_at.is_not(None), o.cancel_reason.is_(None))
    for reason in CancelReason:
        connection.execute(
            t.outbox.update()
            .where(closed, o.last_error == reason.explanation)
            .values(cancel_reason=reason.value)
        )
    connection.execute(
        t.outbox.update()
        .where(closed, o.last_error.like("cancelled:%"))
        .values(cancel_reason=CancelReason.UNKNOWN.value)
    )


def number_outbox_rows(connection: Connection) -> None:
    """Make the database number every new outbox row, in the order rows are written.

    A case's messages go out in `seq` order (`Ledger.waiting_on`), so the number must follow
    the order of the transactions that wrote them, which no writer's clock does: two workers'
    clocks may disagree, and one clock may step back. The database assigns it instead:

    - PostgreSQL: an identity column. A value is drawn at insert, not at commit, so two
      transactions may commit in the opposite order of their numbers; but only a case's own
      rows are compared, and a case's transactions are serialised by its matter lock
      (`LedgerTransaction.lock`): a later transaction takes the lock after the earlier one
      committed, so its rows draw later values.
    - SQLite: one writer at a time (`BEGIN IMMEDIATE`), so a trigger numbers each row
      `MAX(seq) + 1` just after its insert (an index makes that a lookup): greater than every
      committed row and every earlier row of the same transaction. Not the rowid: VACUUM may
      renumber the rowids of a table without an INTEGER PRIMARY KEY. A number freed by deleting
      the newest row may be given again, which keeps the order of the rows that exist.
    """
    table = connection.dialect.identifier_preparer.quote(t.outbox.name)
    if connection.dialect.name == "postgresql":
        is_identity = connection.execute(
            text(
                "SELECT is_identity FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :table "
                "AND column_name = 'seq'"
            ),
            {"table": t.outbox.name},
        ).scalar_one()
        if is_identity == "YES":
            return
        start = connection.execute(select(func.coalesce(func.max(t.outbox.c.seq), 0) + 1))
        connection.execute(text(f"ALTER TABLE {table} ALTER COLUMN seq SET NOT NULL"))
        # The start is a number this function read, not input.
        connection.execute(
            text(
                f"ALTER TABLE {table} ALTER COLUMN seq ADD GENERATED BY DEFAULT AS IDENTITY "
                f"(START WITH {int(start.scalar_one())})"
            )
        )
        return
    connection.execute(text(_SQLITE_NUMBERING))


#: The trigger of number_outbox_rows on SQLite (the table's name is spelled out: it is fixed).
_SQLITE_NUMBERING = (
    "CREATE TRIGGER IF NOT EXISTS rb_outbox_number AFTER INSERT ON rb_outbox "
    "FOR EACH ROW WHEN NEW.seq IS NULL BEGIN "
    "UPDATE rb_outbox SET seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM rb_outbox) "
    "WHERE message_id = NEW.message_id; END"
)


def _v9_scale_out(connection: Connection) -> None:
    """Issue 11 item 2: `rb_outbox.seq`, the database's order of writes (see
    number_outbox_rows), and `rb_redeliveries`, the unsettled deliveries of a classic queue.

    Rows already written are numbered in the order the ledger used until now: `created_at`,
    then `message_id`.
    """
    t.redeliveries.create(connection, checkfirst=True)
    _add_columns(connection, t.outbox, ["seq"])
    numbered = select(
        t.outbox.c.message_id,
        func.row_number().over(order_by=(t.outbox.c.created_at, t.outbox.c.message_id)).label("n"),
    ).subquery("numbered")
    connection.execute(
        t.outbox.update()
        .where(t.outbox.c.message_id == numbered.c.message_id, t.outbox.c.seq.is_(None))
        .values(seq=numbered.c.n)
    )
    for index in t.outbox.indexes:
        if index.name == "uq_rb_outbox_seq":
            index.create(connection, checkfirst=True)
    number_outbox_rows(connection)


#: Steps from version N-1 to N. Version 1 is the initial schema, created from the metadata.
STEPS: dict[int, Callable[[Connection], None]] = {
    2: _v2_delivery_and_audit,
    3: _v3_delivery_claims,
    4: _v4_whole_life,
    5: _v5_closing_the_loop,
    6: _v6_report_facts,
    7: _v7_audit_chain_and_retention,
    8: _v8_cancellation_state,
    9: _v9_scale_out,
}


def current_version(connection: Connection) -> int:
    if not inspect(connection).has_table(t.schema_info.name):
        return 0
    value = connection.execute(
        select(t.schema_info.c.value).where(t.schema_info.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def migrate(connection: Connection) -> int:
    """Bring the schema to SCHEMA_VERSION and return it; safe to run from several workers."""
    if connection.dialect.name == "postgresql":
        # Workers starting together must not race to create the tables; released at commit.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    found = current_version(connection)
    if found > t.SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"ledger schema is version {found}, this bridge understands up to {t.SCHEMA_VERSION}: "
            "upgrade referral-bridge before starting it against this ledger"
        )
    if found == 0:
        t.metadata.create_all(connection)
        # The triggers of the version-2, -7 and -9 steps, for ledgers that start here.
        _protect_audit(connection)
        _stamp_audit(connection)
        number_outbox_rows(connection)
        connection.execute(
            t.schema_info.insert().values(key="schema_version", value=str(t.SCHEMA_VERSION))
        )
        return t.SCHEMA_VERSION
    for version in range(found + 1, t.SCHEMA_VERSION + 1):
        STEPS[version](connection)
        connection.execute(
            t.schema_info.update()
            .where(t.schema_info.c.key == "schema_version")
            .values(value=str(version))
        )
    return t.SCHEMA_VERSION
