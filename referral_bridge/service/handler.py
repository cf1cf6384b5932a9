"""Handling one inbound message: parse, decide and record it, then say whether to ack it.

The order is fixed by the contract: validate -> duplicate check -> decide -> write decisions,
state and outbox in one ledger transaction -> publish the outbox with confirms -> ack. The
consumer acks or dead-letters according to the Verdict returned here, in one place. What a
decision does is `Effects`' job; scheduled work (holds, crime reviews, escalations) lives in
`holds.py` and `scheduled.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decisions import Decision
from referral_bridge.core.events import (
    CaseEventData,
    CaseKind,
    ConsentUpdated,
    CrimeRecorded,
    DeadLetterReason,
    InboundEvent,
    IncidentRecorded,
    ReferralOutcome,
    TaskCompleted,
)
from referral_bridge.core.history import ConsentRecord
from referral_bridge.core.parsing import InvalidMessage, parse_inbound
from referral_bridge.core.policy import Policy
from referral_bridge.core.review import review_at
from referral_bridge.core.verdicts import Ack, DeadLetter, InboundMessage, Retry, Verdict
from referral_bridge.delivery import DeliveryEngine
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import Ledger, LedgerTransaction
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.service.closing_the_loop import complete_task, record_outcome
from referral_bridge.service.deciding import CaseDecider
from referral_bridge.service.effects import Effects, count_decision
from referral_bridge.service.matters import lock_matter
from referral_bridge.service.results import Handled, UnknownReferenceError
from referral_bridge.transport.errors import TransportError

log = structlog.get_logger("referral_bridge.service")


class ReferralService:
    """The application service: everything between a raw message and its verdict."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: Policy,
        calendar: WorkingDayCalendar,
        decider: CaseDecider,
        effects: Effects,
        delivery: DeliveryEngine,
        metrics: BridgeMetrics,
        clock: Callable[[], datetime],
        max_message_bytes: int,
        max_processing_attempts: int,
        ledger_attempts: int = 3,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._calendar = calendar
        self._decider = decider
        self._effects = effects
        self._delivery = delivery
        self._metrics = metrics
        self._clock = clock
        self._max_bytes = max_message_bytes
        self._max_attempts = max_processing_attempts
        self._ledger_attempts = ledger_attempts

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
                        except Exception as exc:  # noqa: BLE001 (undone alone: its neighbours go on)
                            outcomes.append(exc)
                return outcomes
            except LedgerUnavailableError as exc:
                log.warning("batch.split", count=len(work), detail=str(exc))
        outcomes = []
        for event, routing_key in work:
            try:
                outcomes.append(self._process_with_retries(event, routing_key))
            except Exception as exc:  # noqa: BLE001 (the event's failure is its verdict)
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
                count_decision(self._metrics, decision)
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
        except Exception as exc:  # noqa: BLE001 (what is not delivered waits in the outbox)
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

    def process(self, event: InboundEvent, *, routing_key: str | None = None) -> Handled:
        """Record the event and its decisions in one ledger transaction (no publishing).

        `routing_key` is the one the message was published with; an outcome's provider must
        equal it (None: not checked, for callers that did not take the event off the broker).
        Raises UnknownReferenceError for an outcome or completion about nothing the bridge sent.
        """
        with self._ledger.transaction() as tx:
            return self._process_in(tx, event, routing_key)

    def _process_in(  # noqa: C901 (one event's steps in their transaction order)
        self, tx: LedgerTransaction, event: InboundEvent, routing_key: str | None
    ) -> Handled:
        """`process` inside a transaction (or a batch's savepoint) the caller commits."""
        now = self._clock()
        data = event.data
        if isinstance(data, ReferralOutcome):
            return record_outcome(
                tx,
                event,
                data,
                routing_key=routing_key,
                now=now,
                calendar=self._calendar,
                effects=self._effects,
            )
        if isinstance(data, TaskCompleted):
            return complete_task(tx, event, data, now)
        record_ref, named = _refs_named(data)
        matter = lock_matter(tx, named)
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
                    resolve_crime_review(tx, incident_ref, now)
            elif data.linked_crime_ref:
                tx.link(data.incident_ref, data.linked_crime_ref)
                resolve_crime_review(tx, data.incident_ref, now)
            else:
                check_at = review_at(CaseSnapshot.from_incident(data), self._policy)
                if check_at is not None:
                    tx.schedule_crime_review(data.incident_ref, check_at)
        decisions: tuple[Decision, ...] = ()
        for case_ref in self._cases_to_decide(tx, record_ref, data, matter, now):
            decisions += self._decider.decide_and_record(tx, case_ref, matter, event.id, now)
        result = "decided" if decisions else "awaiting_case"
        tx.mark_processed(event.id, event.type.value, record_ref, result, now, source=event.source)
        return Handled(result=result, matter_ref=record_ref, decisions=decisions)

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


def resolve_crime_review(tx: LedgerTransaction, incident_ref: str, now: datetime) -> None:
    """A crime was linked to the incident: its crime review is resolved, its task done."""
    review = tx.crime_review(incident_ref)
    resolution = tx.resolve_crime_review(incident_ref, now)
    if resolution is None:
        return
    log.info("crime_review.resolved", incident_ref=incident_ref, resolution=resolution)
    # The review task asked for the crime to be recorded: it is, so the task is done (by
    # the bridge: completed_by stays empty), and it does not escalate.
    if review is not None and review.task_id:
        tx.complete_task(review.task_id, at=now, by=None, result="crime_recorded")


def _refs_named(data: CaseEventData) -> tuple[str, set[str]]:
    """The record an event is about, and every ref the event itself names."""
    if isinstance(data, CrimeRecorded):
        return data.crime_ref, {data.crime_ref, *data.linked_incident_refs}
    if isinstance(data, IncidentRecorded):
        linked = {data.linked_crime_ref} if data.linked_crime_ref else set()
        return data.incident_ref, {data.incident_ref, *linked}
    return data.case_ref, {data.case_ref}
