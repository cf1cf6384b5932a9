"""Ledger tables (SQLAlchemy Core) and the schema version they make up.

Times are stored as timezone-aware UTC. Refs are force references (crime or incident); a
"matter" is the ref decisions are made under: the crime once an incident is linked to one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (naive storage) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the ledger stores only timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Bump with a migration step in migrations.py whenever the tables below change.
SCHEMA_VERSION = 9

metadata = MetaData()

schema_info = Table(
    "rb_schema_info",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

#: One row per ref, used to serialise work on a matter across workers (SELECT ... FOR UPDATE).
locks = Table("rb_locks", metadata, Column("ref", String(64), primary_key=True))

#: Version 4: an event is a duplicate if its `source` and `id` were seen before (contract §2).
#: Rows from before version 4 have source "" and match an id from any source.
processed_events = Table(
    "rb_processed_events",
    metadata,
    Column("source", String(500), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("event_type", String(64), nullable=False),
    Column("record_ref", String(64), nullable=False),
    Column("result", String(64), nullable=False),
    Column("processed_at", UtcDateTime(), nullable=False),
)

#: The latest snapshot of each crime or incident record (holds personal data: see security.md).
records = Table(
    "rb_records",
    metadata,
    Column("record_ref", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    Column("snapshot", JSON, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    #: Version 7 (retention): when the snapshot was erased (it is then `{}`); NULL: held.
    Column("erased_at", UtcDateTime()),
)

#: Version 1: incident -> crime, one crime per incident. Replaced in version 2 by `links`; kept
#: here only so the migration can read it.
aliases = Table(
    "rb_aliases",
    MetaData(),
    Column("ref", String(64), primary_key=True),
    Column("matter_ref", String(64), nullable=False, index=True),
)

#: Version 2: an incident and a crime recorded from it (either side may name the link, and one
#: incident may give rise to several crimes). Records joined by links are one matter: a victim
#: is referred at most once per provider across all of them.
links = Table(
    "rb_links",
    metadata,
    Column("incident_ref", String(64), primary_key=True),
    Column("crime_ref", String(64), primary_key=True, index=True),
)

#: The latest `consent.updated` per ref (as the source gave it) and victim.
consents = Table(
    "rb_consents",
    metadata,
    Column("case_ref", String(64), primary_key=True),
    Column("victim_id", String(64), primary_key=True),
    Column("referral", String(16), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("recorded_by", String(200), nullable=False),
    Column("lawful_basis", String(200)),
)

#: What was done, unique per case, victim, action and target: referral (target = provider, or
#: "provider#N" for generation N > 1), update (target = its message id), leaflet (target =
#: reason), withdrawal (target = provider before version 4, the referral id since).
actions = Table(
    "rb_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_ref", String(64), nullable=False, index=True),
    Column("victim_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("target", String(100), nullable=False),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("provider", String(100), nullable=False),
    Column("service", String(100)),
    Column("related_id", String(64)),
    Column("due_at", UtcDateTime()),
    Column("at", UtcDateTime(), nullable=False),
    #: Version 4, no personal data: referral `generation`, update `revision`, the `fingerprint`
    #: of what the provider holds, a withdrawal's `reason`. NULL: generation 1, reason withdrawn.
    Column("facts", JSON),
    UniqueConstraint("case_ref", "victim_id", "action", "target", name="uq_rb_actions_once"),
)

holds = Table(
    "rb_holds",
    metadata,
    Column("case_ref", String(64), primary_key=True),
    Column("victim_id", String(64), primary_key=True),
    Column("until", UtcDateTime(), nullable=False, index=True),
    Column("open", Boolean, nullable=False),
    Column("ended_at", UtcDateTime()),
    Column("ended_reason", String(64)),
)

#: Every decision, for audit and compliance reporting. No personal data.
decisions = Table(
    "rb_decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(200), nullable=False, index=True),
    Column("case_ref", String(64), nullable=False, index=True),
    Column("victim_id", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("rule", String(32)),
    Column("regime", String(32)),
    Column("reason", String(64), nullable=False),
    Column("explanation", Text, nullable=False),
    Column("decided_at", UtcDateTime(), nullable=False, index=True),
    #: Version 4: a referral decided after its Victims' Code deadline had passed.
    Column("late", Boolean),
    # --- Version 6 (issue 8, the compliance report): what the report groups and times by, so it
    # never reads a snapshot (snapshots hold personal data). NULL on rows written before.
    #: The category the rules decided on (Decision.category): offence category after the
    #: policy's class mapping, `other` for a crime disclosed in an incident, else the incident's.
    Column("category", String(64)),
    #: refer: when the Victims' Code clock started (the report, or consent when later).
    Column("clock_from", UtcDateTime()),
    # --- end of version 6
)

#: Version 4: crime data integrity. One row per incident where a crime was disclosed: checked at
#: `review_at`; `raised_at` once its crime-review task is issued; `resolved_at` when a crime is
#: linked (`resolution`: `recorded_in_time` or `recorded_after_review`).
crime_reviews = Table(
    "rb_crime_reviews",
    metadata,
    Column("incident_ref", String(64), primary_key=True),
    Column("review_at", UtcDateTime(), nullable=False, index=True),
    Column("task_id", String(64)),
    Column("raised_at", UtcDateTime()),
    Column("resolved_at", UtcDateTime()),
    Column("resolution", String(32)),
)

# --- Version 5: closing the loop (issue 8). Officer tasks and provider outcomes. -----------------

#: One row per officer task the bridge issued (`kind`: leaflet, crime_review or escalation),
#: written in the transaction that issues it. `completed_*` and `result` come from the force's
#: `task.completed`; `escalated_at` and `escalation_task_id` are set, once, in the transaction
#: that writes the escalation to the outbox. No personal data.
tasks = Table(
    "rb_tasks",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    #: The task's reason: a leaflet reason, `crime_not_recorded`, or the escalated task's reason.
    Column("reason", String(64), nullable=False),
    #: The case (leaflet, escalation) or incident (crime review) the task is about.
    Column("case_ref", String(64), nullable=False, index=True),
    Column("victim_id", String(64)),
    Column("officer_unit", String(100)),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("due_by", UtcDateTime(), index=True),
    Column("completed_at", UtcDateTime()),
    #: The completing officer's collar, or NULL when the bridge closed the task itself (a crime
    #: review whose incident had a crime recorded from it after the task was raised).
    Column("completed_by", String(64)),
    Column("result", String(32)),
    Column("escalated_at", UtcDateTime()),
    Column("escalation_task_id", String(64)),
)

#: The latest outcome a provider reported for each referral it was sent (by the provider's
#: `at`; an older outcome changes nothing). `first_contacted_at` keeps the `at` of the first
#: `contacted`, for "contacted within 2 working days". No personal data.
referral_outcomes = Table(
    "rb_referral_outcomes",
    metadata,
    #: The referral's message id as sent (rb_actions.message_id of the referral).
    Column("referral_id", String(64), primary_key=True),
    Column("provider", String(100), nullable=False),
    Column("case_ref", String(64), nullable=False, index=True),
    Column("victim_id", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("event_source", String(500), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("first_contacted_at", UtcDateTime()),
)

# --- end of version 5 ---------------------------------------------------------------------------

#: Messages to publish. Bodies of referrals are sealed: no plaintext personal data here.
outbox = Table(
    "rb_outbox",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("event_id", String(200), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("exchange", String(200), nullable=False),
    Column("routing_key", String(200), nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), index=True),
    Column("attempts", Integer, nullable=False, default=0),
    # Version 2: delivery to providers (issue 3) and the audit trail (issue 4).
    #: The provider a referral or withdrawal is for; NULL for officer tasks.
    Column("provider", String(100)),
    #: When a parked delivery is next tried; NULL means "now".
    Column("next_attempt_at", UtcDateTime(), index=True),
    #: Why the last attempt failed: a code and PII-free text.
    Column("last_error", String(500)),
    #: When the row was closed to delivery: its receiver refused it for good (it is kept for an
    #: operator), or the bridge cancelled it (then `cancel_reason` is set too).
    Column("rejected_at", UtcDateTime()),
    #: A referral's Victims' Code deadline: undelivered by then means a fallback leaflet task.
    Column("deadline", UtcDateTime(), index=True),
    #: The fallback leaflet task issued for this message, if any.
    Column("fallback_task_id", String(64)),
    #: PII-free facts for the audit record written when the message is delivered.
    Column("audit", JSON),
    # Version 3: one sender at a time (issue 9).
    #: Set by the worker that claimed the row for an attempt, until when it may be sending; while
    #: it lies ahead nobody else sends the row, and a withdrawal waits for the attempt to end.
    Column("claimed_until", UtcDateTime(), index=True),
    #: An attempt ended without knowing whether the receiver took the message (a timeout, a
    #: dropped connection, a crash): it may hold it, so a withdrawal must be sent after all.
    Column("maybe_delivered", Boolean, nullable=False, default=False),
    # Version 8: cancellation is a state of its own, not a prefix of `last_error`.
    #: Why the bridge cancelled the row before delivery (records.CancelReason); NULL: it did not.
    #: `last_error` keeps the operator's text ("cancelled: ...").
    Column("cancel_reason", String(32)),
    # Version 9: scale-out (issue 11 item 2).
    #: The order rows were written in, assigned by the database, never by a writer's clock: a
    #: case's messages go out in `seq` order (migrations.number_outbox_rows says how and why).
    #: Declared nullable because SQLite fills it in a trigger just after the insert; PostgreSQL
    #: makes it an identity column, NOT NULL.
    Column("seq", BigInteger),
    Index("uq_rb_outbox_seq", "seq", unique=True),
)

#: Append-only record of disclosures and operator actions: who was told what, when and why.
audit = Table(
    "rb_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False, index=True),
    #: e.g. referral_sent, withdrawal_sent, dead_letter_revealed, dead_letter_purged.
    Column("action", String(64), nullable=False),
    #: Who: "referral-bridge" for the daemon, the operator's login for tools.
    Column("actor", String(200), nullable=False),
    Column("message_id", String(200)),
    Column("provider", String(100), index=True),
    Column("case_ref", String(64), index=True),
    Column("victim_id", String(64), index=True),
    Column("lawful_basis", String(200)),
    Column("consent_state", String(16)),
    #: Version 4: `opt_out`, `explicit` or `incident`, beside the state and the lawful basis.
    Column("consent_regime", String(16)),
    Column("consent_recorded_at", UtcDateTime()),
    Column("consent_recorded_by", String(200)),
    #: Free text without personal data: an operator's stated reason, a delivery route.
    Column("detail", String(1000)),
    # Version 7: the hash chain (core/audit_chain.py) and, on PostgreSQL, the server's time.
    #: The previous record's `row_hash` (the first record's is 64 zeros); unique: no fork.
    Column("prev_hash", String(64)),
    #: SHA-256 over the encoding tag, `prev_hash` and this record's fields.
    Column("row_hash", String(64)),
    #: PostgreSQL: set by a trigger to clock_timestamp() whatever the insert says (SQLite: NULL).
    Column("server_at", UtcDateTime()),
    Index("uq_rb_audit_prev_hash", "prev_hash", unique=True),
)

# --- Version 7: retention (issue 10 item 7) ----------------------------------------------------
#: One row per periodic job shared by every worker: `retention` is claimed by the worker that
#: moves `last_run_at` forward (a compare-and-set), so the daily sweep runs once among many.
jobs = Table(
    "rb_jobs",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_run_at", UtcDateTime(), nullable=False),
)
# --- end of version 7 ----------------------------------------------------------------------

# --- Version 9: scale-out (issue 11 item 2) ----------------------------------------------------
#: How often a message came back from a classic queue unsettled (its worker died or lost its
#: connection while handling it), which such a queue does not count itself (a quorum queue's
#: `x-delivery-count` does). Keyed by a SHA-256 of the message's identity, not the message: no
#: personal data. Written only for redelivered messages (ledger/redeliveries.py).
redeliveries = Table(
    "rb_redeliveries",
    metadata,
    Column("message_key", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_at", UtcDateTime(), nullable=False, index=True),
)
# --- end of version 9 ----------------------------------------------------------------------
