"""`referral-bridge dlq` and `audit` as subprocesses against RabbitMQ and a real worker.

Bad messages of every reason are dead-lettered by the worker itself; the tool lists them, shows
them masked (marker values in every personal field), reveals one with an audit record, replays
after a fix exactly once, and loses nothing when it is killed in the middle of a bulk replay.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from referral_bridge.bootstrap import broker_of, topology_of
from referral_bridge.ledger import Ledger
from referral_bridge.ledger.schema import processed_events
from referral_bridge.sealing import generate_key_pair
from referral_bridge.settings import Settings, load_settings
from referral_bridge.transport import Publisher, queue_depth
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import (
    BRIDGE_KID,
    POLICY,
    PROVIDERS,
    BridgeEnv,
    Worker,
    cli_command,
    consent_event,
    crime_event,
    encode,
    load_sample,
    new_ref,
    provider_kid,
    run_cli,
    worker_environment,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

MAX_BYTES = 2048
MARKER = "DLQCLIMARK"
POISON = "POISON"
REASONS = {
    "invalid_json",
    "invalid_encoding",
    "too_large",
    "not_cloudevent",
    "unknown_type",
    "unsupported_version",
    "schema_violation",
    "processing_error",
}


# --- helpers of this module --------------------------------------------------------------------


def cli(env: BridgeEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`referral-bridge ARGS --config CONFIG`, as an operator would run it."""
    return run_cli(env.config, *args, timeout=timeout)


def cli_json(env: BridgeEnv, *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dead_letters(env: BridgeEnv, *args: str) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = cli_json(env, "dlq", "list", *args)["dead_letters"]
    return letters


def set_max_message_bytes(env: BridgeEnv, value: int) -> None:
    config = env.config.read_text(encoding="utf-8")
    env.config.write_text(
        re.sub(r"(?m)^max_message_bytes = \d+$", f"max_message_bytes = {value}", config),
        encoding="utf-8",
    )


def poison_consents(env: BridgeEnv) -> None:
    """Make the ledger refuse consents of victims named POISON-…: a persistent processing error.

    Dropping the trigger afterwards is the "fix" an operator would make before replaying.
    """
    Ledger.open(env.ledger_url).dispose()  # create the tables as the worker would
    engine = create_engine(env.ledger_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TRIGGER rb_test_poison BEFORE INSERT ON rb_consents "
                f"WHEN NEW.victim_id LIKE '{POISON}%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        )
    engine.dispose()


def cure_consents(env: BridgeEnv) -> None:
    engine = create_engine(env.ledger_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TRIGGER rb_test_poison"))
    engine.dispose()


def poisoned_consent() -> dict[str, Any]:
    return consent_event(case_ref=new_ref(), victim_id=f"{POISON}-{new_ref('P')}", referral="given")


def marked_schema_violation() -> tuple[bytes, list[str]]:
    """A crime whose victim and officer carry a distinct marker in every personal field."""
    markers: list[str] = []

    def mark(field: str) -> str:
        markers.append(f"{MARKER}{len(markers):02d}{field}")
        return markers[-1]

    event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"), consent="given")
    data = event["data"]
    data["officer"].update(name=mark("on"), email=mark("oe"))
    victim = data["victims"][0]
    victim["name"] = {
        "title": mark("t"),
        "given": mark("g"),
        "family": mark("f"),
        "contact_person": mark("cp"),
    }
    victim["date_of_birth"] = mark("dob")  # not a date: one of the schema violations
    victim["contact"] = {
        "phone": mark("ph"),
        "email": mark("em"),
        "address": {"lines": [mark("l1"), mark("l2")], "postcode": mark("pc")},
        "preferred": "phone",
        "safe_to_contact": True,
        "safe_contact_notes": mark("n"),
    }
    victim["needs"].update(language=mark("la"), accessibility=mark("ac"))
    victim["consent"]["recorded_by"] = mark("rb")
    victim["nickname"] = mark("x")  # not in the contract: masked as unknown
    # Personal data a producer put in non-personal fields: what a failing body may well carry.
    victim["kind"] = mark("k")
    victim["relationship"] = mark("r")
    data["reported_at"] = mark("ra")
    data["offence"]["label"] = mark("ol")
    # Lower case, as a flag name would be (an upper-case key was always masked).
    markers.append(mark("fk").lower())
    markers.pop(-2)
    data["flags"][markers[-1]] = True
    body = encode(event)
    assert len(body) <= MAX_BYTES, "the marked body must fail on its schema, not its size"
    return body, markers


def bad_bodies(schema_violation: bytes) -> dict[str, bytes]:
    crime = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))
    return {
        "invalid_json": f'{{"name": "{MARKER}-json",'.encode(),
        "invalid_encoding": f'{{"name": "{MARKER}-enc"}}'.encode() + b"\xff\xfe",
        "too_large": encode({**crime, "padding": f"{MARKER}-big" * 300}),
        "not_cloudevent": json.dumps({"name": f"{MARKER}-nce"}).encode(),
        "unknown_type": encode({**crime, "id": new_ref("BAD"), "type": "crime.exploded"}),
        "unsupported_version": encode({**crime, "id": new_ref("BAD"), "schemaversion": 9}),
        "schema_violation": schema_violation,
    }


def audit_records(env: BridgeEnv, *args: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = cli_json(env, "audit", *args)["records"]
    return records


def processed_outcomes(env: BridgeEnv, outcome: str) -> int:
    return sum(
        1
        for worker in env.workers
        for event in worker.log_events()
        if event.get("event") == "event.processed" and event.get("outcome") == outcome
    )


# --- every reason, listed and shown ------------------------------------------------------------


@dataclass(frozen=True)
class EveryReason:
    env: BridgeEnv
    markers: list[str]
    ids: dict[str, str]  # reason -> dead-letter id


@pytest.fixture(scope="module")
def every_reason(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EveryReason]:
    """A worker dead-letters one message of each reason, then stops; the tool works on them."""
    env = BridgeEnv.create(
        tmp_path_factory.mktemp("dlq-cli"), rabbitmq_url=rabbitmq_url, max_message_bytes=MAX_BYTES
    )
    try:
        poison_consents(env)
        schema_violation, markers = marked_schema_violation()
        worker = env.start_worker()
        env.publish(*bad_bodies(schema_violation).values(), routing_key="crime.recorded")
        env.publish(poisoned_consent())
        env.wait_dead_letters(len(REASONS), timeout=60)
        assert worker.terminate() == 0
        ids = {letter["reason"]: letter["id"] for letter in dead_letters(env)}
        yield EveryReason(env=env, markers=markers, ids=ids)
    finally:
        env.close()


def test_list_shows_one_dead_letter_per_reason_with_the_right_reason(
    every_reason: EveryReason,
) -> None:
    letters = dead_letters(every_reason.env)

    assert sorted(letter["reason"] for letter in letters) == sorted(REASONS)


def test_list_gives_routing_key_type_attempts_and_size(every_reason: EveryReason) -> None:
    letters = {letter["reason"]: letter for letter in dead_letters(every_reason.env)}

    assert letters["processing_error"]["original_routing_key"] == "consent.updated"
    assert letters["processing_error"]["event_type"] == "consent.updated"
    assert letters["processing_error"]["attempts"] == 5
    assert letters["unknown_type"]["event_type"] is None  # not the contract's: not shown
    assert letters["invalid_json"]["event_type"] is None
    assert letters["too_large"]["size"] > MAX_BYTES


def test_the_list_table_ends_with_counts_by_reason(every_reason: EveryReason) -> None:
    result = cli(every_reason.env, "dlq", "list")

    footer = result.stdout.strip().splitlines()[-1]
    assert footer.startswith(f"{len(REASONS)} dead letters: ")
    assert all(f"{reason} 1" in footer for reason in REASONS)


def test_list_filters_by_reason(every_reason: EveryReason) -> None:
    letters = dead_letters(every_reason.env, "--reason", "too_large")

    assert [letter["reason"] for letter in letters] == ["too_large"]


def test_list_shows_no_personal_data(every_reason: EveryReason) -> None:
    table, as_json = (
        cli(every_reason.env, "dlq", "list"),
        cli(every_reason.env, "dlq", "list", "--json"),
    )

    assert MARKER not in table.stdout + table.stderr + as_json.stdout + as_json.stderr


def test_show_masks_every_personal_field(every_reason: EveryReason) -> None:
    result = cli(every_reason.env, "dlq", "show", every_reason.ids["schema_violation"])

    assert result.returncode == 0, result.stderr
    assert [m for m in every_reason.markers if m in result.stdout + result.stderr] == []
    assert "[masked: personal]" in result.stdout
    assert "data.victims[0].date_of_birth" in result.stdout  # the PII-free detail


def test_show_of_every_reason_holds_no_marker(every_reason: EveryReason) -> None:
    shown = {
        reason: cli(every_reason.env, "dlq", "show", letter_id)
        for reason, letter_id in every_reason.ids.items()
    }

    assert {reason: r.returncode for reason, r in shown.items()} == dict.fromkeys(shown, 0)
    assert [reason for reason, r in shown.items() if MARKER in r.stdout + r.stderr] == []


def test_show_of_a_body_that_is_not_json_gives_only_its_size_and_hash(
    every_reason: EveryReason,
) -> None:
    result = cli(every_reason.env, "dlq", "show", every_reason.ids["invalid_encoding"])

    assert "not UTF-8 JSON" in result.stdout
    assert re.search(r"sha256 [0-9a-f]{64}", result.stdout)
    assert MARKER not in result.stdout


def test_reveal_without_a_reason_is_refused_and_shows_nothing(every_reason: EveryReason) -> None:
    letter_id = every_reason.ids["schema_violation"]
    before = len(audit_records(every_reason.env, "--message-id", letter_id))

    result = cli(every_reason.env, "dlq", "show", letter_id, "--reveal")

    assert result.returncode == 2
    assert MARKER not in result.stdout + result.stderr
    assert len(audit_records(every_reason.env, "--message-id", letter_id)) == before


def test_reveal_with_a_reason_shows_every_personal_field_and_is_audited(
    every_reason: EveryReason,
) -> None:
    letter_id = every_reason.ids["schema_violation"]

    result = cli(
        every_reason.env, "dlq", "show", letter_id, "--reveal", "--reason", "INC-991 fix data"
    )

    assert result.returncode == 0, result.stderr
    assert [m for m in every_reason.markers if m not in result.stdout] == []
    [record] = audit_records(every_reason.env, "--action", "dead_letter_revealed")
    assert record["message_id"] == letter_id
    assert record["detail"] == "INC-991 fix data"
    assert record["actor"]
    assert record["victim_id"]
    assert record["case_ref"]


def test_the_audit_output_holds_no_personal_data(every_reason: EveryReason) -> None:
    result = cli(every_reason.env, "audit")

    assert result.returncode == 0, result.stderr
    assert MARKER not in result.stdout + result.stderr


def test_listing_and_showing_leave_every_dead_letter_in_place(every_reason: EveryReason) -> None:
    cli(every_reason.env, "dlq", "show", every_reason.ids["too_large"])

    assert every_reason.env.depth(every_reason.env.topology.dead_letter_queue) == len(REASONS)


# --- replay after a fix, exactly once ----------------------------------------------------------


@dataclass(frozen=True)
class ReplayRun:
    first: subprocess.CompletedProcess[str]
    processed_after_first: int
    referrals_after_first: int
    second: subprocess.CompletedProcess[str]
    processed_after_second: int
    referrals_after_second: int
    duplicates_after_second: int
    by_reason: subprocess.CompletedProcess[str]
    processed_after_by_reason: int
    left_in_queue: int


@pytest.fixture(scope="module")
def replay_run(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplayRun]:
    """Too large twice (the same event) and a processing error; fix both; replay one at a time."""
    env = BridgeEnv.create(
        tmp_path_factory.mktemp("dlq-replay"), rabbitmq_url=rabbitmq_url, max_message_bytes=1024
    )
    try:
        poison_consents(env)
        event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"), consent="given")
        worker = env.start_worker()
        env.publish(event)
        env.wait_dead_letters(1)
        env.publish(event)  # the same event again, dead-lettered a moment later
        env.publish(poisoned_consent())
        env.wait_dead_letters(3, timeout=60)
        worker.terminate()

        set_max_message_bytes(env, 1024 * 1024)
        cure_consents(env)
        env.start_worker("fixed")
        first_id, second_id = [
            letter["id"] for letter in dead_letters(env, "--reason", "too_large")
        ]

        first = cli(env, "dlq", "replay", first_id)
        env.wait_settled(1)
        processed_after_first = env.processed_count()
        referrals_after_first = len(env.take_all(env.collect_referrals))

        second = cli(env, "dlq", "replay", second_id)
        assert wait_until(lambda: processed_outcomes(env, "duplicate") >= 1, timeout=30)
        env.wait_settled(1)
        processed_after_second = env.processed_count()
        referrals_after_second = len(env.take_all(env.collect_referrals))

        by_reason = cli(env, "dlq", "replay", "--reason", "processing_error")
        env.wait_settled(2)
        yield ReplayRun(
            first=first,
            processed_after_first=processed_after_first,
            referrals_after_first=referrals_after_first,
            second=second,
            processed_after_second=processed_after_second,
            referrals_after_second=referrals_after_second,
            duplicates_after_second=processed_outcomes(env, "duplicate"),
            by_reason=by_reason,
            processed_after_by_reason=env.processed_count(),
            left_in_queue=env.depth(env.topology.dead_letter_queue),
        )
    finally:
        env.close()


def test_a_replay_after_the_fix_processes_the_event_once(replay_run: ReplayRun) -> None:
    assert replay_run.first.returncode == 0, replay_run.first.stderr
    assert (replay_run.processed_after_first, replay_run.referrals_after_first) == (1, 1)


def test_replaying_the_same_event_again_is_a_duplicate_with_no_new_effect(
    replay_run: ReplayRun,
) -> None:
    assert replay_run.second.returncode == 0, replay_run.second.stderr
    assert replay_run.duplicates_after_second == 1
    assert (replay_run.processed_after_second, replay_run.referrals_after_second) == (1, 0)


def test_a_processing_error_replayed_by_reason_after_the_fix_is_processed(
    replay_run: ReplayRun,
) -> None:
    assert replay_run.by_reason.returncode == 0, replay_run.by_reason.stderr
    assert replay_run.processed_after_by_reason == 2


def test_replayed_dead_letters_leave_the_queue(replay_run: ReplayRun) -> None:
    assert replay_run.left_in_queue == 0


# --- killed in the middle of a bulk replay -----------------------------------------------------

BULK = 1500
KILL_HEADERS: dict[str, str | int] = {
    "x-rb-reason": "too_large",
    "x-rb-detail": "body is too large",
    "x-rb-failed-at": "2026-11-23T10:00:00.000Z",
    "x-rb-attempts": 1,
}


def test_a_bulk_replay_killed_midway_loses_no_message(make_bridge: BridgeFactory) -> None:
    """SIGKILL while replaying: every message is still dead-lettered, replayed, or both."""
    env: BridgeEnv = make_bridge()
    expected = {f"kill-{number:04d}" for number in range(BULK)}
    for message_id in sorted(expected):
        env.publisher.publish_dead_letter(
            json.dumps({"id": message_id}).encode(),
            KILL_HEADERS,
            "crime.recorded",
            message_id=message_id,
        )
    tool = subprocess.Popen(
        [*cli_command(), "--log-json", "dlq", "replay", "--all", "--config", str(env.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=worker_environment(),
    )
    try:
        started = wait_until(
            lambda: env.depth(env.topology.work_queue) >= 50 or tool.poll() is not None,
            timeout=60,
            interval=0.01,
        )
        tool.send_signal(signal.SIGKILL)
    finally:
        tool.wait(timeout=30)
    assert started
    assert tool.returncode == -signal.SIGKILL, "the replay ended before the kill"
    # The broker requeues the killed tool's unacked messages once it notices the closed socket.
    assert wait_until(
        lambda: (
            env.depth(env.topology.dead_letter_queue) + env.depth(env.topology.work_queue) >= BULK
        ),
        timeout=30,
    )
    time.sleep(0.5)

    still_dead = {m.message_id for m in env.take_all(env.topology.dead_letter_queue)}
    replayed = {m.message_id for m in env.take_all(env.topology.work_queue)}

    assert still_dead, "the kill came after the replay had finished"
    assert replayed, "the kill came before anything was replayed"
    assert expected - (still_dead | replayed) == set()


# --- the embedded broker, end to end ------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedBridge:
    """A bridge on the embedded broker under a tmp dir: config, keys and a worker of its own."""

    root: Path
    config: Path
    settings: Settings

    @classmethod
    def create(cls, root: Path, *, max_message_bytes: int) -> EmbeddedBridge:
        keys = root / "keys"
        for kid in (BRIDGE_KID, *(provider_kid(p) for p in PROVIDERS)):
            generate_key_pair(kid, keys)
        providers = "".join(
            f'\n[providers.{p}]\npublic_keys = "keys/{provider_kid(p)}.public.jwk"\n'
            for p in PROVIDERS
        )
        config = root / "referral-bridge.toml"
        config.write_text(
            "[bridge]\n"
            'data_dir = "data"\n'
            f"policy_file = {json.dumps(str(POLICY))}\n"
            f"max_message_bytes = {max_message_bytes}\n"
            "scheduler_interval_seconds = 1.0\n\n"
            f'[keys]\nsigning_key = "keys/{BRIDGE_KID}.private.jwk"\n' + providers,
            encoding="utf-8",
        )
        return cls(root=root, config=config, settings=load_settings(config, env={}))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli_command(), "--log-json", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            errors="replace",
            env=worker_environment(),
            timeout=120,
            check=False,
        )

    def publish(self, body: bytes, routing_key: str = "crime.recorded") -> None:
        with Publisher(broker_of(self.settings), topology_of(self.settings)) as publisher:
            publisher.publish_inbound(body, routing_key)

    def dead_depth(self) -> int:
        spec, topology = broker_of(self.settings), topology_of(self.settings)
        return queue_depth(spec, topology.dead_letter_queue)

    def processed(self) -> int:
        engine = create_engine(self.settings.ledger_url)
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(
                        select(func.count()).select_from(processed_events)
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def worker(self, name: str) -> Worker:
        return Worker(config=self.config, log_path=self.root / f"{name}.log").start()


@dataclass(frozen=True)
class EmbeddedRun:
    listed: list[dict[str, Any]]
    shown: subprocess.CompletedProcess[str]
    replayed: subprocess.CompletedProcess[str]
    processed_after_replay: int
    purged: subprocess.CompletedProcess[str]
    dead_after_purge: int
    purge_audit: list[dict[str, Any]]


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRun]:
    """Too large on a 1 KiB limit; raise it; list, show, replay; then purge an invalid JSON."""
    bridge = EmbeddedBridge.create(tmp_path_factory.mktemp("dlq-embedded"), max_message_bytes=1024)
    event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"), consent="given")
    worker = bridge.worker("small")
    try:
        bridge.publish(encode(event))
        assert wait_until(lambda: bridge.dead_depth() == 1, timeout=30)
    finally:
        worker.terminate()
    config = bridge.config.read_text(encoding="utf-8")
    bridge.config.write_text(config.replace("= 1024\n", "= 1048576\n"), encoding="utf-8")
    worker = bridge.worker("fixed")
    try:
        listed = json.loads(bridge.cli("dlq", "list", "--json").stdout)["dead_letters"]
        shown = bridge.cli("dlq", "show", listed[0]["id"])
        replayed = bridge.cli("dlq", "replay", listed[0]["id"])
        assert wait_until(lambda: bridge.processed() >= 1, timeout=30)
        processed = bridge.processed()
        bridge.publish(b'{"name": "' + MARKER.encode() + b'",')
        assert wait_until(lambda: bridge.dead_depth() == 1, timeout=30)
        [bad] = json.loads(bridge.cli("dlq", "list", "--json").stdout)["dead_letters"]
        purged = bridge.cli("dlq", "purge", bad["id"], "--yes")
        audit = json.loads(bridge.cli("audit", "--action", "dead_letter_purged", "--json").stdout)
        yield EmbeddedRun(
            listed=listed,
            shown=shown,
            replayed=replayed,
            processed_after_replay=processed,
            purged=purged,
            dead_after_purge=bridge.dead_depth(),
            purge_audit=audit["records"],
        )
    finally:
        worker.terminate()


def test_on_the_embedded_broker_list_shows_the_dead_letter(embedded_run: EmbeddedRun) -> None:
    assert [(d["reason"], d["event_type"]) for d in embedded_run.listed] == [
        ("too_large", "crime.recorded")
    ]


def test_on_the_embedded_broker_show_masks_the_victims_name(embedded_run: EmbeddedRun) -> None:
    family = load_sample("crime-recorded-burglary.json")["data"]["victims"][0]["name"]["family"]

    assert embedded_run.shown.returncode == 0, embedded_run.shown.stderr
    assert family not in embedded_run.shown.stdout
    assert "[masked: personal]" in embedded_run.shown.stdout


def test_on_the_embedded_broker_a_replay_after_the_fix_is_processed(
    embedded_run: EmbeddedRun,
) -> None:
    assert embedded_run.replayed.returncode == 0, embedded_run.replayed.stderr
    assert embedded_run.processed_after_replay == 1


def test_on_the_embedded_broker_a_purge_removes_the_dead_letter_and_is_audited(
    embedded_run: EmbeddedRun,
) -> None:
    assert embedded_run.purged.returncode == 0, embedded_run.purged.stderr
    assert embedded_run.dead_after_purge == 0
    [record] = embedded_run.purge_audit
    assert record["detail"] == "reason code invalid_json"
