"""PostgreSQL roles: the owner that migrates, and the bridge's role that must not alter the audit.

The owner (`referral-bridge migrate`) creates and upgrades the tables and may grant the bridge's
role what it needs: read and write on the working tables, only SELECT and INSERT on `rb_audit`,
only SELECT on `rb_schema_info`. `run` checks its own role with `audit_powers` and refuses to
start while it could rewrite the audit trail.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from referral_bridge.ledger import schema as t
from referral_bridge.ledger.migrations import AUDIT_GUARD_FUNCTION, AUDIT_STAMP_FUNCTION

#: Privileges the bridge's role gets on each table; every other table gets WORKING.
WORKING = "SELECT, INSERT, UPDATE, DELETE"
APPEND_ONLY = "SELECT, INSERT"
READ_ONLY = "SELECT"


def grant_statements(role: str, schema: str = "public") -> list[str]:
    """The SQL that gives `role` exactly what `run` and the operator tools need (also shown in
    docs/operations.md). `role` and `schema` are quoted as identifiers."""
    quote = _quote
    who, where = quote(role), quote(schema)
    statements = [f"GRANT USAGE ON SCHEMA {where} TO {who}"]
    for table in t.metadata.sorted_tables:
        rights = {t.audit.name: APPEND_ONLY, t.schema_info.name: READ_ONLY}.get(table.name, WORKING)
        statements.append(f"GRANT {rights} ON {where}.{quote(table.name)} TO {who}")
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {where} TO {who}")
    return statements


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def grant(connection: Connection, role: str) -> list[str]:
    """Run `grant_statements` for `role` in the ledger's current schema; returns them."""
    schema = str(connection.execute(text("SELECT current_schema()")).scalar_one())
    statements = grant_statements(role, schema)
    for statement in statements:
        connection.execute(text(statement))
    return statements


def audit_powers(connection: Connection) -> list[str]:
    """What lets the connected role alter or bypass the audit trail's protection; [] if nothing.

    Superuser; owning `rb_audit` or its trigger functions (or being a member of a role that
    does); UPDATE (on any column), DELETE, TRUNCATE or TRIGGER on `rb_audit`.
    """
    row = connection.execute(
        text(
            "SELECT r.rolsuper AS superuser, "
            "pg_has_role(current_user, c.relowner, 'MEMBER') AS owns, "
            "has_any_column_privilege(current_user, c.oid, 'UPDATE') AS can_update, "
            "has_table_privilege(current_user, c.oid, 'DELETE') AS can_delete, "
            "has_table_privilege(current_user, c.oid, 'TRUNCATE') AS can_truncate, "
            "has_table_privilege(current_user, c.oid, 'TRIGGER') AS can_trigger, "
            "EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname IN (:guard, :stamp) "
            "AND pg_has_role(current_user, p.proowner, 'MEMBER')) AS owns_functions, "
            "current_user AS role "
            "FROM pg_class c, pg_roles r "
            "WHERE c.oid = to_regclass(:table) AND r.rolname = current_user"
        ),
        {"table": t.audit.name, "guard": AUDIT_GUARD_FUNCTION, "stamp": AUDIT_STAMP_FUNCTION},
    ).one()
    powers = [
        name
        for name, held in (
            ("is a superuser", row.superuser),
            ("owns rb_audit (or is a member of its owner role)", row.owns),
            ("may UPDATE rb_audit", row.can_update),
            ("may DELETE from rb_audit", row.can_delete),
            ("may TRUNCATE rb_audit", row.can_truncate),
            ("may create TRIGGERs on rb_audit", row.can_trigger),
            ("owns the audit trail's trigger functions", row.owns_functions),
        )
        if held
    ]
    return [f"role {row.role} {power}" for power in powers]
