"""Bad input through a real worker: parked byte for byte with the x-rb-* headers, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from referral_bridge.devtools.simulate import MARKER_DATE_OF_BIRTH
from tests.e2e.helpers import BridgeEnv, Received, crime_event, load_sample, new_ref

pytestmark = pytest.mark.e2e

#: Planted in personal fields of the bad bodies: it must never reach a header or the log.
MARKER = "DLQMARKERSEVEN"
MAX_BYTES = 2048
DEAD_LETTER_HEADERS = {
    "x-rb-reason",
    "x-rb-detail",
    "x-rb-failed-at",
    "x-rb-attempts",
    "x-rb-original-routing-key",
}


def _marked_crime(**envelope: object) -> dict[str, object]:
    event = load_sample("crime-recorded-burglary.json")
    victim = event["data"]["victims"][0]
    victim["name"] = {"title": "Ms", "given": f"{MARKER}-given", "family": f"{MARKER}-family"}
    victim["date_of_birth"] = MARKER_DATE_OF_BIRTH
    victim["contact"]["phone"] = f"{MARKER}-phone"
    event.update(envelope)
    return event


def _bodies() -> dict[str, bytes]:
    schema_violation = _marked_crime(id=new_ref("BAD"))
    victim = schema_violation["data"]["victims"][0]  # type: ignore[index]
    victim["date_of_birth"] = f"{MARKER}-not-a-date"
    victim["kind"] = f"{MARKER}-kind"
    too_large = json.dumps(_marked_crime(id=new_ref("BAD"), padding=MARKER * 400)).encode()
    return {
        "invalid_json": f'{{"name": "{MARKER}", "dob": "{MARKER_DATE_OF_BIRTH}",'.encode(),
        "invalid_encoding": f'{{"name": "{MARKER}"}}'.encode() + b"\xff\xfe\xfa",
        "too_large": too_large[: MAX_BYTES + 952],  # 3000 bytes, not even valid JSON any more
        "not_cloudevent": json.dumps({"name": MARKER, "dob": MARKER_DATE_OF_BIRTH}).encode(),
        "unknown_type": json.dumps(
            _marked_crime(id=new_ref("BAD"), type="crime.exploded")
        ).encode(),
        "unsupported_version": json.dumps(
            _marked_crime(id=new_ref("BAD"), schemaversion=9)
        ).encode(),
        "schema_violation": json.dumps(schema_violation).encode(),
    }


BODIES = _bodies()


@dataclass(frozen=True)
class DeadLetterRun:
    env: BridgeEnv
    dead: dict[bytes, Received]
    referrals: list[Received]
    log: str
    exit_code: int


@pytest.fixture(scope="module")
def dead_letter_run(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DeadLetterRun]:
    """Every kind of bad message, then a good one, through one worker with a 2 KiB size limit."""
    env = BridgeEnv.create(
        tmp_path_factory.mktemp("dead-letters"),
        rabbitmq_url=rabbitmq_url,
        max_message_bytes=MAX_BYTES,
    )
    try:
        good = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))
        worker = env.start_worker()
        env.publish(*BODIES.values(), routing_key="crime.recorded")
        env.publish(good)
        env.wait_dead_letters(len(BODIES))
        env.wait_settled(1)
        code = worker.terminate()
        yield DeadLetterRun(
            env=env,
            dead={m.body: m for m in env.take_all(env.topology.dead_letter_queue)},
            referrals=env.take_all(env.collect_referrals),
            log=worker.log_text(),
            exit_code=code,
        )
    finally:
        env.close()


def test_the_too_large_body_is_3000_bytes() -> None:
    assert len(BODIES["too_large"]) == 3000


@pytest.mark.parametrize("reason", sorted(BODIES))
def test_a_bad_message_is_dead_lettered_byte_for_byte_with_its_reason(
    dead_letter_run: DeadLetterRun, reason: str
) -> None:
    parked = dead_letter_run.dead.get(BODIES[reason])
    assert parked is not None, f"no dead letter carries the original {reason} body"
    assert parked.headers["x-rb-reason"] == reason


@pytest.mark.parametrize("reason", sorted(BODIES))
def test_a_dead_letter_carries_the_five_x_rb_headers(
    dead_letter_run: DeadLetterRun, reason: str
) -> None:
    headers = dead_letter_run.dead[BODIES[reason]].headers
    assert set(headers) >= DEAD_LETTER_HEADERS
    assert headers["x-rb-original-routing-key"] == "crime.recorded"
    assert headers["x-rb-attempts"] == 1
    assert str(headers["x-rb-failed-at"]).endswith("Z")
    assert headers["x-rb-detail"]


@pytest.mark.parametrize("reason", sorted(BODIES))
def test_a_dead_letter_detail_holds_no_personal_value_from_the_body(
    dead_letter_run: DeadLetterRun, reason: str
) -> None:
    detail = str(dead_letter_run.dead[BODIES[reason]].headers["x-rb-detail"])
    assert MARKER not in detail
    assert MARKER_DATE_OF_BIRTH not in detail


def test_only_the_bad_messages_are_dead_lettered(dead_letter_run: DeadLetterRun) -> None:
    assert set(dead_letter_run.dead) == set(BODIES.values())


def test_a_good_message_after_the_bad_ones_is_processed(dead_letter_run: DeadLetterRun) -> None:
    assert len(dead_letter_run.referrals) == 1
    assert dead_letter_run.env.processed_count() == 1


def test_the_worker_survives_bad_input_and_stops_cleanly(dead_letter_run: DeadLetterRun) -> None:
    assert dead_letter_run.exit_code == 0


def test_the_worker_log_holds_no_personal_value_from_the_bad_messages(
    dead_letter_run: DeadLetterRun,
) -> None:
    assert "transport.dead_lettered" in dead_letter_run.log
    assert MARKER not in dead_letter_run.log
    assert MARKER_DATE_OF_BIRTH not in dead_letter_run.log
