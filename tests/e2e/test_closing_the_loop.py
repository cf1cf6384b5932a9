"""Closing the loop end to end (issue 8): the real worker on RabbitMQ, outcomes sent with the real
`referral-bridge provider outcome`, completions as the force's task system publishes them, and
escalations taken off the tasks exchange."""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.ledger.schema import referral_outcomes, tasks
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import (
    LANCASHIRE,
    BridgeEnv,
    Received,
    cli_command,
    crime_event,
    iso,
    new_ref,
    worker_environment,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

CALENDAR = WorkingDayCalendar()
ESCALATION = "officer.task.escalation"
LEAFLET = "officer.task.leaflet"


def send_outcome(
    env: BridgeEnv,
    referral_id: str,
    outcome: str,
    *,
    at: datetime,
    provider: str = LANCASHIRE,
    event_id: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`referral-bridge provider outcome`, as a provider's operator runs it."""
    command = [
        *cli_command(),
        "provider",
        "outcome",
        "--provider",
        provider,
        "--referral",
        referral_id,
        "--outcome",
        outcome,
        "--at",
        iso(at),
        "--broker-url",
        env.rabbitmq_url,
        "--exchange",
        env.topology.outcomes_exchange,
    ]
    if event_id:
        command += ["--event-id", event_id]
    return subprocess.run(
        command, capture_output=True, text=True, env=worker_environment(), timeout=60, check=False
    )


def completion_event(
    task_id: str, *, at: datetime, result: str = "leaflet_given"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:force:tasks",
        "type": "task.completed",
        "time": iso(at),
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": {
            "task_id": task_id,
            "completed_at": iso(at),
            "completed_by": "PC 4412",
            "result": result,
        },
    }


def declined_crime(*, reported_at: datetime) -> tuple[dict[str, Any], str]:
    """A burglary whose victim declined: one leaflet task (`declined`); and that task's id."""
    crime_ref, victim_id = new_ref(), new_ref("P")
    event = crime_event(
        crime_ref=crime_ref, victim_id=victim_id, consent="declined", reported_at=reported_at
    )
    return event, ids.leaflet_task_id(crime_ref, victim_id, "declined")


def of_type(messages: list[Received], event_type: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.json()["type"] == event_type]


def dead_letter_reasons(env: BridgeEnv) -> Counter[str]:
    return Counter(
        str(m.headers.get("x-rb-reason")) for m in env.take_all(env.topology.dead_letter_queue)
    )


def ledger_rows(env: BridgeEnv, table: Any) -> list[Any]:
    with env.engine.connect() as connection:
        return list(connection.execute(select(table)))


def test_outcomes_and_completions_in_with_repeats_unknown_ids_and_out_of_order(
    bridge: BridgeEnv,
) -> None:
    bridge.start_worker()
    crime_ref, victim_id = new_ref(), new_ref("P")
    referred = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    leaflet_case, leaflet_task = declined_crime(reported_at=datetime.now(UTC) - timedelta(hours=1))
    bridge.publish(referred, leaflet_case)
    bridge.wait_settled(2)
    referral_id = ids.referral_id(LANCASHIRE, crime_ref, victim_id)
    bridge.take_all(bridge.collect_tasks)
    now = datetime.now(UTC)

    sent = [
        send_outcome(bridge, referral_id, "contacted", at=now - timedelta(hours=3)),
        # Newer: replaces it, and gives the officer a leaflet task.
        send_outcome(bridge, referral_id, "unable_to_contact", at=now, event_id="outcome-2"),
        # A repeat of the same event, and an outcome older than the one recorded: no effect.
        send_outcome(bridge, referral_id, "returned", at=now, event_id="outcome-2"),
        send_outcome(bridge, referral_id, "accepted", at=now - timedelta(hours=5)),
        # Nothing the bridge sent: dead-lettered.
        send_outcome(bridge, str(uuid.uuid4()), "contacted", at=now),
    ]
    bridge.publish(
        completion_event(leaflet_task, at=now - timedelta(minutes=5)),
        completion_event(leaflet_task, at=now, result="not_required"),
        completion_event(ids.leaflet_task_id("X", "Y", "Z"), at=now),
        routing_key="task.completed",
    )

    assert [p.returncode for p in sent] == [0] * 5, [p.stderr for p in sent]
    assert "routing key lancashire-victim-services" in sent[0].stdout
    bridge.wait_dead_letters(2)
    # 2 cases, 3 distinct outcomes taken (the repeat is dropped), 2 completions.
    bridge.wait_settled(2 + 3 + 2)
    assert dead_letter_reasons(bridge) == Counter({"unknown_referral": 1, "unknown_task": 1})
    [outcome] = ledger_rows(bridge, referral_outcomes)
    assert (outcome.referral_id, outcome.outcome, outcome.event_id) == (
        referral_id,
        "unable_to_contact",
        "outcome-2",
    )
    assert outcome.first_contacted_at == now - timedelta(hours=3)
    [leaflet] = of_type(bridge.take_all(bridge.collect_tasks), LEAFLET)
    assert leaflet["data"]["reason"] == "provider_unable_to_contact"
    assert leaflet["data"]["case_ref"] == crime_ref
    completed = {row.task_id: row for row in ledger_rows(bridge, tasks)}[leaflet_task]
    assert (completed.result, completed.completed_by) == ("leaflet_given", "PC 4412")
    results = bridge.processed_results()
    assert sorted(r for r in results.values() if r.startswith(("outcome", "task"))) == [
        "outcome_older",
        "outcome_recorded",
        "outcome_recorded",
        "task_already_completed",
        "task_completed",
    ]


def overdue_cases(count: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Declined burglaries reported two weeks ago: their leaflet tasks are overdue at once."""
    reported_at = datetime.now(UTC) - timedelta(days=14)
    events, task_ids = [], set()
    for _ in range(count):
        event, task_id = declined_crime(reported_at=reported_at)
        events.append(event)
        task_ids.add(task_id)
    return events, task_ids


def wait_escalated(env: BridgeEnv, count: int) -> None:
    """Until `count` escalations are in the ledger and every outbox row is published."""
    assert wait_until(
        lambda: sum(1 for row in ledger_rows(env, tasks) if row.kind == "escalation") >= count,
        timeout=60,
    )
    env.wait_settled(count)


def escalations(env: BridgeEnv) -> list[dict[str, Any]]:
    return of_type(env.take_all(env.collect_tasks), ESCALATION)


def test_overdue_tasks_escalate_exactly_once_across_a_worker_restart(bridge: BridgeEnv) -> None:
    events, task_ids = overdue_cases(20)
    first = bridge.start_worker("first")
    bridge.publish(*events[:10])
    assert wait_until(lambda: bridge.processed_count() >= 5, timeout=60)
    assert first.terminate() == 0
    bridge.publish(*events[10:])
    bridge.start_worker("second")
    bridge.wait_settled(20)
    wait_escalated(bridge, 20)

    sent = escalations(bridge)
    assert sorted(message["data"]["escalates"] for message in sent) == sorted(task_ids)
    assert len({message["id"] for message in sent}) == len(sent) == 20
    data = sent[0]["data"]
    assert (data["task_kind"], data["reason"]) == ("leaflet", "declined")
    assert set(data["officer"]) == {"collar", "unit"}


def test_a_worker_killed_while_escalating_leaves_no_task_unescalated_or_escalated_twice(
    bridge: BridgeEnv,
) -> None:
    """SIGKILL mid-way: every task still gets its one escalation (the wire may carry a repeat
    of an escalation published just before the crash: same id, which consumers drop)."""
    events, task_ids = overdue_cases(20)
    first = bridge.start_worker("killed")
    bridge.publish(*events)
    assert wait_until(
        lambda: any(line.get("event") == "task.escalated" for line in first.log_events()),
        timeout=60,
    )
    first.kill()
    bridge.start_worker("after-the-crash")
    bridge.wait_settled(20)
    wait_escalated(bridge, 20)

    sent = escalations(bridge)
    by_task = {message["data"]["escalates"]: message["id"] for message in sent}
    assert set(by_task) == task_ids
    assert len({message["id"] for message in sent}) == 20
    rows = [row for row in ledger_rows(bridge, tasks) if row.kind == "escalation"]
    assert len(rows) == 20


@pytest.mark.slow
def test_two_workers_on_postgresql_escalate_each_overdue_task_once(
    make_bridge: BridgeFactory, postgres_bridge_url: str
) -> None:
    env = make_bridge(ledger_url=postgres_bridge_url, scheduler_interval=0.5)
    events, task_ids = overdue_cases(30)
    env.start_worker("worker-a")
    env.start_worker("worker-b")
    env.publish(*events)
    env.wait_settled(30, timeout=120)
    wait_escalated(env, 30)

    sent = escalations(env)
    assert Counter(message["data"]["escalates"] for message in sent) == Counter(
        {task_id: 1 for task_id in task_ids}
    )
    logged = [
        line
        for worker in env.workers
        for line in worker.log_events()
        if line.get("event") == "task.escalated"
    ]
    assert len(logged) == 30
