"""The outbox's writer: outbound CloudEvents written to the ledger, in the caller's transaction.

Every message the bridge sends goes through here (referrals, withdrawals, officer tasks), so the
envelope, its headers and where it is routed are decided once. Delivery reads the rows later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from referral_bridge.core.events import OutboundEvent, TaskKind
from referral_bridge.ledger import AuditFacts, IssuedTaskRow, LedgerTransaction, OutboxMessage
from referral_bridge.wire import EVENT_TYPE_HEADER, JSON_CONTENT

#: Each kind of officer task: its CloudEvent type, and its routing key (also its outbox kind).
TASK_MESSAGES: Mapping[TaskKind, tuple[str, str]] = {
    TaskKind.LEAFLET: ("officer.task.leaflet", "task.leaflet"),
    TaskKind.CRIME_REVIEW: ("officer.task.crime_review", "task.crime_review"),
    TaskKind.ESCALATION: ("officer.task.escalation", "task.escalation"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Routes:
    """Where outbound messages go (contract §1)."""

    referrals_exchange: str
    tasks_exchange: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One outbound CloudEvent to write to the outbox, with what delivery needs to know of it."""

    event_id: str
    kind: str
    message_id: str
    event_type: str
    content_type: str
    data: Any
    exchange: str
    routing_key: str
    #: Referrals and withdrawals: the provider, the deadline (referrals) and the audit facts.
    provider: str | None = None
    deadline: datetime | None = None
    audit: AuditFacts | None = None
    schema_version: int = 1


class OutboxWriter:
    """Writes outbound messages and officer tasks to the outbox, from this bridge (`source`)."""

    def __init__(self, *, source: str, routes: Routes) -> None:
        self._source = source
        self.routes = routes

    def task(
        self,
        tx: LedgerTransaction,
        task: IssuedTaskRow,
        message: BaseModel,
        event_id: str,
        now: datetime,
    ) -> None:
        """Record an officer task and write its message to the outbox."""
        tx.add_task(task)
        event_type, routing_key = TASK_MESSAGES[TaskKind(task.kind)]
        self.enqueue(
            tx,
            OutboxEntry(
                event_id=event_id,
                kind=routing_key,
                message_id=task.task_id,
                event_type=event_type,
                content_type=JSON_CONTENT,
                data=message.model_dump(mode="json"),
                exchange=self.routes.tasks_exchange,
                routing_key=routing_key,
            ),
            now,
        )

    def enqueue(self, tx: LedgerTransaction, entry: OutboxEntry, now: datetime) -> None:
        envelope = OutboundEvent(
            id=entry.message_id,
            source=self._source,
            type=entry.event_type,
            time=now,
            schemaversion=entry.schema_version,
            datacontenttype=entry.content_type,
            data=entry.data,
        )
        body = json.dumps(envelope.model_dump(mode="json"), separators=(",", ":")).encode()
        tx.add_outbox(
            OutboxMessage(
                message_id=entry.message_id,
                event_id=entry.event_id,
                kind=entry.kind,
                exchange=entry.exchange,
                routing_key=entry.routing_key,
                headers={EVENT_TYPE_HEADER: entry.event_type},
                body=body,
                provider=entry.provider,
                deadline=entry.deadline,
                audit=entry.audit,
            ),
            now,
        )
