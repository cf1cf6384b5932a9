"""Handling one inbound message: parse, decide, record and publish, with nothing lost or sent twice.

The order is fixed by the contract: validate -> duplicate check -> decide -> write decisions,
state and outbox in one ledger transaction -> publish the outbox with confirms -> ack. The
consumer acks or dead-letters according to the Verdict returned here, in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot, as_decided
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import (
    CaseEventData,
    CaseKind,
    ConsentUpdated,
    CrimeRecorded,
    CrimeStatus,
    DeadLetterReason,
    InboundEvent,
    IncidentRecorded,
    OutboundEvent,
    ReferralOutcome,
    TaskCompleted,
    TaskKind,
    TaskOfficer,
    Victim,
)
from referral_bridge.core.history import ConsentRecord, VictimHistory
from referral_bridge.core.messages import (
    crime_review_task,
    effective_consent,
    leaflet_task,
    referral_payload,
    withdrawal_payload,
)
from referral_bridge.core.outcomes import (
    LEAFLET_REASONS,
    CompletionResult,
    IssuedTask,
    decide_completion,
    decide_outcome,
    escalation_task,
    needs_escalation,
    outcome_source_problem,
)
from referral_bridge.core.parsing import InvalidMessage, parse_inbound
from referral_bridge.core.policy import Policy
from referral_bridge.core.retention import withdrawals_after_erasure
from referral_bridge.core.review import review_at, review_due_by
from referral_bridge.core.verdicts import Ack, DeadLetter, InboundMessage, Retry, Verdict
from referral_bridge.delivery import (
    FALLBACK_EVENT,
    AmqpRoute,
    DeliveryEngine,
    OutboxPublisher,
)
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import (
    AuditFacts,
    Cancellation,
    CancelReason,
    CaseState,
    IssuedTaskRow,
    Ledger,
    LedgerTransaction,
    OutboxMessage,
    PendingDelivery,
    RecordedAction,
)
from referral_bridge.runtime.metrics import BridgeMetrics
from referral_bridge.transport.errors import TransportError

log = structlog.get_logger("referral_bridge.service")

REFERRAL_CREATED = "victim.referral.created"
REFERRAL_UPDATED = "victim.referral.updated"
REFERRAL_WITHDRAWN = "victim.referral.withdrawn"
#: `schemaversion` of the referral messages' data (contract version 2 changed their payloads).
REFERRAL_SCHEMA_VERSION = 2
TASK_LEAFLET = "officer.task.leaflet"
TASK_LEAFLET_ROUTING_KEY = "task.leaflet"
TASK_CRIME_REVIEW = "officer.task.crime_review"
TASK_CRIME_REVIEW_ROUTING_KEY = "task.crime_review"
TASK_ESCALATION = "officer.task.escalation"
TASK_ESCALATION_ROUTING_KEY = "task.escalation"
JOSE = "application/jose"
JSON_CONTENT = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"
#: Synthetic event id under which the hold scheduler records its decisions.
HOLD_EXPIRY_EVENT = "scheduler:hold-expired"
#: Synthetic event id under which crime-review tasks are written to the outbox.
CRIME_REVIEW_EVENT = "scheduler:crime-review"
#: Synthetic event id under which escalations of overdue tasks are written to the outbox.
ESCALATION_EVENT = "scheduler:escalation"
#: A case whose holds could not be ended (not an outage) is tried again this much later.
HOLD_RETRY_AFTER = timedelta(hours=1)


class Sealer(Protocol):
    """Signs and encrypts a payload for one provider (see referral_bridge.sealing)."""

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Routes:
    """Where outbound messages go (contract §1)."""

    referrals_exchange: str
    tasks_exchange: str


class UnknownReferenceError(Exception):
    """An outcome or completion about something the bridge never sent: dead-lettered with
    `reason` (`unknown_referral`, `unknown_task`). `detail` holds ids only, no personal data."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Handled:
    """What processing one event did, for logs and tests."""

    result: str
    matter_ref: str | None
    decisions: tuple[Decision, ...] = ()


class ReferralService:
    """The application service: everything between a raw message and its verdict."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: Policy,
        calendar: WorkingDayCalendar,
        sealer: Sealer,
        publisher: OutboxPublisher,
        routes: Routes,
        source: str,
        clock: Callable[[], datetime],
        max_message_bytes: int,
        max_processing_attempts: int,
        ledger_attempts: int = 3,
        metrics: BridgeMetrics | None = None,
        delivery: DeliveryEngine | None = None,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._calendar = calendar
        self._sealer = sealer
        self._publisher = publisher
        self._routes = routes
        self._source = source
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._max_attempts = max_processing_attempts
        self._ledger_attempts = ledger_attempts
        self._metrics = metrics or BridgeMetrics()
        # Without an engine from bootstrap, everything goes through `publisher` (force broker).
        self._delivery = delivery or DeliveryEngine(
            ledger=ledger,
            default_route=AmqpRoute(publisher, name="amqp-force"),
            clock=clock,
            metrics=self._metrics,
        )
        self._delivery.fallbacks = self

    @property
    def delivery(self) -> DeliveryEngine:
        return self._delivery

    # --- the per-message path -----------------------------------------------------------------

    def handle(self, message: InboundMessage) -> Verdict:
        """Process one raw message and say whether to ack, retry or dead-letter it."""
        return self.handle_batch([message])[0]

    def handle_batch(self, messages: Sequence[InboundMessage]) -> list[Verdict]:
        """Process messages in one ledger transaction (group commit); one verdict for each.

        Each event runs in a savepoint of its own, so one that fails is undone alone and its
        neighbours commit. One commit (one fsync) serves the batch; then the outbox rows of
        every event are delivered together (windowed confirms) before any verdict is returned,
        so nothing is acked before its effects are committed. A batch the ledger will not take
        (an outage, a deadlock between workers) is processed again one event at a time, each
        in its own transaction with the usual in-place retries.
        """
        verdicts: list[Verdict | None] = [None] * len(messages)
        admitted: list[tuple[int, InboundEvent]] = []
        for index, message in enumerate(messages):
            checked = self._admit(message)
            if isinstance(checked, InboundEvent):
                admitted.append((index, checked))
            else:
                verdicts[index] = checked
        outcomes = self._process_batch([(e, messages[i].routing_key) for i, e in admitted])
        done: list[tuple[InboundEvent, Handled]] = []
        for (index, event), outcome in zip(admitted, outcomes, strict=True):
            verdicts[index] = self._verdict(messages[index], event, outcome)
            if isinstance(outcome, Handled):
                done.append((event, outcome))
        self._deliver_and_log(done)
        return [v if v is not None else Retry(detail="not processed") for v in verdicts]

    def _admit(self, message: InboundMessage) -> InboundEvent | Verdict:
        """The parsed event, or the dead letter of a message that can never be processed."""
        try:
            event = parse_inbound(message.body, max_bytes=self._max_bytes)
        except InvalidMessage as exc:
            log.warning(
                "event.rejected", reason=exc.reason.value, detail=exc.detail, size=len(message.body)
            )
            return DeadLetter(reason=exc.reason, detail=exc.detail, attempts=1)
        self._metrics.events_consumed.labels(type=event.type.value).inc()
        if not isinstance(event.data, ReferralOutcome) and (
            message.routing_key in self._policy.providers()
        ):
            # Providers publish on victim-services.outcomes with their own id as the routing
            # key, and the work queue takes everything from there: only outcomes may come so.
            detail = "only victim.referral.outcome may be published with a provider's routing key"
            log.warning(
                "event.rejected",
                event_id=event.id,
                event_type=event.type.value,
                reason="schema_violation",
                detail=detail,
            )
            return DeadLetter(reason=DeadLetterReason.SCHEMA_VIOLATION, detail=detail, attempts=1)
        return event

    def _process_batch(self, work: Sequence[tuple[InboundEvent, str]]) -> list[Handled | Exception]:
        """Each event's outcome: what it did (committed), or the exception that undid it."""
        if len(work) > 1:
            try:
                outcomes: list[Handled | Exception] = []
                with self._ledger.transaction() as tx:
                    for event, routing_key in work:
                        try:
                            with tx.savepoint():
                                outcomes.append(self._process_in(tx, event, routing_key))
                        except LedgerUnavailableError:
                            raise
                        except Exception as exc:  # undone alone: its neighbours go on
                            outcomes.append(exc)
                return outcomes
            except LedgerUnavailableError as exc:
                log.warning("batch.split", count=len(work), detail=str(exc))
        outcomes = []
        for event, routing_key in work:
            try:
                outcomes.append(self._process_with_retries(event, routing_key))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _verdict(
        self, message: InboundMessage, event: InboundEvent, outcome: Handled | Exception
    ) -> Verdict:
        if isinstance(outcome, Handled):
            return Ack()
        bound = log.bind(event_id=event.id, event_type=event.type.value)
        if isinstance(outcome, UnknownReferenceError):
            bound.warning("event.rejected", reason=outcome.reason.value, detail=outcome.detail)
            return DeadLetter(
                reason=outcome.reason, detail=outcome.detail, attempts=message.attempts + 1
            )
        if isinstance(outcome, LedgerUnavailableError):
            bound.warning("event.retry", reason="ledger_unavailable", detail=str(outcome))
            return Retry(detail="ledger unavailable")
        # Any other failure: retry a few times, then dead-letter. Counted on the message (its
        # retry copies carry it): the same for every worker.
        attempts = message.attempts + 1
        error_type = type(outcome).__name__
        if attempts >= self._max_attempts:
            bound.error(
                "event.failed", reason="processing_error", error_type=error_type, attempts=attempts
            )
            return DeadLetter(
                reason=DeadLetterReason.PROCESSING_ERROR,
                detail=f"{error_type} on each of {attempts} attempts; see the bridge's log "
                f"for event {event.id}, fix the cause, then replay",
                attempts=attempts,
            )
        bound.warning(
            "event.retry", reason="processing_error", error_type=error_type, attempts=attempts
        )
        return Retry(detail=f"{error_type} (attempt {attempts})", attempts=attempts)

    def _deliver_and_log(self, done: Sequence[tuple[InboundEvent, Handled]]) -> None:
        """Deliver the committed events' outbox rows, then log each event.

        The events' effects are committed, outbox rows included: whatever delivery does now,
        the inbound messages are done and are acked. One attempt per row here, no retries in
        place: a row not delivered is parked and the scheduler delivers it, so a provider that
        is down or stalled never holds the queue up. Nothing raised by delivery may turn a
        committed event into a Retry (it would be redelivered and posted again, for ever).
        A duplicate's rows belong to the worker that processed it first (or, after a crash,
        to the scheduler): this one leaves them alone.
        """
        for event, handled in done:
            for decision in handled.decisions:
                self._count(decision)
                log.info(
                    "victim.decided",
                    event_id=event.id,
                    event_type=event.type.value,
                    case_ref=decision.case_ref,
                    victim_id=decision.victim_id,
                    outcome=decision.outcome.value,
                    rule=decision.rule,
                    reason=decision.reason,
                    provider=decision.provider,
                )
        fresh = [event.id for event, handled in done if handled.result != "duplicate"]
        sent = 0
        try:
            sent = self._delivery.deliver_events(fresh).delivered if fresh else 0
        except Exception as exc:
            level = (
                log.warning
                if isinstance(exc, (TransportError, LedgerUnavailableError))
                else log.error
            )
            level("delivery.deferred", error_type=type(exc).__name__, count=len(fresh))
        for event, handled in done:
            log.info(
                "event.processed",
                event_id=event.id,
                event_type=event.type.value,
                outcome=handled.result,
                case_ref=handled.matter_ref,
            )
        if len(done) > 1:
            log.debug("batch.processed", count=len(done), delivered=sent)

    def _process_with_retries(self, event: InboundEvent, routing_key: str) -> Handled:
        """Ride out a short ledger outage in place; a longer one is left to the broker (Retry)."""
        for attempt in Retrying(
            stop=stop_after_attempt(self._ledger_attempts),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(LedgerUnavailableError),
            reraise=True,
        ):
            with attempt:
                return self.process(event, routing_key=routing_key)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _count(self, decision: Decision) -> None:
        self._metrics.decisions.labels(outcome=decision.outcome.value, reason=decision.reason).inc()

    def process(self, event: InboundEvent, *, routing_key: str | None = None) -> Handled:
        """Record the event and its decisions in one ledger transaction (no publishing).

        `routing_key` is the one the message was published with; an outcome's provider must
        equal it (None: not checked, for callers that did not take the event off the broker).
        Raises UnknownReferenceError for an outcome or completion about nothing the bridge sent.
        """
        with self._ledger.transaction() as tx:
            return self._process_in(tx, event, routing_key)

    def _process_in(
        self, tx: LedgerTransaction, event: InboundEvent, routing_key: str | None
    ) -> Handled:
        """`process` inside a transaction (or a batch's savepoint) the caller commits."""
        now = self._clock()
        data = event.data
        if isinstance(data, ReferralOutcome):
            return self._record_outcome(tx, event, data, routing_key, now)
        if isinstance(data, TaskCompleted):
            return self._complete_task(tx, event, data, now)
        record_ref, named = _refs_named(data)
        matter = self._lock_matter(tx, named)
        if tx.is_processed(event.id, source=event.source):
            return Handled(result="duplicate", matter_ref=None)
        if isinstance(data, ConsentUpdated):
            tx.save_consent(
                data.case_ref,
                data.victim_id,
                ConsentRecord(
                    referral=data.referral,
                    recorded_at=data.recorded_at,
                    recorded_by=data.recorded_by,
                    lawful_basis=data.lawful_basis,
                ),
            )
        else:
            known = tx.record_version(record_ref)
            if known is not None and known >= data.version:
                tx.mark_processed(
                    event.id,
                    event.type.value,
                    record_ref,
                    "stale_version",
                    now,
                    source=event.source,
                )
                return Handled(result="stale_version", matter_ref=record_ref)
            kind = CaseKind.CRIME if isinstance(data, CrimeRecorded) else CaseKind.INCIDENT
            tx.save_record(record_ref, kind.value, data.version, data.model_dump(mode="json"), now)
            if isinstance(data, CrimeRecorded):
                for incident_ref in data.linked_incident_refs:
                    tx.link(incident_ref, data.crime_ref)
                    self._resolve_crime_review(tx, incident_ref, now)
            elif data.linked_crime_ref:
                tx.link(data.incident_ref, data.linked_crime_ref)
                self._resolve_crime_review(tx, data.incident_ref, now)
            else:
                check_at = review_at(CaseSnapshot.from_incident(data), self._policy)
                if check_at is not None:
                    tx.schedule_crime_review(data.incident_ref, check_at)
        decisions: tuple[Decision, ...] = ()
        for case_ref in self._cases_to_decide(tx, record_ref, data, matter, now):
            decisions += self._decide_and_record(tx, case_ref, matter, event.id, now)
        result = "decided" if decisions else "awaiting_case"
        tx.mark_processed(event.id, event.type.value, record_ref, result, now, source=event.source)
        return Handled(result=result, matter_ref=record_ref, decisions=decisions)

    @staticmethod
    def _lock_matter(tx: LedgerTransaction, named: set[str]) -> set[str]:
        """Lock every record of the matter these refs belong to, and return the matter.

        The matter is read before locking, so it is read again after: links committed while
        we waited are locked too (out of order: PostgreSQL resolves a deadlock by aborting one
        side, which then retries).
        """
        matter = tx.matter(named)
        tx.lock(matter)
        while (grown := tx.matter(matter)) != matter:
            tx.lock(grown - matter)
            matter = grown
        return matter

    @staticmethod
    def _cases_to_decide(
        tx: LedgerTransaction,
        record_ref: str,
        data: CaseEventData,
        matter: set[str],
        now: datetime,
    ) -> list[str]:
        """A crime decides itself; anything else decides the matter's crimes, if it has any.

        An incident that a crime was recorded from adds nothing of its own (rules.md), so its
        open holds end; until the crime's record arrives there is nothing to decide.
        """
        if isinstance(data, CrimeRecorded):
            return [record_ref]
        matter = tx.matter(matter | {record_ref})
        crimes = tx.crimes_among(matter)
        if not crimes:
            return [record_ref] if isinstance(data, IncidentRecorded) else [data.case_ref]
        for case_ref, victim_id in tx.open_holds(matter - crimes):
            tx.end_hold(case_ref, victim_id, now, "superseded_by_crime")
        return sorted(crimes)

    # --- closing the loop: provider outcomes and task completions (rules.md) -------------------

    def _record_outcome(
        self,
        tx: LedgerTransaction,
        event: InboundEvent,
        data: ReferralOutcome,
        routing_key: str | None,
        now: datetime,
    ) -> Handled:
        if tx.is_processed(event.id, source=event.source):
            return Handled(result="duplicate", matter_ref=None)
        referral = tx.sent_referral(data.referral_id)
        problem = outcome_source_problem(data, routing_key, referral)
        if problem is not None or referral is None:
            raise UnknownReferenceError(
                DeadLetterReason.UNKNOWN_REFERRAL, problem or "unknown referral"
            )
        matter = self._lock_matter(tx, {referral.case_ref})
        # Read again under the lock: a withdrawal may have committed meanwhile.
        referral = tx.sent_referral(data.referral_id) or referral
        reason = LEAFLET_REASONS.get(data.outcome)
        task_id = (
            ids.leaflet_task_id(referral.case_ref, referral.victim_id, reason)
            if reason is not None
            else None
        )
        effect = decide_outcome(
            data,
            tx.referral_outcome(referral.referral_id),
            referral,
            leaflet_issued=task_id is not None and tx.has_action(task_id),
            received_at=now,
            calendar=self._calendar,
        )
        if effect.record is not None:
            tx.save_referral_outcome(
                referral,
                effect.record,
                received_at=now,
                event_source=event.source,
                event_id=event.id,
            )
        decisions: tuple[Decision, ...] = ()
        state = (
            tx.load_state(referral.case_ref, matter) if effect.leaflet_reason is not None else None
        )
        if (
            effect.leaflet_reason is not None
            and effect.leaflet_due_by is not None
            and task_id is not None
            and state is not None
            and state.snapshot
        ):
            decision = self._provider_leaflet(
                tx,
                snapshot_of(state.snapshot_kind, state.snapshot),
                referral.victim_id,
                referral.provider,
                effect.leaflet_reason,
                task_id,
                effect.leaflet_due_by,
                effect.explanation + f" Leaflet task {task_id}.",
                event.id,
                now,
            )
            decisions = (decision,)
        tx.mark_processed(
            event.id,
            event.type.value,
            referral.referral_id,
            effect.result.value,
            now,
            source=event.source,
        )
        log.info(
            "referral.outcome",
            referral_id=referral.referral_id,
            provider=referral.provider,
            outcome=data.outcome.value,
            result=effect.result.value,
        )
        return Handled(
            result=effect.result.value, matter_ref=referral.case_ref, decisions=decisions
        )

    def _complete_task(
        self, tx: LedgerTransaction, event: InboundEvent, data: TaskCompleted, now: datetime
    ) -> Handled:
        if tx.is_processed(event.id, source=event.source):
            return Handled(result="duplicate", matter_ref=None)
        task = tx.task(data.task_id)
        if task is None:
            raise UnknownReferenceError(
                DeadLetterReason.UNKNOWN_TASK,
                f"no task {data.task_id} was issued by this bridge: check the task system's "
                "task id (the task message's task_id)",
            )
        result = decide_completion(task, data)
        if result is CompletionResult.COMPLETED and not tx.complete_task(
            task.task_id, at=data.completed_at, by=data.completed_by, result=data.result.value
        ):
            result = CompletionResult.ALREADY_COMPLETED
        tx.mark_processed(
            event.id, event.type.value, task.task_id, result.value, now, source=event.source
        )
        log.info(
            "task.completed",
            task_id=task.task_id,
            task_kind=task.kind.value,
            result=result.value,
            late=task.due_by is not None and data.completed_at > task.due_by,
        )
        return Handled(result=result.value, matter_ref=task.case_ref)

    # --- scheduled work -----------------------------------------------------------------------

    def expire_holds(self) -> int:
        """Turn ended holds into decisions (usually leaflet tasks); returns the cases seen.

        Each case is its own transaction, and a case that fails for a reason other than an
        outage is pushed back an hour and logged, so one bad case cannot stall the rest.
        """
        now = self._clock()
        cases = self._ledger.due_holds(now)
        for case_ref in cases:
            try:
                decisions = self._expire_holds_of(case_ref, now)
            except LedgerUnavailableError:
                raise
            except Exception as exc:
                log.error("hold.expiry_failed", case_ref=case_ref, error_type=type(exc).__name__)
                self._postpone_holds(case_ref, now + HOLD_RETRY_AFTER)
                continue
            for decision in decisions:
                self._count(decision)
                log.info(
                    "hold.expired",
                    case_ref=decision.case_ref,
                    victim_id=decision.victim_id,
                    outcome=decision.outcome.value,
                    reason=decision.reason,
                )
        if cases:
            self.flush(event_id=HOLD_EXPIRY_EVENT)
        return len(cases)

    def _expire_holds_of(self, case_ref: str, now: datetime) -> tuple[Decision, ...]:
        with self._ledger.transaction() as tx:
            matter = self._lock_matter(tx, {case_ref})
            decisions: tuple[Decision, ...] = ()
            crimes = tx.crimes_among(matter)
            if case_ref in crimes or not crimes:
                decisions = self._decide_and_record(tx, case_ref, matter, HOLD_EXPIRY_EVENT, now)
            # A hold must never stay open past its end, whatever the policy said.
            for held_ref, victim_id in tx.open_holds({case_ref}):
                state = tx.load_state(held_ref, matter).history.get(victim_id)
                if state and state.hold and state.hold.until <= now:
                    tx.end_hold(held_ref, victim_id, now, "expired")
            return tuple(d for d in decisions if d.outcome is not Outcome.HOLD)

    def _postpone_holds(self, case_ref: str, until: datetime) -> None:
        try:
            with self._ledger.transaction() as tx:
                for held_ref, victim_id in tx.open_holds({case_ref}):
                    tx.open_hold(held_ref, victim_id, until)
        except LedgerUnavailableError:
            log.warning("hold.postpone_failed", case_ref=case_ref)

    @staticmethod
    def _resolve_crime_review(tx: LedgerTransaction, incident_ref: str, now: datetime) -> None:
        review = tx.crime_review(incident_ref)
        resolution = tx.resolve_crime_review(incident_ref, now)
        if resolution is None:
            return
        log.info("crime_review.resolved", incident_ref=incident_ref, resolution=resolution)
        # The review task asked for the crime to be recorded: it is, so the task is done (by
        # the bridge: completed_by stays empty), and it does not escalate.
        if review is not None and review.task_id:
            tx.complete_task(review.task_id, at=now, by=None, result="crime_recorded")

    def review_crime_recording(self) -> int:
        """Crime-review tasks for incidents whose disclosed crime is still not recorded (once
        each); returns the incidents checked."""
        now = self._clock()
        due = self._ledger.due_crime_reviews(now)
        for incident_ref in due:
            with self._ledger.transaction() as tx:
                matter = self._lock_matter(tx, {incident_ref})
                review = tx.crime_review(incident_ref)
                if review is None or review.raised_at is not None or review.resolved_at:
                    continue
                if tx.crimes_among(matter):
                    tx.resolve_crime_review(incident_ref, now)
                    continue
                state = tx.load_state(incident_ref, matter)
                if state.snapshot is None:
                    continue
                incident = snapshot_of(state.snapshot_kind, state.snapshot)
                task_id = ids.crime_review_task_id(incident_ref)
                task = crime_review_task(
                    incident, task_id, review_due_by(now, self._policy, self._calendar)
                )
                tx.raise_crime_review(incident_ref, task_id, now)
                tx.add_task(
                    IssuedTaskRow(
                        task_id=task_id,
                        kind=TaskKind.CRIME_REVIEW.value,
                        reason=task.reason,
                        case_ref=incident_ref,
                        victim_id=None,
                        officer_unit=task.officer.unit,
                        issued_at=now,
                        due_by=task.due_by,
                    )
                )
                self._enqueue(
                    tx,
                    CRIME_REVIEW_EVENT,
                    "task.crime_review",
                    task_id,
                    TASK_CRIME_REVIEW,
                    JSON_CONTENT,
                    task.model_dump(mode="json"),
                    self._routes.tasks_exchange,
                    TASK_CRIME_REVIEW_ROUTING_KEY,
                    now,
                )
            log.info("crime_review.raised", incident_ref=incident_ref, task_id=task_id)
        if due:
            self.flush(event_id=CRIME_REVIEW_EVENT)
        return len(due)

    def escalate_overdue_tasks(self) -> int:
        """One `officer.task.escalation` for each leaflet or crime-review task still open at
        its due time; returns how many were escalated.

        Each task is its own transaction, which marks the task escalated (compare-and-set) and
        writes the escalation's outbox row together: exactly once, across restarts (nothing is
        marked unless its message is in the outbox) and across workers (one claim wins). A task
        that fails for a reason other than an outage is logged and tried again next tick.
        """
        now = self._clock()
        escalated = 0
        for task_id in self._ledger.due_escalations(now):
            try:
                if self._escalate(task_id, now):
                    escalated += 1
            except LedgerUnavailableError:
                raise
            except Exception as exc:
                log.error("task.escalation_failed", task_id=task_id, error_type=type(exc).__name__)
        if escalated:
            self.flush(event_id=ESCALATION_EVENT)
        return escalated

    def _escalate(self, task_id: str, now: datetime) -> bool:
        with self._ledger.transaction() as tx:
            task = tx.task(task_id)
            if task is None or not needs_escalation(task, now):
                return False
            escalation_id = ids.escalation_task_id(task_id)
            if not tx.claim_escalation(task_id, escalation_id, now):
                return False
            officer = self._officer_of(tx, task)
            message = escalation_task(task, escalation_id, officer, now)
            tx.add_task(
                IssuedTaskRow(
                    task_id=escalation_id,
                    kind=TaskKind.ESCALATION.value,
                    reason=task.reason,
                    case_ref=task.case_ref,
                    victim_id=task.victim_id,
                    officer_unit=officer.unit,
                    issued_at=now,
                    due_by=None,
                )
            )
            self._enqueue(
                tx,
                ESCALATION_EVENT,
                "task.escalation",
                escalation_id,
                TASK_ESCALATION,
                JSON_CONTENT,
                message.model_dump(mode="json"),
                self._routes.tasks_exchange,
                TASK_ESCALATION_ROUTING_KEY,
                now,
            )
        log.info(
            "task.escalated",
            task_id=task_id,
            task_kind=task.kind.value,
            escalation_id=escalation_id,
            case_ref=task.case_ref,
        )
        return True

    @staticmethod
    def _officer_of(tx: LedgerTransaction, task: IssuedTask) -> TaskOfficer:
        """The officer in charge now (the case's latest snapshot), as a new task would name;
        without a snapshot, the officer the overdue task named."""
        state = tx.load_state(task.case_ref, {task.case_ref})
        if state.snapshot is not None:
            officer = snapshot_of(state.snapshot_kind, state.snapshot).officer
            return TaskOfficer(collar=officer.collar, unit=officer.unit)
        sent = tx.sent_task_officer(task.task_id)
        if sent is None:
            raise ValueError("no snapshot of the case and no task message to name its officer")
        return sent

    def flush(
        self,
        *,
        event_id: str | None = None,
        older_than: timedelta | None = None,
        retry_in_place: bool = True,
    ) -> int:
        """Deliver due outbox rows (of one event, or all) and return how many were delivered.

        `older_than` leaves alone rows younger than it that were never tried (the worker that
        wrote them is delivering them); parked rows are delivered once due, whatever their age.
        `retry_in_place=False` makes one attempt per row. The pass stops starting attempts when
        its time budget is spent. Route failures park rows rather than raise;
        LedgerUnavailableError may be raised.
        """
        created_before = self._clock() - older_than if older_than is not None else None
        report = self._delivery.deliver_due(
            event_id=event_id, created_before=created_before, retry_in_place=retry_in_place
        )
        return report.delivered

    def issue_overdue_fallbacks(self) -> int:
        """Leaflet tasks for referrals still undelivered at their deadline (once each)."""
        return self._delivery.issue_overdue_fallbacks()

    def issue_fallback(
        self, tx: LedgerTransaction, delivery: PendingDelivery, reason: str, now: datetime
    ) -> str | None:
        """Record a leaflet task so the officer gives the victim the provider's details instead.

        Called by the delivery engine inside its transaction (with the rejection, or for a
        passed deadline). Idempotent: a task already issued for this case, victim and reason
        is reused. Returns the task id, or None if the case's snapshot is not in the ledger.
        """
        provider = delivery.message.provider
        case_ref, victim_id = delivery.case_ref, delivery.victim_id
        if provider is None or case_ref is None or victim_id is None:
            return None
        matter = self._lock_matter(tx, {case_ref})
        task_id = ids.leaflet_task_id(case_ref, victim_id, reason)
        if tx.has_action(task_id):
            return task_id
        state = tx.load_state(case_ref, matter)
        if state.snapshot is None:
            return None
        case = snapshot_of(state.snapshot_kind, state.snapshot)
        # The victim was promised a provider's contact by the deadline: the officer acts within
        # a working day, and never earlier than the original deadline would have required.
        due_by = self._calendar.add_working_days(now, 1)
        if delivery.message.deadline is not None and delivery.message.deadline > now:
            due_by = min(due_by, delivery.message.deadline)
        explanation = (
            f"Referral {delivery.message_id} to {provider} "
            + (
                "was refused by the provider"
                if reason == "provider_rejected"
                else "was still undelivered at its deadline"
            )
            + f"; leaflet task {task_id} due by {due_by.isoformat()}."
        )
        decision = self._provider_leaflet(
            tx, case, victim_id, provider, reason, task_id, due_by, explanation, FALLBACK_EVENT, now
        )
        self._count(decision)
        return task_id

    def _provider_leaflet(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        victim_id: str,
        provider: str,
        reason: str,
        task_id: str,
        due_by: datetime,
        explanation: str,
        event_id: str,
        now: datetime,
    ) -> Decision:
        """A leaflet task decided outside the rules, from what a provider did (or did not do):
        recorded and written to the outbox like any other, with its decision."""
        decision = Decision(
            case_ref=case.case_ref,
            victim_id=victim_id,
            outcome=Outcome.LEAFLET,
            rule=None,
            regime=None,
            reason=reason,
            explanation=explanation,
            provider=provider,
            task_id=task_id,
            due_by=due_by,
            category=as_decided(case, self._policy).category,
        )
        self._leaflet(tx, case, decision, event_id, now)
        tx.add_decision(event_id, decision, now)
        return decision

    # --- decisions into ledger rows and outbox messages ---------------------------------------

    def _decide_and_record(
        self, tx: LedgerTransaction, case_ref: str, matter: set[str], event_id: str, now: datetime
    ) -> tuple[Decision, ...]:
        state = tx.load_state(case_ref, matter)
        if state.snapshot is None:
            return self._withdraw_erased(tx, state, event_id, now) if state.erased else ()
        case = as_decided(snapshot_of(state.snapshot_kind, state.snapshot), self._policy)
        if case.kind is CaseKind.CRIME:
            # Every incident of the matter, whichever side named the link: the crime follows
            # referrals made under them (decide._follows).
            incidents = matter - tx.crimes_among(matter)
            linked = tuple(sorted(set(case.linked_refs) | incidents))
            case = case.model_copy(update={"linked_refs": linked})
        decisions = decide(case, state.history, self._policy, now, self._calendar)
        for decision in decisions:
            history = state.history.get(decision.victim_id, VictimHistory())
            self._apply(tx, case, decision, history, event_id, now)
            tx.add_decision(event_id, decision, now)
        if case.status is not CrimeStatus.RECORDED:
            # rules.md: referrals already sent stay (support continues); undelivered ones are
            # cancelled, unless an attempt may have reached the provider.
            for victim_id, history in state.history.items():
                for referral in history.live():
                    if tx.cancel_unsent(referral.referral_id, now, CancelReason.CASE_CLOSED):
                        log.info(
                            "referral.cancelled",
                            case_ref=case_ref,
                            victim_id=victim_id,
                            provider=referral.provider,
                            message_id=referral.referral_id,
                            reason=f"crime_{case.status.value}",
                        )
        return decisions

    def _withdraw_erased(
        self, tx: LedgerTransaction, state: CaseState, event_id: str, now: datetime
    ) -> tuple[Decision, ...]:
        """An erased matter decides nothing new, but a withdrawal of consent is still honoured
        (docs/data-protection.md): it needs only the ids the ledger keeps."""
        decisions = tuple(withdrawals_after_erasure(state.case_ref, state.history))
        for decision in decisions:
            history = state.history[decision.victim_id]
            self._withdraw(tx, state.case_ref, None, decision, history, event_id, now)
            tx.add_decision(event_id, decision, now)
        return decisions

    def _apply(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        hold_open = history.hold is not None and history.hold.open
        match decision.outcome:
            case Outcome.REFER:
                self._refer(tx, case, decision, history, event_id, now)
            case Outcome.UPDATE:
                self._update(tx, case, decision, history, event_id, now)
            case Outcome.LEAFLET:
                self._leaflet(tx, case, decision, event_id, now)
            case Outcome.WITHDRAW:
                victim = case.victim(decision.victim_id)
                self._withdraw(tx, case.case_ref, victim, decision, history, event_id, now)
            case Outcome.HOLD:
                assert decision.hold_until is not None
                if not (hold_open and history.hold and history.hold.until == decision.hold_until):
                    tx.open_hold(case.case_ref, decision.victim_id, decision.hold_until)
            case Outcome.NONE:
                pass
        if hold_open and decision.ends_hold:
            tx.end_hold(case.case_ref, decision.victim_id, now, decision.reason)

    def _refer(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        provider, referral_id = decision.provider, decision.referral_id
        if provider is None or referral_id is None:
            raise ValueError("refer decision without a provider or referral id")
        generation = decision.generation or 1
        tx.add_action(
            RecordedAction(
                case_ref=case.case_ref,
                victim_id=decision.victim_id,
                action="referral",
                # One referral per provider and generation (the ledger's last line of defence).
                target=provider if generation == 1 else f"{provider}#{generation}",
                message_id=referral_id,
                provider=provider,
                service=decision.service,
                related_id=None,
                due_at=decision.deadline,
                facts={"generation": generation, "fingerprint": decision.fingerprint},
            ),
            now,
        )
        self._send_referral(tx, case, decision, history, event_id, now, REFERRAL_CREATED)

    def _update(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        if decision.referral_id is None or decision.revision is None:
            raise ValueError("update decision without a referral id or revision")
        message_id = ids.update_id(decision.referral_id, decision.revision)
        tx.add_action(
            RecordedAction(
                case_ref=case.case_ref,
                victim_id=decision.victim_id,
                action="update",
                target=message_id,
                message_id=message_id,
                provider=decision.provider or "",
                service=decision.service,
                related_id=decision.referral_id,
                due_at=decision.deadline,
                facts={"revision": decision.revision, "fingerprint": decision.fingerprint},
            ),
            now,
        )
        self._send_referral(
            tx, case, decision, history, event_id, now, REFERRAL_UPDATED, message_id=message_id
        )

    def _send_referral(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
        event_type: str,
        *,
        message_id: str | None = None,
    ) -> None:
        """Seal the whole current minimised referral (created or updated) into the outbox."""
        victim = case.victim(decision.victim_id)
        provider, referral_id = decision.provider, decision.referral_id
        if victim is None or provider is None or referral_id is None:
            raise ValueError("referral decision without a victim, provider or referral id")
        consent = effective_consent(victim, history.consent)
        payload = referral_payload(case, victim, decision, consent, now)
        token = self._sealer.seal(provider, payload.model_dump(mode="json"))
        update = event_type == REFERRAL_UPDATED
        self._enqueue(
            tx,
            event_id,
            "update" if update else "referral",
            message_id or referral_id,
            event_type,
            JOSE,
            token,
            self._routes.referrals_exchange,
            provider,
            now,
            provider=provider,
            # An update is not a new referral: no fallback task if it is late.
            deadline=None if update else decision.deadline,
            schema_version=REFERRAL_SCHEMA_VERSION,
            audit=AuditFacts(
                case_ref=case.case_ref,
                victim_id=victim.victim_id,
                provider=provider,
                lawful_basis=decision.lawful_basis,
                consent_state=consent.state.value,
                consent_recorded_at=consent.recorded_at,
                consent_recorded_by=consent.recorded_by,
                consent_regime=decision.regime,
            ),
        )

    def _leaflet(
        self,
        tx: LedgerTransaction,
        case: CaseSnapshot,
        decision: Decision,
        event_id: str,
        now: datetime,
    ) -> None:
        task = leaflet_task(case, decision)
        tx.add_action(
            RecordedAction(
                case_ref=case.case_ref,
                victim_id=decision.victim_id,
                action="leaflet",
                target=decision.reason,
                message_id=task.task_id,
                provider=task.provider,
                service=None,
                related_id=None,
                due_at=task.due_by,
            ),
            now,
        )
        tx.add_task(
            IssuedTaskRow(
                task_id=task.task_id,
                kind=TaskKind.LEAFLET.value,
                reason=task.reason,
                case_ref=task.case_ref,
                victim_id=task.victim_id,
                officer_unit=task.officer.unit,
                issued_at=now,
                due_by=task.due_by,
            )
        )
        self._enqueue(
            tx,
            event_id,
            "task.leaflet",
            task.task_id,
            TASK_LEAFLET,
            JSON_CONTENT,
            task.model_dump(mode="json"),
            self._routes.tasks_exchange,
            TASK_LEAFLET_ROUTING_KEY,
            now,
        )

    def _withdraw(
        self,
        tx: LedgerTransaction,
        case_ref: str,
        victim: Victim | None,
        decision: Decision,
        history: VictimHistory,
        event_id: str,
        now: datetime,
    ) -> None:
        """`victim`: the victim's entry in the snapshot, None once it was erased."""
        provider, referral_id = decision.provider, decision.referral_id
        if provider is None or referral_id is None:
            raise ValueError("withdraw decision without a provider or referral id")
        referral = next(r for r in history.referrals if r.referral_id == referral_id)
        consent = effective_consent(victim, history.consent) if victim is not None else None
        # Erased: the consent.updated that asked for the withdrawal is all there is to cite.
        recorded = history.consent if victim is None else None
        payload = withdrawal_payload(referral.case_ref, decision, now)
        token = self._sealer.seal(provider, payload.model_dump(mode="json"))
        message_id = ids.withdrawal_id(referral_id)
        # The action is recorded either way, so the withdrawal is decided once.
        tx.add_action(
            RecordedAction(
                case_ref=case_ref,
                victim_id=decision.victim_id,
                action="withdrawal",
                target=referral_id,
                message_id=message_id,
                provider=provider,
                service=referral.service,
                related_id=referral_id,
                due_at=None,
                facts={"reason": decision.reason},
            ),
            now,
        )
        self._enqueue(
            tx,
            event_id,
            "withdrawal",
            message_id,
            REFERRAL_WITHDRAWN,
            JOSE,
            token,
            self._routes.referrals_exchange,
            provider,
            now,
            provider=provider,
            schema_version=REFERRAL_SCHEMA_VERSION,
            audit=AuditFacts(
                case_ref=referral.case_ref,
                victim_id=decision.victim_id,
                provider=provider,
                lawful_basis=decision.lawful_basis,
                consent_state=(
                    consent.state.value
                    if consent
                    else (recorded.referral.value if recorded else None)
                ),
                consent_recorded_at=(
                    consent.recorded_at if consent else (recorded.recorded_at if recorded else None)
                ),
                consent_recorded_by=(
                    consent.recorded_by if consent else (recorded.recorded_by if recorded else None)
                ),
                consent_regime=decision.regime,
            ),
        )
        # Updates not yet sent are not sent at all: the provider is to delete what it holds.
        for update in history.updates:
            if update.referral_id == referral_id:
                tx.cancel_unsent(update.update_id, now, CancelReason.REFERRAL_WITHDRAWN)
        # A referral not yet handed over must never be: consent has gone (rules.md withdraws
        # only what was sent). If no attempt at it ever started, it is cancelled (no delivery, no
        # fallback task at its deadline, no resend), and so is the withdrawal: the provider never
        # had anything to withdraw. If one started, it may have arrived: no more attempts, and
        # the withdrawal follows once that attempt is over (Ledger.waiting_on).
        cancellation = tx.cancel_referral(referral_id, now)
        if cancellation is Cancellation.NEVER_SENT:
            tx.cancel_unsent(message_id, now, CancelReason.NOTHING_TO_WITHDRAW)
        if cancellation is not Cancellation.UNCHANGED:
            log.info(
                "referral.cancelled",
                case_ref=referral.case_ref,
                victim_id=decision.victim_id,
                provider=provider,
                message_id=referral_id,
                reason=f"{decision.reason}_{cancellation.value}",
            )

    def _enqueue(
        self,
        tx: LedgerTransaction,
        event_id: str,
        kind: str,
        message_id: str,
        event_type: str,
        content_type: str,
        data: Any,
        exchange: str,
        routing_key: str,
        now: datetime,
        *,
        provider: str | None = None,
        deadline: datetime | None = None,
        audit: AuditFacts | None = None,
        schema_version: int = 1,
    ) -> None:
        envelope = OutboundEvent(
            id=message_id,
            source=self._source,
            type=event_type,
            time=now,
            schemaversion=schema_version,
            datacontenttype=content_type,
            data=data,
        )
        body = json.dumps(envelope.model_dump(mode="json"), separators=(",", ":")).encode()
        tx.add_outbox(
            OutboxMessage(
                message_id=message_id,
                event_id=event_id,
                kind=kind,
                exchange=exchange,
                routing_key=routing_key,
                headers={"x-rb-event-type": event_type},
                body=body,
                provider=provider,
                deadline=deadline,
                audit=audit,
            ),
            now,
        )


def snapshot_of(kind: str | None, snapshot: Mapping[str, Any]) -> CaseSnapshot:
    """Rebuild the case from the snapshot the ledger stored."""
    if kind == CaseKind.CRIME.value:
        return CaseSnapshot.from_crime(CrimeRecorded.model_validate(snapshot))
    return CaseSnapshot.from_incident(IncidentRecorded.model_validate(snapshot))


def _refs_named(data: CaseEventData) -> tuple[str, set[str]]:
    """The record an event is about, and every ref the event itself names."""
    if isinstance(data, CrimeRecorded):
        return data.crime_ref, {data.crime_ref, *data.linked_incident_refs}
    if isinstance(data, IncidentRecorded):
        linked = {data.linked_crime_ref} if data.linked_crime_ref else set()
        return data.incident_ref, {data.incident_ref, *linked}
    return data.case_ref, {data.case_ref}
