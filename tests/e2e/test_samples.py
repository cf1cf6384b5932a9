"""The contract's three sample events through a real worker, and the provider opening a referral."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from referral_bridge.cli.main import RET_OK, RET_VERIFY
from referral_bridge.core import ids
from referral_bridge.sealing import generate_key_pair
from tests.e2e.helpers import (
    BRIDGE_KID,
    LANCASHIRE,
    BridgeEnv,
    Received,
    key_path,
    load_sample,
    open_with_cli,
    provider_kid,
)

pytestmark = pytest.mark.e2e

BURGLARY = load_sample("crime-recorded-burglary.json")
ASB = load_sample("incident-recorded-asb.json")
CONSENT = load_sample("consent-updated.json")
BURGLARY_VICTIM = BURGLARY["data"]["victims"][0]["victim_id"]
ASB_VICTIM = ASB["data"]["victims"][0]["victim_id"]
#: Personal values in the samples that must never reach the worker's log.
SAMPLE_PERSONAL_VALUES = (
    "1984-02-29",
    "07700 900123",
    "sample.person@example.org",
    "PR1 1AA",
    "1951-07-14",
    "07700 900456",
    "1 Example Street",
)


@dataclass(frozen=True)
class SamplesRun:
    env: BridgeEnv
    referrals: list[Received]
    tasks: list[Received]
    exit_code: int
    log: str


@pytest.fixture(scope="module")
def samples_run(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SamplesRun]:
    """Crime, incident, then the consent update, processed by one worker that then stops."""
    env = BridgeEnv.create(tmp_path_factory.mktemp("samples"), rabbitmq_url=rabbitmq_url)
    try:
        worker = env.start_worker()
        env.publish(BURGLARY, ASB)
        env.wait_settled(2)
        env.publish(CONSENT)
        env.wait_settled(3)
        code = worker.terminate()
        yield SamplesRun(
            env=env,
            referrals=env.take_all(env.collect_referrals),
            tasks=env.take_all(env.collect_tasks),
            exit_code=code,
            log=worker.log_text(),
        )
    finally:
        env.close()


def test_the_burglary_victim_is_referred_once_under_opt_out(samples_run: SamplesRun) -> None:
    expected = ids.referral_id(LANCASHIRE, BURGLARY["data"]["crime_ref"], BURGLARY_VICTIM)
    assert [r.message_id for r in samples_run.referrals].count(expected) == 1


def test_the_asb_incident_victim_who_consented_is_referred_once(samples_run: SamplesRun) -> None:
    expected = ids.referral_id(LANCASHIRE, ASB["data"]["incident_ref"], ASB_VICTIM)
    assert [r.message_id for r in samples_run.referrals].count(expected) == 1


def test_the_consent_update_causes_no_second_referral_but_an_update(
    samples_run: SamplesRun,
) -> None:
    """The provider held "no objection"; the sample records consent given (rules.md version 2:
    any other change to what the provider holds is sent as an update)."""
    assert [r.json()["type"] for r in samples_run.referrals] == [
        "victim.referral.created",
        "victim.referral.created",
        "victim.referral.updated",
    ]
    burglary = ids.referral_id(LANCASHIRE, BURGLARY["data"]["crime_ref"], BURGLARY_VICTIM)
    assert samples_run.referrals[2].message_id == ids.update_id(burglary, 2)
    assert samples_run.tasks == []


def test_the_provider_opens_the_update_with_the_cli(samples_run: SamplesRun) -> None:
    keys = samples_run.env.keys
    opened = open_with_cli(
        samples_run.referrals[2].body,
        key=key_path(keys, provider_kid(LANCASHIRE), "private"),
        verify_with=key_path(keys, BRIDGE_KID, "public"),
    )
    assert opened.returncode == RET_OK, opened.stderr.decode()
    document = json.loads(opened.stdout)
    assert document["envelope"]["type"] == "victim.referral.updated"
    payload = document["payload"]
    assert payload["revision"] == 2
    assert payload["consent"]["state"] == "given"
    assert payload["lawful_basis"] == CONSENT["data"]["lawful_basis"]


def test_each_referral_goes_to_the_provider_as_a_sealed_cloudevent(
    samples_run: SamplesRun,
) -> None:
    for referral in samples_run.referrals[:2]:
        envelope = referral.json()
        assert referral.routing_key == LANCASHIRE
        assert envelope["id"] == referral.message_id
        assert envelope["type"] == "victim.referral.created"
        assert envelope["datacontenttype"] == "application/jose"
        assert envelope["data"].count(".") == 4  # JWE compact: five parts


def test_the_worker_stops_on_sigterm_with_exit_code_zero(samples_run: SamplesRun) -> None:
    assert samples_run.exit_code == 0


def test_the_worker_log_holds_no_personal_data_from_the_samples(samples_run: SamplesRun) -> None:
    assert "event.processed" in samples_run.log
    leaked = [value for value in SAMPLE_PERSONAL_VALUES if value in samples_run.log]
    assert leaked == []


def _burglary_referral(run: SamplesRun) -> Received:
    expected = ids.referral_id(LANCASHIRE, BURGLARY["data"]["crime_ref"], BURGLARY_VICTIM)
    return next(r for r in run.referrals if r.message_id == expected)


def test_the_provider_opens_a_referral_with_the_cli_and_sees_the_victim(
    samples_run: SamplesRun,
) -> None:
    keys = samples_run.env.keys
    opened = open_with_cli(
        _burglary_referral(samples_run).body,
        key=key_path(keys, provider_kid(LANCASHIRE), "private"),
        verify_with=key_path(keys, BRIDGE_KID, "public"),
    )
    assert opened.returncode == RET_OK, opened.stderr.decode()
    payload = json.loads(opened.stdout)["payload"]
    assert payload["victim"]["victim_id"] == BURGLARY_VICTIM
    assert payload["service"] == "general"


def test_opening_a_referral_with_another_providers_key_exits_with_ret_verify(
    samples_run: SamplesRun,
) -> None:
    keys = samples_run.env.keys
    opened = open_with_cli(
        _burglary_referral(samples_run).body,
        key=key_path(keys, provider_kid("homicide-service"), "private"),
        verify_with=key_path(keys, BRIDGE_KID, "public"),
    )
    assert opened.returncode == RET_VERIFY
    assert BURGLARY_VICTIM not in opened.stdout.decode()


def test_opening_a_referral_with_a_forged_key_of_the_same_kid_exits_with_ret_verify(
    samples_run: SamplesRun, tmp_path: Path
) -> None:
    forged = generate_key_pair(provider_kid(LANCASHIRE), tmp_path)
    opened = open_with_cli(
        _burglary_referral(samples_run).body,
        key=forged.private_path,
        verify_with=key_path(samples_run.env.keys, BRIDGE_KID, "public"),
    )
    assert opened.returncode == RET_VERIFY
    assert BURGLARY_VICTIM not in opened.stdout.decode()
