"""The ledger: processed events, case state, what was done for each victim, holds and the outbox."""

from referral_bridge.ledger.store import (
    AuditFacts,
    CaseState,
    IssuedTaskRow,
    Ledger,
    LedgerTransaction,
    OutboxMessage,
    RecordedAction,
)

__all__ = [
    "AuditFacts",
    "CaseState",
    "IssuedTaskRow",
    "Ledger",
    "LedgerTransaction",
    "OutboxMessage",
    "RecordedAction",
]
