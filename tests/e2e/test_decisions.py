"""Decisions carried out end to end: repeats, stale versions, holds, withdrawals, linked cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from referral_bridge.core import ids
from referral_bridge.ledger.schema import holds
from referral_bridge.sealing import load_key_set, open_event
from tests.e2e.helpers import (
    BRIDGE_KID,
    LANCASHIRE,
    BridgeEnv,
    Received,
    consent_event,
    crime_event,
    incident_event,
    key_path,
    new_ref,
    provider_kid,
    with_changes,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def open_referral(env: BridgeEnv, message: Received) -> dict[str, Any]:
    """The provider's side: verify and decrypt a referral or withdrawal taken off the wire."""
    _, payload = open_event(
        message.body,
        decryption_keys=load_key_set(key_path(env.keys, provider_kid(LANCASHIRE), "private")),
        verification_keys=load_key_set(key_path(env.keys, BRIDGE_KID, "public")),
    )
    return payload


def processed_lines(env: BridgeEnv) -> int:
    return sum(
        1
        for worker in env.workers
        for line in worker.log_events()
        if line.get("event") == "event.processed"
    )


def run_until_handled(env: BridgeEnv, *events: dict[str, Any], distinct: int) -> None:
    """Publish `events`; wait until each delivery is handled and the outbox is published."""
    before = processed_lines(env)
    env.publish(*events)
    assert wait_until(lambda: processed_lines(env) >= before + len(events), timeout=30)
    env.wait_settled(distinct)


def test_a_duplicate_event_has_no_second_effect(bridge: BridgeEnv) -> None:
    event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))
    bridge.start_worker()
    run_until_handled(bridge, event, event, distinct=1)
    referrals = bridge.take_all(bridge.collect_referrals)
    assert len(referrals) == 1
    assert bridge.processed_results() == {event["id"]: "decided"}


def test_an_older_version_after_a_newer_one_has_no_effect(bridge: BridgeEnv) -> None:
    crime_ref = new_ref()
    v1 = crime_event(crime_ref=crime_ref, victim_id=new_ref("P"))
    v2_cancelled = with_changes(v1, version=2, status="cancelled")
    bridge.start_worker()
    run_until_handled(bridge, v2_cancelled, v1, distinct=2)
    assert bridge.take_all(bridge.collect_referrals) == []
    assert bridge.take_all(bridge.collect_tasks) == []
    assert bridge.processed_results()[v1["id"]] == "stale_version"


def test_a_sexual_offence_without_consent_asked_is_held_and_the_officer_asked_at_once(
    bridge: BridgeEnv,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    bridge.start_worker()
    run_until_handled(
        bridge,
        crime_event(crime_ref=crime_ref, victim_id=victim_id, category="sexual", ho_class="17"),
        distinct=1,
    )
    with bridge.engine.connect() as connection:
        open_holds = connection.execute(
            select(holds.c.victim_id).where(holds.c.case_ref == crime_ref, holds.c.open)
        ).all()
    assert [row.victim_id for row in open_holds] == [victim_id]
    assert bridge.take_all(bridge.collect_referrals) == []
    [task] = bridge.take_all(bridge.collect_tasks)
    assert task.json()["data"]["reason"] == "consent_needed"
    assert datetime.fromisoformat(task.json()["data"]["due_by"]) > datetime.now(UTC)


def test_late_consent_on_a_held_sexual_offence_sends_one_sexual_violence_referral(
    bridge: BridgeEnv,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    bridge.start_worker()
    run_until_handled(
        bridge,
        crime_event(crime_ref=crime_ref, victim_id=victim_id, category="sexual", ho_class="17"),
        distinct=1,
    )
    assert bridge.take_all(bridge.collect_referrals) == []
    run_until_handled(
        bridge, consent_event(case_ref=crime_ref, victim_id=victim_id, referral="given"), distinct=2
    )
    referrals = bridge.take_all(bridge.collect_referrals)
    assert [r.message_id for r in referrals] == [ids.referral_id(LANCASHIRE, crime_ref, victim_id)]
    assert open_referral(bridge, referrals[0])["service"] == "sexual_violence"
    tasks = bridge.take_all(bridge.collect_tasks)
    assert [t.json()["data"]["reason"] for t in tasks] == ["consent_needed"]


def test_consent_withdrawn_after_a_referral_sends_one_withdrawal_naming_it(
    bridge: BridgeEnv,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    referral_id = ids.referral_id(LANCASHIRE, crime_ref, victim_id)
    bridge.start_worker()
    run_until_handled(bridge, crime_event(crime_ref=crime_ref, victim_id=victim_id), distinct=1)
    run_until_handled(
        bridge,
        consent_event(case_ref=crime_ref, victim_id=victim_id, referral="withdrawn"),
        distinct=2,
    )
    messages = bridge.take_all(bridge.collect_referrals)
    withdrawals = [m for m in messages if m.json()["type"] == "victim.referral.withdrawn"]
    assert [m.message_id for m in messages if m not in withdrawals] == [referral_id]
    assert len(withdrawals) == 1
    assert withdrawals[0].routing_key == LANCASHIRE
    assert open_referral(bridge, withdrawals[0])["referral_id"] == referral_id


def test_an_incident_later_recorded_as_a_linked_crime_is_referred_once_then_updated(
    bridge: BridgeEnv,
) -> None:
    incident_ref, crime_ref, victim_id = new_ref("INC"), new_ref(), new_ref("P")
    incident = incident_event(incident_ref=incident_ref, victim_id=victim_id, consent="given")
    crime = crime_event(
        crime_ref=crime_ref,
        victim_id=victim_id,
        category="violence_with_injury",
        ho_class="8N",
        consent="given",
        linked_incident_refs=[incident_ref],
    )
    incident_v2 = with_changes(incident, version=2, linked_crime_ref=crime_ref)
    bridge.start_worker()
    run_until_handled(bridge, incident, distinct=1)
    assert len(bridge.take_all(bridge.collect_referrals)) == 1
    run_until_handled(bridge, crime, incident_v2, distinct=3)
    [update] = bridge.take_all(bridge.collect_referrals)
    assert update.json()["type"] == "victim.referral.updated"
    payload = open_referral(bridge, update)
    assert (payload["case_ref"], payload["revision"]) == (crime_ref, 2)
    assert payload["referral_id"] == ids.referral_id(LANCASHIRE, incident_ref, victim_id)
    referral_rows = [row for row in bridge.action_rows() if row.action == "referral"]
    assert len(referral_rows) == 1


def test_a_consent_wait_that_ended_before_the_case_arrived_still_asks_the_officer(
    bridge: BridgeEnv,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    bridge.start_worker()
    run_until_handled(
        bridge,
        crime_event(
            crime_ref=crime_ref,
            victim_id=victim_id,
            category="sexual",
            ho_class="17",
            reported_at=ten_days_ago,
        ),
        distinct=1,
    )
    received = bridge.take_all(bridge.collect_tasks)
    # The task is due two working days after the report, so it is overdue when issued: the
    # scheduler may already have escalated it (a slow machine gives it time to). Nothing else.
    tasks = [t for t in received if t.routing_key == "task.leaflet"]
    others = {t.routing_key for t in received} - {"task.leaflet"}
    assert len(tasks) == 1
    assert others <= {"task.escalation"}
    task = tasks[0].json()
    assert task["data"]["reason"] == "consent_needed"
    assert task["data"]["task_id"] == ids.leaflet_task_id(crime_ref, victim_id, "consent_needed")
    assert bridge.take_all(bridge.collect_referrals) == []
