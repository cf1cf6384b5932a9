"""Appending to the audit trail as one hash chain, and reading it back to verify.

Every insert into `rb_audit` goes through `append_audit`, in the caller's transaction, as an
`AuditRecord` (the daemon's disclosures, operators' actions, the retention sweep's erasures): it
clips every field to its column and scrubs the free text, whoever wrote it. On
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
from referral_bridge.ledger.records import AuditRecord
from referral_bridge.logging import scrub

#: Arbitrary constant naming the PostgreSQL advisory lock held while appending ("RB_AUDIT").
AUDIT_CHAIN_LOCK = 0x52425F4155444954


def append_audit(connection: Connection, records: Sequence[AuditRecord]) -> list[int]:
    """Insert audit records at the head of the chain.

    Returns their ids. The lock is held until the caller's transaction ends, so take it last
    in a transaction that does other work (nothing waits on anything while holding it).
    """
    if not records:
        return []
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_CHAIN_LOCK})
    head = connection.execute(
        select(t.audit.c.row_hash).order_by(t.audit.c.id.desc()).limit(1)
    ).scalar_one_or_none()
    prev = head or GENESIS
    ids: list[int] = []
    for record in records:
        values = _row(record)
        digest = row_hash(prev, values)
        result = connection.execute(
            t.audit.insert().values(**values, prev_hash=prev, row_hash=digest)
        )
        key = result.inserted_primary_key
        assert key is not None  # an INSERT of one row always has one
        ids.append(int(key[0]))
        prev = digest
    return ids


_MAX_ACTOR = 200
_MAX_DETAIL = 1000
_MAX_MESSAGE_ID = 200
_MAX_REF = 64


def _row(record: AuditRecord) -> dict[str, Any]:
    """The record's columns (id, hashes and server_at are the chain's and the database's)."""
    return {
        "at": record.at,
        "action": record.action,
        "actor": record.actor[:_MAX_ACTOR],
        "message_id": _clip(record.message_id, _MAX_MESSAGE_ID),
        "provider": record.provider,
        "case_ref": _clip(record.case_ref, _MAX_REF),
        "victim_id": _clip(record.victim_id, _MAX_REF),
        "lawful_basis": record.lawful_basis,
        "consent_state": record.consent_state,
        "consent_recorded_at": record.consent_recorded_at,
        "consent_recorded_by": record.consent_recorded_by,
        "consent_regime": record.consent_regime,
        # Operators type some of this: it must not become a back door for personal data.
        "detail": _clip(scrub(record.detail), _MAX_DETAIL) if record.detail is not None else None,
    }


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


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
