"""Rules and contract version 2 end to end: the real worker against RabbitMQ, checked on the wire.

One test per case of issue 7 and per numbered change of rules.md's summary. What comes out is
taken off the broker and the sealed payloads are opened with jwcrypto, as a provider would.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwcrypto import jwe, jwk, jws  # type: ignore[import-untyped]
from sqlalchemy import select

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.ledger.schema import audit, decisions
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

CREATED = "victim.referral.created"
UPDATED = "victim.referral.updated"
WITHDRAWN = "victim.referral.withdrawn"
CALENDAR = WorkingDayCalendar()


def opened(env: BridgeEnv, message: Received, provider: str = LANCASHIRE) -> dict[str, Any]:
    """The provider's side with another JOSE library: decrypt, then verify the signature."""
    private = key_path(env.keys, provider_kid(provider), "private").read_text("utf-8")
    public = key_path(env.keys, BRIDGE_KID, "public").read_text("utf-8")
    outer = jwe.JWE()
    outer.deserialize(message.json()["data"], key=jwk.JWK(**json.loads(private)))
    inner = jws.JWS()
    inner.deserialize(outer.payload.decode("ascii"))
    inner.verify(jwk.JWK(**json.loads(public)))
    payload: dict[str, Any] = json.loads(inner.payload)
    return payload


def processed_lines(env: BridgeEnv) -> int:
    return sum(
        1
        for worker in env.workers
        for line in worker.log_events()
        if line.get("event") == "event.processed"
    )


class Run:
    """One worker for the module (each test uses refs of its own), and what it sends."""

    def __init__(self, env: BridgeEnv) -> None:
        self.env = env
        self.events = 0
        env.start_worker()

    def send(self, *events: dict[str, Any]) -> tuple[list[Received], list[Received]]:
        """Publish, wait until handled and published; (provider messages, officer tasks)."""
        before = processed_lines(self.env)
        self.env.publish(*events)
        self.events += len(events)
        assert wait_until(lambda: processed_lines(self.env) >= before + len(events), timeout=30)
        self.env.wait_settled(self.events)
        return self.env.take_all(self.env.collect_referrals), self.env.take_all(
            self.env.collect_tasks
        )


@pytest.fixture(scope="module")
def run(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    env = BridgeEnv.create(tmp_path_factory.mktemp("whole-life"), rabbitmq_url=rabbitmq_url)
    try:
        yield Run(env)
    finally:
        env.close()


@pytest.fixture
def bridge(run: Run) -> BridgeEnv:
    return run.env


def types(messages: list[Received]) -> list[str]:
    return [m.json()["type"] for m in messages]


def task_data(tasks: list[Received]) -> list[dict[str, Any]]:
    return [t.json()["data"] for t in tasks]


def victim(event: dict[str, Any], index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = event["data"]["victims"][index]
    return found


def with_victim(event: dict[str, Any], victim_id: str, **fields: Any) -> dict[str, Any]:
    """The event with another victim, a copy of the first with `fields` changed."""
    changed = copy.deepcopy(event)
    extra = copy.deepcopy(victim(event))
    extra.update(victim_id=victim_id, **fields)
    changed["data"]["victims"].append(extra)
    return changed


def newer(event: dict[str, Any], **data: Any) -> dict[str, Any]:
    return with_changes(event, version=event["data"]["version"] + 1, **data)


def reported(event: dict[str, Any]) -> datetime:
    key = "reported_at" if "reported_at" in event["data"] else "opened_at"
    return datetime.fromisoformat(event["data"][key])


# --- rules.md change 1: a referral is followed for its whole life -------------------------------


def test_declined_after_an_opt_out_referral_withdraws_it_naming_provider_and_reason(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    [referral], _ = run.send(crime_event(crime_ref=crime_ref, victim_id=victim_id))

    sent, tasks = run.send(
        consent_event(case_ref=crime_ref, victim_id=victim_id, referral="declined")
    )

    [withdrawal] = sent
    assert withdrawal.json()["type"] == WITHDRAWN
    assert withdrawal.message_id == ids.withdrawal_id(referral.message_id or "")
    assert withdrawal.routing_key == LANCASHIRE
    payload = opened(bridge, withdrawal)
    assert payload["referral_id"] == referral.message_id
    assert (payload["provider"], payload["reason"]) == (LANCASHIRE, "declined")
    assert [(t["reason"], t["victim_id"]) for t in task_data(tasks)] == [("declined", victim_id)]


def test_a_phone_number_changed_after_a_referral_is_sent_as_a_sealed_update(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    first = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    [referral], _ = run.send(first)
    second = newer(first)
    victim(second)["contact"]["phone"] = "07700 900456"

    [update], tasks = run.send(second)

    assert update.json()["type"] == UPDATED
    assert update.message_id == ids.update_id(referral.message_id or "", 2)
    payload = opened(bridge, update)
    assert (payload["referral_id"], payload["revision"]) == (referral.message_id, 2)
    assert payload["victim"]["contact"]["phone"] == "07700 900456"
    assert payload["deadline"] == opened(bridge, referral)["deadline"]
    assert tasks == []


def test_reclassified_to_a_sexual_offence_withdraws_the_opt_out_referral_and_asks(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    first = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    [referral], _ = run.send(first)

    sent, tasks = run.send(
        newer(first, offence={"ho_class": "19C", "label": "Rape", "category": "sexual"})
    )

    [withdrawal] = sent
    payload = opened(bridge, withdrawal)
    assert (payload["referral_id"], payload["reason"]) == (
        referral.message_id,
        "consent_regime_changed",
    )
    [task] = task_data(tasks)
    assert task["reason"] == "consent_needed"
    assert datetime.fromisoformat(task["due_by"]) == CALENDAR.add_working_days(reported(first), 1)


def test_flagged_domestic_abuse_and_unsafe_to_contact_withdraws_the_referral(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    first = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    [referral], _ = run.send(first)
    second = newer(first, flags={"domestic_abuse": True})
    victim(second)["contact"]["safe_to_contact"] = False

    [withdrawal], tasks = run.send(second)

    payload = opened(bridge, withdrawal)
    assert payload["referral_id"] == referral.message_id
    assert payload["reason"] == "consent_regime_changed"
    assert "consent_needed" in [t["reason"] for t in task_data(tasks)]


def test_unsafe_to_contact_after_a_referral_withdraws_it_and_gives_the_leaflet_task(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    first = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    run.send(first)
    second = newer(first)
    victim(second)["contact"]["safe_to_contact"] = False

    [withdrawal], tasks = run.send(second)

    assert opened(bridge, withdrawal)["reason"] == "not_safe_to_contact"
    assert [t["reason"] for t in task_data(tasks)] == ["no_safe_contact"]


def test_a_victim_who_withdrew_and_agrees_again_is_referred_again_under_a_new_id(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    [first], _ = run.send(crime_event(crime_ref=crime_ref, victim_id=victim_id))
    now = datetime.now(UTC)
    [withdrawal], _ = run.send(
        consent_event(
            case_ref=crime_ref,
            victim_id=victim_id,
            referral="withdrawn",
            recorded_at=now - timedelta(seconds=30),
        )
    )

    [again], _ = run.send(
        consent_event(case_ref=crime_ref, victim_id=victim_id, referral="given", recorded_at=now)
    )

    assert opened(bridge, withdrawal)["reason"] == "withdrawn"
    assert again.json()["type"] == CREATED
    assert again.message_id == ids.referral_id_for(LANCASHIRE, crime_ref, victim_id, 2)
    assert again.message_id != first.message_id
    payload = opened(bridge, again)
    assert payload["consent"]["state"] == "given"
    generations = [
        row.facts["generation"]
        for row in bridge.action_rows()
        if row.action == "referral" and row.case_ref == crime_ref
    ]
    assert generations == [1, 2]


# --- rules.md change 2: consent_needed at once, the hold only waits -----------------------------


def test_a_child_victim_not_yet_asked_gets_a_consent_needed_task_that_is_not_overdue(
    run: Run,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    event = crime_event(crime_ref=crime_ref, victim_id=victim_id)
    victim(event)["date_of_birth"] = "2015-06-01"
    issued = datetime.now(UTC)

    sent, tasks = run.send(event)

    assert sent == []
    [task] = task_data(tasks)
    assert task["reason"] == "consent_needed"
    due_by = datetime.fromisoformat(task["due_by"])
    assert due_by == CALENDAR.add_working_days(reported(event), 1)
    assert due_by > issued


# --- rules.md change 3: bereaved relatives -------------------------------------------------------


def test_a_relative_bereaved_by_dangerous_driving_goes_to_bereaved_support(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    event = crime_event(
        crime_ref=crime_ref,
        victim_id=victim_id,
        category="vehicle",
        ho_class="4.4",
        consent="given",
    )
    victim(event)["relationship"] = "bereaved_relative"

    [referral], _ = run.send(event)

    assert referral.routing_key == LANCASHIRE
    payload = opened(bridge, referral)
    assert payload["service"] == "bereaved"
    assert payload["consent"] == {
        "regime": "explicit",
        "state": "given",
        "recorded_at": victim(event)["consent"]["recorded_at"].replace("+00:00", "Z"),
        "recorded_by": "PC 4412",
    }


def test_a_homicide_with_only_the_deceased_recorded_asks_the_officer_to_record_the_family(
    run: Run,
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    event = crime_event(crime_ref=crime_ref, victim_id=victim_id, category="homicide", ho_class="1")
    victim(event)["deceased"] = True

    sent, tasks = run.send(event)

    assert sent == []
    [task] = task_data(tasks)
    assert (task["reason"], task["victim_id"]) == ("bereaved_not_recorded", victim_id)
    assert datetime.fromisoformat(task["due_by"]) == CALENDAR.add_working_days(reported(event), 1)


# --- rules.md change 4: a parent on a child's crime follows the child's rule ---------------------


def test_a_parent_on_a_child_victims_crime_is_not_referred_under_opt_out(run: Run) -> None:
    crime_ref, child_id, parent_id = new_ref(), new_ref("C"), new_ref("P")
    event = crime_event(crime_ref=crime_ref, victim_id=child_id)
    victim(event)["date_of_birth"] = "2016-01-01"
    event = with_victim(
        event, parent_id, date_of_birth="1985-01-01", relationship="parent_or_guardian"
    )

    sent, tasks = run.send(event)

    assert sent == []  # the child's crime is not disclosed without consent
    assert sorted((t["victim_id"], t["reason"]) for t in task_data(tasks)) == sorted(
        [(child_id, "consent_needed"), (parent_id, "consent_needed")]
    )


# --- rules.md change 5: classes normalised and mapped --------------------------------------------


def test_a_rape_report_sent_as_other_is_not_referred_without_consent(run: Run) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")

    sent, tasks = run.send(
        crime_event(crime_ref=crime_ref, victim_id=victim_id, category="other", ho_class="N100")
    )

    assert sent == []
    assert [t["reason"] for t in task_data(tasks)] == ["consent_needed"]


def test_05a_and_5a_are_the_same_class_with_enhanced_rights(run: Run) -> None:
    events = [
        crime_event(
            crime_ref=new_ref(),
            victim_id=new_ref("P"),
            category="violence_with_injury",
            ho_class=ho_class,
            consent="declined",
        )
        for ho_class in ("05A", "5A")
    ]

    _, tasks = run.send(*events)

    due = {t["case_ref"]: datetime.fromisoformat(t["due_by"]) for t in task_data(tasks)}
    assert due == {
        e["data"]["crime_ref"]: CALENDAR.add_working_days(reported(e), 1) for e in events
    }


# --- rules.md change 6: an incident where a crime was disclosed ---------------------------------


def test_an_incident_with_a_crime_disclosed_is_decided_by_the_crime_rules(
    run: Run, bridge: BridgeEnv
) -> None:
    incident_ref, victim_id = new_ref("INC"), new_ref("P")
    event = incident_event(incident_ref=incident_ref, victim_id=victim_id, consent="not_asked")
    event["data"].update(category="crime_reported", crime_disclosed=True)

    [referral], tasks = run.send(event)

    assert tasks == []
    payload = opened(bridge, referral)
    assert (payload["case_kind"], payload["offence_category"]) == ("incident", "other")
    assert payload["consent"]["regime"] == "opt_out"


def test_a_declined_incident_is_recorded_as_declined(run: Run) -> None:
    incident_ref, victim_id = new_ref("INC"), new_ref("P")

    _, tasks = run.send(
        incident_event(incident_ref=incident_ref, victim_id=victim_id, consent="declined")
    )

    assert [t["reason"] for t in task_data(tasks)] == ["declined"]


def test_a_late_referral_is_recorded_as_late(run: Run, bridge: BridgeEnv) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")
    event = crime_event(
        crime_ref=crime_ref, victim_id=victim_id, reported_at=datetime.now(UTC) - timedelta(days=9)
    )

    [referral], _ = run.send(event)

    assert datetime.fromisoformat(opened(bridge, referral)["deadline"]) < datetime.now(UTC)
    with bridge.engine.connect() as connection:
        late = connection.execute(
            select(decisions.c.late).where(
                decisions.c.case_ref == crime_ref, decisions.c.outcome == "refer"
            )
        ).scalar_one()
    assert late is True


# --- rules.md change 7: the lawful basis beside the consent regime and state ---------------------


def test_the_lawful_basis_is_recorded_apart_from_the_consent_state(
    run: Run, bridge: BridgeEnv
) -> None:
    crime_ref, victim_id = new_ref(), new_ref("P")

    [referral], _ = run.send(crime_event(crime_ref=crime_ref, victim_id=victim_id))

    payload = opened(bridge, referral)
    assert payload["consent"]["regime"] == "opt_out"
    assert payload["consent"]["state"] == "not_asked"
    assert payload["lawful_basis"].startswith("UK GDPR Art 6(1)(e)")
    with bridge.engine.connect() as connection:
        row = connection.execute(
            select(audit).where(audit.c.message_id == referral.message_id)
        ).one()
    assert (row.consent_regime, row.consent_state) == ("opt_out", "not_asked")
    assert row.lawful_basis == payload["lawful_basis"]
    assert "no_objection" not in str(row.lawful_basis)
