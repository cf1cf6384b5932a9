"""The ledger: processed events, case state, what was done for each victim, holds and the outbox.

Import from here: the modules behind it (records, engine, transaction, outbox, due,
operator_queries, store) are its layout, not its surface.
"""

from referral_bridge.ledger.records import (
    DAEMON_ACTOR,
    ActionKind,
    AuditFacts,
    Cancellation,
    CancelReason,
    CaseState,
    DeliveryFilter,
    DeliveryState,
    IssuedTaskRow,
    OutboxMessage,
    PendingDelivery,
    RecordedAction,
    ResendOutcome,
    ResendResult,
    ReviewResolution,
)
from referral_bridge.ledger.store import Ledger
from referral_bridge.ledger.transaction import LedgerTransaction

__all__ = [
    "DAEMON_ACTOR",
    "ActionKind",
    "AuditFacts",
    "CancelReason",
    "Cancellation",
    "CaseState",
    "DeliveryFilter",
    "DeliveryState",
    "IssuedTaskRow",
    "Ledger",
    "LedgerTransaction",
    "OutboxMessage",
    "PendingDelivery",
    "RecordedAction",
    "ResendOutcome",
    "ResendResult",
    "ReviewResolution",
]
