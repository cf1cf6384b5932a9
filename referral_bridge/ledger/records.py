"""What the ledger takes and returns: frozen records, and the states they can be in.

States are `StrEnum`s, so a member compares equal to the string stored in a column or printed
by an operator tool, and nothing outside this module spells those strings again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from referral_bridge.core.history import VictimHistory

#: The daemon's name in audit records (operators' tools record the operator's login).
DAEMON_ACTOR = "referral-bridge"


class ActionKind(StrEnum):
    """What `rb_actions.action` records was done for a victim."""

    REFERRAL = "referral"
    UPDATE = "update"
    LEAFLET = "leaflet"
    WITHDRAWAL = "withdrawal"


class ReviewResolution(StrEnum):
    """How a crime review ended when a crime was linked to its incident."""

    RECORDED_IN_TIME = "recorded_in_time"
    RECORDED_AFTER_REVIEW = "recorded_after_review"


class DeliveryState(StrEnum):
    """Where an outbox row stands, as operators see it (`provider deliveries`)."""

    #: Still to deliver: waiting, parked after failed attempts, or being attempted now.
    PENDING = "pending"
    DELIVERED = "delivered"
    #: The receiver refused it for good; it waits for an operator (`provider resend`).
    REJECTED = "rejected"
    #: Stopped before delivery (see CancelReason): never to be sent, resent or replaced.
    CANCELLED = "cancelled"


class DeliveryFilter(StrEnum):
    """Which rows `Ledger.deliveries` lists."""

    UNDELIVERED = "undelivered"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    ALL = "all"


class CancelReason(StrEnum):
    """Why an outbox row was cancelled before delivery (`rb_outbox.cancel_reason`, version 8).

    A cancelled row also has `rejected_at` set: it is closed to delivery, so every query that
    skips closed rows (delivery passes, fallbacks, gauges, retention) skips it too, and
    `cancel_reason` says it was the bridge that stopped it, not the receiver that refused it.
    """

    #: A referral whose victim withdrew consent before any attempt at it started.
    CONSENT_WITHDRAWN = "consent_withdrawn"
    #: A referral whose victim withdrew consent while an attempt at it may have reached the
    #: provider: no further attempt; its withdrawal follows.
    WITHDRAWN_AFTER_ATTEMPT = "withdrawn_after_attempt"
    #: A withdrawal whose referral was never delivered.
    NOTHING_TO_WITHDRAW = "nothing_to_withdraw"
    #: An update whose referral was withdrawn before the update was sent.
    REFERRAL_WITHDRAWN = "referral_withdrawn"
    #: A referral of a crime cancelled or transferred before delivery.
    CASE_CLOSED = "case_closed"
    #: Cancelled before version 8 with a text this version does not know (`last_error` has it).
    UNKNOWN = "unknown"

    @property
    def explanation(self) -> str:
        """The operator's text for `last_error` (no personal data); starts `cancelled:`."""
        return _CANCELLED_BECAUSE[self]


_CANCELLED_BECAUSE = {
    CancelReason.CONSENT_WITHDRAWN: "cancelled: consent was withdrawn before delivery; never sent",
    CancelReason.WITHDRAWN_AFTER_ATTEMPT: (
        "cancelled: consent was withdrawn after an attempt that may have reached the provider; "
        "not tried again, and its withdrawal follows"
    ),
    CancelReason.NOTHING_TO_WITHDRAW: (
        "cancelled: its referral was never delivered, so there is nothing to withdraw"
    ),
    CancelReason.REFERRAL_WITHDRAWN: (
        "cancelled: its referral was withdrawn before it was sent; never sent"
    ),
    CancelReason.CASE_CLOSED: (
        "cancelled: the crime was cancelled or transferred before delivery; never sent"
    ),
    CancelReason.UNKNOWN: "cancelled: before ledger schema 8, for a reason not recorded",
}


class Cancellation(StrEnum):
    """What `LedgerTransaction.cancel_referral` found, and so what becomes of the withdrawal."""

    #: No attempt ever started: the provider cannot have it; nothing to withdraw.
    NEVER_SENT = "never_sent"
    #: An attempt started (it may be under way): no more attempts, and the withdrawal follows
    #: once the attempt is over.
    MAY_HAVE_BEEN_SENT = "may_have_been_sent"
    #: Delivered, rejected or unknown: left as it is; the withdrawal follows a delivery.
    UNCHANGED = "unchanged"


class ResendOutcome(StrEnum):
    """What `Ledger.resend` did with an operator's request."""

    RESENT = "resent"
    NOT_FOUND = "not_found"
    DELIVERED = "delivered"
    #: Not rejected: it is still being retried.
    NOT_REJECTED = "not_rejected"
    #: A referral whose withdrawal exists: consent has gone, so it must not be sent.
    WITHDRAWN = "withdrawn"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What `Ledger.resend` did, and for which provider (None if there is no such row)."""

    outcome: ResendOutcome
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class AuditFacts:
    """What a data protection officer needs about a disclosure; no personal data."""

    case_ref: str
    victim_id: str
    provider: str
    lawful_basis: str | None = None
    consent_state: str | None = None
    consent_recorded_at: datetime | None = None
    consent_recorded_by: str | None = None
    consent_regime: str | None = None

    def as_json(self) -> dict[str, Any]:
        recorded = self.consent_recorded_at.isoformat() if self.consent_recorded_at else None
        return {
            "case_ref": self.case_ref,
            "victim_id": self.victim_id,
            "provider": self.provider,
            "lawful_basis": self.lawful_basis,
            "consent_state": self.consent_state,
            "consent_regime": self.consent_regime,
            "consent_recorded_at": recorded,
            "consent_recorded_by": self.consent_recorded_by,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> AuditFacts | None:
        """The facts `as_json` stored in `rb_outbox.audit` (None for an officer task)."""
        if not value:
            return None
        recorded = value.get("consent_recorded_at")
        return cls(
            case_ref=value["case_ref"],
            victim_id=value["victim_id"],
            provider=value["provider"],
            lawful_basis=value.get("lawful_basis"),
            consent_state=value.get("consent_state"),
            consent_recorded_at=datetime.fromisoformat(recorded) if recorded else None,
            consent_recorded_by=value.get("consent_recorded_by"),
            consent_regime=value.get("consent_regime"),
        )


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    message_id: str
    event_id: str
    kind: str
    exchange: str
    routing_key: str
    headers: Mapping[str, Any]
    body: bytes
    #: Referrals and withdrawals: the provider, the deadline (referrals) and the audit facts.
    provider: str | None = None
    deadline: datetime | None = None
    audit: AuditFacts | None = None


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """An outbox row still to deliver, with its delivery state and the case it belongs to."""

    message: OutboxMessage
    #: From the rb_actions row of the same message id (None if there is none).
    case_ref: str | None
    victim_id: str | None
    #: A withdrawal: the referral it withdraws.
    related_id: str | None
    created_at: datetime
    #: The database's order of writes (schema.outbox `seq`): what "earlier" means for delivery.
    seq: int
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    rejected_at: datetime | None
    fallback_task_id: str | None
    published_at: datetime | None = None
    #: While ahead, an attempt at this row may be under way (`Ledger.claim_delivery`).
    claimed_until: datetime | None = None
    #: Set when the bridge cancelled the row before delivery.
    cancel_reason: CancelReason | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def cancelled(self) -> bool:
        """Cancelled before delivery (consent withdrawn): never to be sent."""
        return self.cancel_reason is not None

    @property
    def state(self) -> DeliveryState:
        """For operators (`provider deliveries`): derived from the row's columns, see schema."""
        if self.published_at is not None:
            return DeliveryState.DELIVERED
        if self.cancelled:
            return DeliveryState.CANCELLED
        if self.rejected_at is not None:
            return DeliveryState.REJECTED
        return DeliveryState.PENDING


@dataclass(frozen=True, slots=True)
class RecordedAction:
    """An action to record for a victim: referral, update, leaflet or withdrawal."""

    case_ref: str
    victim_id: str
    action: ActionKind
    target: str
    message_id: str
    provider: str
    service: str | None
    related_id: str | None
    due_at: datetime | None
    #: PII-free facts: generation, revision, fingerprint, reason (see schema.actions).
    facts: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IssuedTaskRow:
    """An officer task as issued, for `rb_tasks` (completion and escalation come later)."""

    task_id: str
    kind: str
    reason: str
    case_ref: str
    victim_id: str | None
    officer_unit: str | None
    issued_at: datetime
    due_by: datetime | None


@dataclass(frozen=True, slots=True)
class CaseState:
    """What the ledger knows about a case: its snapshot (if any) and each victim's history
    across the case's whole matter."""

    case_ref: str
    snapshot: Mapping[str, Any] | None
    snapshot_kind: str | None
    history: Mapping[str, VictimHistory]
    #: The snapshot was erased under the retention policy (`snapshot` is then None).
    erased: bool = False


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One audit row; `id` is assigned by the ledger and None until appended."""

    at: datetime
    action: str
    actor: str
    message_id: str | None = None
    provider: str | None = None
    case_ref: str | None = None
    victim_id: str | None = None
    lawful_basis: str | None = None
    consent_state: str | None = None
    consent_recorded_at: datetime | None = None
    consent_recorded_by: str | None = None
    consent_regime: str | None = None
    #: Free text without personal data (scrubbed again on the way in).
    detail: str | None = None
    id: int | None = None
    #: PostgreSQL: when the database wrote the record, by its own clock (None on SQLite). Set
    #: by a trigger whatever the writer says: compare it with `at` to see a backdated record.
    server_at: datetime | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, Any]:
        """The record with timestamps as ISO 8601 strings, for `audit --json`."""
        document = asdict(self)
        for key in ("at", "consent_recorded_at", "server_at"):
            value = document[key]
            document[key] = value.isoformat() if value is not None else None
        return document
