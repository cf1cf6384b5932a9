"""Several workers sharing one PostgreSQL ledger never refer a victim twice for the same matter.

Each thread runs its own ReferralService and Ledger (its own connection pool), as separate
worker processes would. Every event is delivered to every thread in a different order, as a
redelivered or competing-consumer message would be, and linked incident/crime pairs are split
across threads. A thread re-handles a message until it is acked, as the broker would redeliver it.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from referral_bridge.core.events import ConsentState, CrimeRecorded, IncidentRecorded
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.holds import HoldExpiry
from referral_bridge.transport import Ack, DeadLetter, InboundMessage, Retry
from tests.fakes import (
    FakeClock,
    RecordingPublisher,
    RecordingSealer,
    cloudevent,
    empty_ledger_database,
    inbound,
    make_layer,
    require_postgres,
    throwaway_postgres_database,
)
from tests.unit.factories import REPORTED_AT, make_crime, make_incident, make_victim

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THREADS = 3
CASES = 12
#: Redeliveries of one message before the test gives up on it being acked.
MAX_DELIVERIES = 60
#: Retry details the service may give while workers race: a lost unique-constraint race, or a
#: serialisation failure or deadlock (both surface as an unavailable ledger).
ALLOWED_RETRIES = ("IntegrityError", "ledger unavailable")


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    require_postgres()
    with throwaway_postgres_database() as url:
        yield url


# --- the workload -----------------------------------------------------------------------------


def crime(ref: str, victim_id: str, **options: Any) -> CrimeRecorded:
    return make_crime(make_victim(victim_id), crime_ref=ref, **options)


def message(data: CrimeRecorded | IncidentRecorded | dict[str, Any], event_id: str) -> Any:
    if isinstance(data, CrimeRecorded):
        event_type = "crime.recorded"
    elif isinstance(data, IncidentRecorded):
        event_type = "incident.recorded"
    else:
        event_type = "consent.updated"
    return inbound(
        cloudevent(data, event_type=event_type, event_id=event_id), routing_key=event_type
    )


@dataclass(frozen=True)
class Workload:
    shared: list[InboundMessage]
    split: list[list[InboundMessage]]
    #: Victims who must end with exactly one referral, and those who must end held then leafleted.
    referred: frozenset[str]
    held: frozenset[str]
    events: int


def workload() -> Workload:
    shared: list[InboundMessage] = []
    split: list[list[InboundMessage]] = [[] for _ in range(THREADS)]
    referred: set[str] = set()
    held: set[str] = set()
    events = 0
    for i in range(CASES):
        # An opt-out crime, and a newer version of it.
        shared.append(message(crime(f"LC-B-{i}", f"V-B-{i}"), f"burglary-{i}-v1"))
        shared.append(message(crime(f"LC-B-{i}", f"V-B-{i}", version=2), f"burglary-{i}-v2"))
        referred.add(f"V-B-{i}")
        # An explicit-consent crime, and the consent that releases its hold.
        shared.append(message(crime(f"LC-S-{i}", f"V-S-{i}", category="sexual"), f"sexual-{i}"))
        shared.append(
            message(
                {
                    "case_ref": f"LC-S-{i}",
                    "victim_id": f"V-S-{i}",
                    "referral": "given",
                    "recorded_at": (REPORTED_AT + timedelta(minutes=20)).isoformat(),
                    "recorded_by": "PC 0000",
                    "lawful_basis": "consent",
                },
                f"consent-{i}",
            )
        )
        referred.add(f"V-S-{i}")
        # An explicit-consent crime whose hold ends without consent.
        shared.append(message(crime(f"LC-H-{i}", f"V-H-{i}", category="sexual"), f"held-{i}"))
        held.add(f"V-H-{i}")
        # An incident with consent, and the crime recorded from it, handled by different workers.
        consenting = make_victim(f"V-L-{i}", consent=ConsentState.GIVEN, consent_at=REPORTED_AT)
        incident = make_incident(consenting, incident_ref=f"INC-L-{i}")
        linked = crime(f"LC-L-{i}", f"V-L-{i}").model_copy(
            update={"linked_incident_refs": (f"INC-L-{i}",)}
        )
        split[i % THREADS].append(message(incident, f"incident-{i}"))
        split[(i + 1) % THREADS].append(message(linked, f"linked-crime-{i}"))
        referred.add(f"V-L-{i}")
        events += 7
    return Workload(shared, split, frozenset(referred), frozenset(held), events)


# --- the workers ------------------------------------------------------------------------------


@dataclass
class Worker:
    """One bridge process: its own ledger connection pool, service and publisher."""

    service: ReferralService
    holds: HoldExpiry
    ledger: Ledger
    publisher: RecordingPublisher
    retries: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def deliver(self, messages: list[InboundMessage]) -> None:
        for inbound_message in messages:
            self._until_acked(inbound_message)

    def _until_acked(self, inbound_message: InboundMessage) -> None:
        for _ in range(MAX_DELIVERIES):
            try:
                verdict = self.service.handle(inbound_message)
            except Exception as exc:  # noqa: BLE001 (anything escaping handle() breaks its contract; recorded)
                self.problems.append(f"handle raised {type(exc).__name__}")
                return
            if isinstance(verdict, Ack):
                return
            if isinstance(verdict, DeadLetter):
                self.problems.append(f"dead-lettered: {verdict.reason}: {verdict.detail}")
                return
            assert isinstance(verdict, Retry)
            kind = verdict.detail.split(" (")[0]
            self.retries[kind] += 1
            if not verdict.detail.startswith(ALLOWED_RETRIES):
                self.problems.append(f"unexpected retry: {verdict.detail}")
        self.problems.append(f"not acked after {MAX_DELIVERIES} deliveries")


def run_together(workers: list[Worker], jobs: list[Any]) -> list[BaseException]:
    """Run each worker's job in its own thread, all released at once; return escaped errors."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def target(job: Any) -> None:
        try:
            barrier.wait(timeout=30)
            job()
        except BaseException as exc:  # noqa: BLE001 (the test checks whatever ended the thread)
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    return errors


@dataclass
class Outcome:
    """What the shared ledger holds after the race."""

    referrals: Counter[tuple[str, str, str]]
    leaflets: Counter[tuple[str, str, str]]
    #: Updates and withdrawals (a crime recorded from a referred incident updates its referral).
    follow_ups: int
    processed: int
    unpublished: int
    workers: list[Worker]


def race(ledger_url: str, seed: int) -> Outcome:
    work = workload()
    clock = FakeClock(REPORTED_AT + timedelta(hours=1))
    workers: list[Worker] = []
    for _ in range(THREADS):
        ledger = Ledger.open(ledger_url)
        publisher = RecordingPublisher()
        layer = make_layer(
            ledger=ledger,
            sealer=RecordingSealer(),
            publisher=publisher,
            clock=clock,
            max_processing_attempts=MAX_DELIVERIES,
        )
        workers.append(
            Worker(service=layer.service, holds=layer.holds, ledger=ledger, publisher=publisher)
        )
    try:
        rng = random.Random(seed)
        plans = []
        for index in range(THREADS):
            plan = [*work.shared, *work.split[index]]
            rng.shuffle(plan)
            plans.append(plan)
        errors = run_together(
            workers, [lambda w=w, p=p: w.deliver(p) for w, p in zip(workers, plans, strict=True)]
        )
        assert errors == [], [repr(e)[:300] for e in errors]

        clock.advance(timedelta(days=8))  # past the consent wait (5 working days)
        errors = run_together(workers, [w.holds.expire for w in workers])
        assert errors == [], [repr(e)[:300] for e in errors]
        return outcome(workers)
    finally:
        for worker in workers:
            worker.ledger.dispose()


def outcome(workers: list[Worker]) -> Outcome:
    ledger = workers[0].ledger
    with ledger.engine.connect() as connection:
        links = dict(connection.execute(select(t.links.c.incident_ref, t.links.c.crime_ref)).all())
        actions = connection.execute(select(t.actions)).all()
        processed = len(connection.execute(select(t.processed_events.c.event_id)).all())
    referrals: Counter[tuple[str, str, str]] = Counter()
    leaflets: Counter[tuple[str, str, str]] = Counter()
    follow_ups = 0
    for row in actions:
        matter = links.get(row.case_ref, row.case_ref)
        if row.action == "referral":
            referrals[(row.victim_id, row.provider, matter)] += 1
        elif row.action == "leaflet":
            leaflets[(row.victim_id, row.target, matter)] += 1
        else:
            follow_ups += 1
    return Outcome(
        referrals=referrals,
        leaflets=leaflets,
        follow_ups=follow_ups,
        processed=processed,
        unpublished=ledger.counts()["totals"]["unsent"],
        workers=workers,
    )


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[11, 23, 47], ids=lambda seed: f"seed-{seed}")
def result(request: pytest.FixtureRequest, pg_database_url: str) -> Outcome:
    """One race per seed on an empty, migrated ledger; the tests below look at its outcome."""
    empty_ledger_database(pg_database_url)
    Ledger.open(pg_database_url).dispose()  # migrate once, before the workers start
    return race(pg_database_url, int(request.param))


class TestCompetingWorkers:
    def test_every_message_is_acked_without_escaped_errors_or_dead_letters(
        self, result: Outcome
    ) -> None:
        assert [p for w in result.workers for p in w.problems] == []
        assert result.processed == workload().events

    def test_each_victim_is_referred_exactly_once_per_provider_and_matter(
        self, result: Outcome
    ) -> None:
        assert {key: n for key, n in result.referrals.items() if n != 1} == {}
        assert {victim for victim, _, _ in result.referrals} == workload().referred

    def test_each_held_victim_gets_exactly_one_consent_needed_task_and_no_second(
        self, result: Outcome
    ) -> None:
        held = {
            victim: n
            for (victim, reason, _), n in result.leaflets.items()
            if reason == "consent_needed" and victim in workload().held
        }
        assert held == dict.fromkeys(workload().held, 1)
        assert [key for key in result.leaflets if key[1] == "consent_not_obtained"] == []

    def test_every_outbox_message_is_published_by_some_worker(self, result: Outcome) -> None:
        published = {m.message_id for w in result.workers for m in w.publisher.sent}
        assert result.unpublished == 0
        assert len(published) == (
            sum(result.referrals.values()) + sum(result.leaflets.values()) + result.follow_ups
        )

    def test_only_lost_races_are_retried(self, result: Outcome) -> None:
        retried = set().union(*(w.retries for w in result.workers))
        assert {kind for kind in retried if not kind.startswith(ALLOWED_RETRIES)} == set()
