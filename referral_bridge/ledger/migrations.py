"""Schema versioning: create or upgrade the ledger at start-up, refuse a newer schema."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text

from referral_bridge.errors import LedgerSchemaError
from referral_bridge.ledger import schema as t

#: Steps from version N-1 to N. Version 1 is the initial schema, created from the metadata.
#: Arbitrary constant naming the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x52425F4D49475254

STEPS: dict[int, Callable[[Connection], None]] = {}


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
