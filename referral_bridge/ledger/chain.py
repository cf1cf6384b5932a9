"""Appending to the audit trail as one hash chain, and reading it back to verify.

Every insert into `rb_audit` goes through `append_audit`, in the caller's transaction: on
PostgreSQL it first takes a transaction-level advisory lock, so appends from any number of
workers and operator tools are serialised and each names the hash of the record before it (on
SQLite `BEGIN IMMEDIATE` already serialises every writer). A unique index on `prev_hash` refuses
a second record after the same one, should anything insert without the lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select, text

from referral_bridge.core.audit_chain import GENESIS, row_hash
from referral_bridge.ledger import schema as t

#: Arbitrary constant naming the PostgreSQL advisory lock held while appending ("RB_AUDIT").
AUDIT_CHAIN_LOCK = 0x52425F4155444954


def append_audit(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert audit rows (column -> value, without id or hashes) at the head of the chain.

    Returns their ids. The lock is held until the caller's transaction ends, so take it last
    in a transaction that does other work (nothing waits on anything while holding it).
    """
    if not rows:
        return []
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK})
    head = connection.execute(
        select(t.audit.c.row_hash).order_by(t.audit.c.id.desc()).limit(1)
    ).scalar_one_or_none()
    prev = head or GENESIS
    ids: list[int] = []
    for row in rows:
        values = {key: value for key, value in row.items() if key not in _NOT_GIVEN}
        digest = row_hash(prev, values)
        result = connection.execute(
            t.audit.insert().values(**values, prev_hash=prev, row_hash=digest)
        )
        key = result.inserted_primary_key
        assert key is not None  # an INSERT of one row always has one
        ids.append(int(key[0]))
        prev = digest
    return ids


#: Set by the chain or the database, never by a caller.
_NOT_GIVEN = frozenset({"id", "prev_hash", "row_hash", "server_at"})


def chain_rows(connection: Connection, *, batch: int = 1000) -> Iterator[Mapping[str, Any]]:
    """Every audit row in id order, read in batches (the trail may be long)."""
    after = 0
    while True:
        rows = connection.execute(
            select(t.audit).where(t.audit.c.id > after).order_by(t.audit.c.id).limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            yield dict(row._mapping)
        after = int(rows[-1].id)
