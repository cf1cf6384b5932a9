"""Scheduled work with several workers on one PostgreSQL ledger (issue 11 item 2): each due case
is decided once, and a worker skips a case another worker holds instead of waiting for it
(`LedgerTransaction.try_lock`, SKIP LOCKED)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.service.holds import HOLD_EXPIRY_EVENT
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    ledger_url_for,
    make_layer,
)
from tests.integration.test_ledger_try_lock import HeldLock
from tests.unit.factories import make_crime, make_incident, make_victim
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES = 12
ESCALATION = "officer.task.escalation"
CRIME_REVIEW = "officer.task.crime_review"


@dataclass(frozen=True)
class Worker:
    """One worker's services and its own ledger connections."""

    layer: ServiceLayer
    ledger: Ledger
    publisher: RecordingPublisher


@pytest.fixture
def workers(
    request: pytest.FixtureRequest, tmp_path: Path, keys: KeyMaterial, clock: FakeClock
) -> Iterator[tuple[Worker, Worker]]:
    """Two workers on one PostgreSQL ledger."""
    url = ledger_url_for("postgresql", request, tmp_path)
    made: list[Worker] = []
    try:
        for _ in range(2):
            ledger, publisher = Ledger.open(url), RecordingPublisher()
            layer = make_layer(
                ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock
            )
            made.append(Worker(layer=layer, ledger=ledger, publisher=publisher))
        yield made[0], made[1]
    finally:
        for worker in made:
            worker.ledger.dispose()


def case_ref(number: int) -> str:
    return f"LC-26-{number:07d}"


def incident_ref(number: int) -> str:
    return f"INC-20261123-{number:04d}"


def held_cases(worker: ServiceLayer, clock: FakeClock) -> None:
    """CASES crimes under an explicit-consent rule, their victims not asked: each is held, and
    its consent_needed leaflet task falls due a working day later."""
    for number in range(CASES):
        crime = make_crime(
            make_victim(), crime_ref=case_ref(number), category="sexual", ho_class="19C"
        )
        body = cloudevent(crime, event_type="crime.recorded", event_id=f"crime-{number}")
        worker.service.handle(inbound(body))
    clock.advance(timedelta(days=14))  # the holds ended, the tasks are overdue


def finishes_while_held(step: Callable[[], object], ledger: Ledger, ref: str) -> bool:
    """Whether `step` returns while another worker holds `ref`'s matter (it did not wait)."""
    held = HeldLock(ledger, {ref})  # another worker, in the middle of deciding the case
    try:
        running = threading.Thread(target=step, daemon=True)
        running.start()
        return wait_until(lambda: not running.is_alive(), timeout=20)
    finally:
        held.end()
        running.join(30)


def hold_decisions(ledger: Ledger) -> Counter[str]:
    with ledger.engine.connect() as connection:
        rows = connection.execute(
            select(t.decisions.c.case_ref).where(t.decisions.c.event_id == HOLD_EXPIRY_EVENT)
        ).scalars()
        return Counter(rows)


def open_holds(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as connection:
        return set(connection.execute(select(t.holds.c.case_ref).where(t.holds.c.open)).scalars())


class TestACaseAnotherWorkerHolds:
    """Another worker is deciding case 0 (its matter is locked): the others are done at once."""

    def test_hold_expiry_skips_it_and_decides_the_rest(
        self, workers: tuple[Worker, Worker], clock: FakeClock
    ) -> None:
        first, second = workers
        held_cases(first.layer, clock)

        assert finishes_while_held(second.layer.holds.expire, first.ledger, case_ref(0))

        assert open_holds(second.ledger) == {case_ref(0)}
        second.layer.holds.expire()  # the next tick
        assert open_holds(second.ledger) == set()
        assert hold_decisions(second.ledger) == Counter({case_ref(n): 1 for n in range(CASES)})

    def test_escalation_skips_it_and_escalates_the_rest(
        self, workers: tuple[Worker, Worker], clock: FakeClock
    ) -> None:
        first, second = workers
        held_cases(first.layer, clock)

        assert finishes_while_held(
            second.layer.scheduled.escalate_overdue_tasks, first.ledger, case_ref(0)
        )

        assert len(second.publisher.of_type(ESCALATION)) == CASES - 1
        assert second.layer.scheduled.escalate_overdue_tasks() == 1  # the next tick

    def test_a_crime_review_skips_it_and_raises_the_rest(
        self, workers: tuple[Worker, Worker], clock: FakeClock
    ) -> None:
        first, second = workers
        for number in range(CASES):
            incident = make_incident(
                incident_ref=incident_ref(number), category="crime_reported", crime_disclosed=True
            )
            body = cloudevent(incident, event_type="incident.recorded", event_id=f"inc-{number}")
            first.layer.service.handle(inbound(body, routing_key="incident.recorded"))
        clock.advance(timedelta(hours=25))

        assert finishes_while_held(
            second.layer.scheduled.review_crime_recording, first.ledger, incident_ref(0)
        )

        assert len(second.publisher.of_type(CRIME_REVIEW)) == CASES - 1
        second.layer.scheduled.review_crime_recording()  # the next tick
        assert len(second.publisher.of_type(CRIME_REVIEW)) == CASES


def test_two_workers_expiring_holds_at_once_decide_each_case_once(
    workers: tuple[Worker, Worker], clock: FakeClock
) -> None:
    first, _ = workers
    held_cases(first.layer, clock)
    start = threading.Barrier(2)

    def tick(worker: Worker) -> None:
        start.wait()
        worker.layer.holds.expire()
        worker.layer.scheduled.escalate_overdue_tasks()

    threads = [threading.Thread(target=tick, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert hold_decisions(first.ledger) == Counter({case_ref(n): 1 for n in range(CASES)})
    escalations = [m.message_id for w in workers for m in w.publisher.of_type(ESCALATION)]
    assert len(escalations) == len(set(escalations)) == CASES
