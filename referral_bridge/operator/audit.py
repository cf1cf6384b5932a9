"""The audit trail of disclosures and operator actions: append to it, and query it.

It answers a data protection officer's question "who was told what about this person, and why":
the daemon appends a record when it hands over a referral or withdrawal (ledger/outbox.py), and the
operator tools append one before revealing a dead letter, for each dead letter they purge and
before a subject access export, through `OperatorSession.record` (operator/session.py).

Records are only ever inserted: nothing in this module updates or deletes them, and database
triggers (ledger/migrations.py) refuse UPDATE and DELETE on `rb_audit` from anyone. They hold ids
(case, victim, message), provider names, consent facts and PII-free free text, never names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger.chain import append_audit
from referral_bridge.ledger.records import AuditRecord
from referral_bridge.ledger.schema import audit as audit_table

__all__ = [
    "DEAD_LETTER_PURGED",
    "DEAD_LETTER_PURGE_FAILED",
    "DEAD_LETTER_REVEALED",
    "AuditQuery",
    "AuditRecord",
    "AuditTrail",
    "OperatorAction",
]

#: An operator saw a dead letter's original body (`dlq show --reveal`).
DEAD_LETTER_REVEALED = "dead_letter_revealed"
#: An operator deleted a dead letter (`dlq purge`); recorded just before the removal.
DEAD_LETTER_PURGED = "dead_letter_purged"
#: The removal after a DEAD_LETTER_PURGED record failed: the dead letter is still queued.
DEAD_LETTER_PURGE_FAILED = "dead_letter_purge_failed"


@dataclass(frozen=True, kw_only=True)
class OperatorAction:
    """What an operator did, for the audit trail; `OperatorSession.record` adds who and when."""

    action: str
    message_id: str | None = None
    provider: str | None = None
    case_ref: str | None = None
    victim_id: str | None = None
    #: Free text without personal data, e.g. the operator's reason (scrubbed on the way in).
    detail: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Which records to return; unset criteria match everything. Times are inclusive/exclusive."""

    case_ref: str | None = None
    victim_id: str | None = None
    provider: str | None = None
    action: str | None = None
    message_id: str | None = None
    #: At or after this moment.
    since: datetime | None = None
    #: Before this moment.
    until: datetime | None = None
    limit: int | None = None


class AuditTrail:
    """The `rb_audit` table of a ledger, through SQLAlchemy Core; append and query only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def append(self, record: AuditRecord) -> int:
        """Insert one record in its own transaction; returns its id once it is committed.

        Callers append *before* the action they record, so that nothing happens unaudited.
        """
        [record_id] = self.append_all([record])
        return record_id

    def append_all(self, records: Iterable[AuditRecord]) -> list[int]:
        """Insert records in one transaction; returns their ids once committed."""
        records = list(records)
        if not records:
            return []
        try:
            with self._engine.begin() as connection:
                ids = append_audit(connection, records)
        except OperationalError as exc:
            raise LedgerUnavailableError(
                f"cannot write the audit trail ({type(exc.orig).__name__}); nothing was done. "
                "Check that the ledger database is running and writable, then try again"
            ) from None
        return ids

    def query(self, query: AuditQuery) -> list[AuditRecord]:
        """Matching records, oldest first."""
        c = audit_table.c
        statement = select(audit_table).order_by(c.at, c.id)
        for column, wanted in (
            (c.case_ref, query.case_ref),
            (c.victim_id, query.victim_id),
            (c.provider, query.provider),
            (c.action, query.action),
            (c.message_id, query.message_id),
        ):
            if wanted is not None:
                statement = statement.where(column == wanted)
        if query.since is not None:
            statement = statement.where(c.at >= query.since)
        if query.until is not None:
            statement = statement.where(c.at < query.until)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        try:
            with self._engine.connect() as connection:
                return [_record(row._mapping) for row in connection.execute(statement)]
        except OperationalError as exc:
            raise LedgerUnavailableError(
                f"cannot read the audit trail ({type(exc.orig).__name__}); check that the "
                "ledger database is running and reachable"
            ) from None


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        at=row["at"],
        action=row["action"],
        actor=row["actor"],
        message_id=row["message_id"],
        provider=row["provider"],
        case_ref=row["case_ref"],
        victim_id=row["victim_id"],
        lawful_basis=row["lawful_basis"],
        consent_state=row["consent_state"],
        consent_recorded_at=row["consent_recorded_at"],
        consent_recorded_by=row["consent_recorded_by"],
        consent_regime=row["consent_regime"],
        detail=row["detail"],
        server_at=row["server_at"],
    )
