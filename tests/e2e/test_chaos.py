"""The chaos run: 800 events (2,000 under `make chaos`), a worker SIGKILLed at random moments,
and the same outcome as a calm in-process reference run over the same events.

One module-scoped run feeds every test below; each test checks one property of its outcome.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from sqlalchemy import select

from referral_bridge import bootstrap
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.delivery import AmqpRoute, DeliveryEngine
from referral_bridge.devtools.simulate import MARKER_DATE_OF_BIRTH, SimulatedEvent, Simulator
from referral_bridge.ledger.schema import outbox
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.service.outbox import Routes
from referral_bridge.settings import load_settings
from referral_bridge.transport import Ack, DeadLetter, InboundMessage, Verdict
from tests.e2e.helpers import BridgeEnv, Received, Worker
from tests.fakes import RecordingPublisher
from tests.faults.harness import LONG
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20261126
EVENTS = 2000 if LONG else 800
BAD = 6
KILLS = 3
#: Every personal field of the simulated victims carries this marker (and MARKER_DATE_OF_BIRTH).
MARKER = "CHAOSMARKERQ"


def chaos_messages() -> tuple[list[SimulatedEvent], list[SimulatedEvent]]:
    """EVENTS simulated events in marker mode, with a handful of bad messages spread among them;
    returns (all messages in publishing order, the bad ones).

    Cases are reported at most 6 hours ago, so no hold ends while the test runs and the outcome
    does not depend on when each event happens to be processed.
    """
    simulator = Simulator(
        seed=SEED, now=datetime.now(UTC), marker=MARKER, max_age=timedelta(hours=6)
    )
    messages = list(islice(simulator.cases(EVENTS), EVENTS))
    bad = list(simulator.bad_messages(BAD))
    for n, message in enumerate(bad):
        messages.insert(150 + n * (EVENTS // BAD), message)
    return messages, bad


@dataclass
class ChaosRun:
    env: BridgeEnv
    messages: list[SimulatedEvent]
    bad: list[SimulatedEvent]
    distinct_valid: int
    workers: list[Worker]
    processed_at_start: list[int] = field(default_factory=list)
    processed_at_kill: list[int] = field(default_factory=list)
    kill_codes: list[int] = field(default_factory=list)
    final_exit_code: int | None = None
    received: list[Received] = field(default_factory=list)
    dead: list[Received] = field(default_factory=list)
    reference_outbox: set[str] = field(default_factory=set)
    reference_published: list[str] = field(default_factory=list)
    reference_verdicts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)


def reached(env: BridgeEnv, processed: int) -> bool:
    return env.processed_count() >= processed


def reference_run(
    config: Path, data_dir: Path, messages: list[SimulatedEvent], run: ChaosRun
) -> None:
    """The same events, in order, through a ReferralService built as bootstrap.build builds it,
    on a fresh SQLite ledger and with a publisher that only records."""
    settings = load_settings(config, env={"REFERRAL_BRIDGE_DATA_DIR": str(data_dir)})
    bridge = bootstrap.build(settings)
    recorder = RecordingPublisher()
    metrics = BridgeMetrics()
    service = bootstrap.service_layer(
        ledger=bridge.ledger,
        policy=bridge.policy,
        calendar=WorkingDayCalendar(),
        sealer=bootstrap.ProviderSealer(bridge.keys.signing_key, bridge.keys.provider_keys),
        routes=Routes(
            referrals_exchange=bridge.topology.referrals_exchange,
            tasks_exchange=bridge.topology.tasks_exchange,
        ),
        source=settings.bridge.source,
        clock=bootstrap.utc_now,
        metrics=metrics,
        delivery=lambda fallbacks: DeliveryEngine(
            ledger=bridge.ledger,
            default_route=AmqpRoute(recorder, name="amqp-force"),
            clock=bootstrap.utc_now,
            metrics=metrics,
            fallbacks=fallbacks,
        ),
        max_message_bytes=settings.bridge.max_message_bytes,
        max_processing_attempts=settings.bridge.max_processing_attempts,
    ).service
    try:
        # capture_logs keeps the in-process service's log events off the test's output.
        with structlog.testing.capture_logs():
            for n, message in enumerate(messages):
                verdict: Verdict = service.handle(
                    InboundMessage(
                        body=message.body,
                        headers={},
                        routing_key=message.routing_key,
                        redelivered=False,
                        delivery_tag=n,
                    )
                )
                run.reference_verdicts[type(verdict).__name__] += 1
        with bridge.ledger.engine.connect() as connection:
            run.reference_outbox = set(connection.execute(select(outbox.c.message_id)).scalars())
        run.reference_published = [message.message_id for message in recorder.sent]
    finally:
        bridge.close()


@pytest.fixture(scope="module")
def chaos_run(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosRun]:
    root = tmp_path_factory.mktemp("chaos")
    env = BridgeEnv.create(root / "bridge", rabbitmq_url=rabbitmq_url)
    messages, bad = chaos_messages()
    bad_bodies = {m.body for m in bad}
    valid = {json.loads(m.body)["id"] for m in messages if m.body not in bad_bodies}
    run = ChaosRun(
        env=env, messages=messages, bad=bad, distinct_valid=len(valid), workers=env.workers
    )
    rng = random.Random(SEED)
    try:
        started = time.monotonic()
        env.publish_raw((m.routing_key, m.body) for m in messages)
        run.seconds["publish"] = time.monotonic() - started

        started = time.monotonic()
        for n in range(KILLS):
            # Each worker gets a random stretch of new events (10-20 % of the run) before its
            # SIGKILL, plus a random fraction of a second, so every kill lands mid-processing.
            at_start = env.processed_count()
            threshold = max(at_start, 0) + rng.randint(
                run.distinct_valid // 10, run.distinct_valid // 5
            )
            worker = env.start_worker(f"worker-{n}")
            assert wait_until(partial(reached, env, threshold), timeout=180), (
                f"worker {n} did not reach {threshold} processed events; see {worker.log_path}"
            )
            time.sleep(rng.uniform(0.0, 0.4))
            run.kill_codes.append(worker.kill())
            run.processed_at_start.append(at_start)
            run.processed_at_kill.append(env.processed_count())
        final = env.start_worker(f"worker-{KILLS}")
        env.wait_settled(run.distinct_valid, timeout=300)
        env.wait_dead_letters(BAD)
        run.final_exit_code = final.terminate()
        run.seconds["workers"] = time.monotonic() - started

        run.received = env.take_all(env.collect_referrals) + env.take_all(env.collect_tasks)
        run.dead = env.take_all(env.topology.dead_letter_queue)

        started = time.monotonic()
        reference_run(env.config, root / "reference", messages, run)
        run.seconds["reference"] = time.monotonic() - started
        yield run
    finally:
        env.close()


def test_the_worker_was_killed_three_times_while_processing(chaos_run: ChaosRun) -> None:
    assert chaos_run.kill_codes == [-9] * KILLS
    assert all(n < chaos_run.distinct_valid for n in chaos_run.processed_at_kill)
    stretches = zip(chaos_run.processed_at_start, chaos_run.processed_at_kill, strict=True)
    assert all(start < kill for start, kill in stretches)


def test_the_last_worker_stops_on_sigterm_with_exit_code_zero(chaos_run: ChaosRun) -> None:
    assert chaos_run.final_exit_code == 0


def test_the_work_queue_is_empty_afterwards(chaos_run: ChaosRun) -> None:
    assert chaos_run.env.depth(chaos_run.env.topology.work_queue) == 0


def test_every_distinct_valid_event_is_processed_once(chaos_run: ChaosRun) -> None:
    assert chaos_run.distinct_valid > EVENTS * 9 // 10
    assert chaos_run.env.processed_count() == chaos_run.distinct_valid


def test_the_outbox_has_no_unpublished_rows(chaos_run: ChaosRun) -> None:
    assert chaos_run.env.unpublished_count() == 0


def test_the_messages_on_the_wire_are_exactly_the_outbox(
    chaos_run: ChaosRun, record_property: Any
) -> None:
    wire = Counter(r.message_id for r in chaos_run.received)
    duplicates = sum(wire.values()) - len(wire)
    # At-least-once allows repeats on the wire (same id, so providers drop them): report them.
    record_property("wire_messages", sum(wire.values()))
    record_property("wire_duplicates", duplicates)
    print(f"chaos: {sum(wire.values())} messages on the wire, {duplicates} duplicates")
    rows = chaos_run.env.outbox_rows()
    assert set(wire) == {row.message_id for row in rows if row.published_at is not None}
    # What never went out was cancelled before any attempt (a withdrawal, or a cancelled crime,
    # committed before its referral's first attempt; group commit makes that common): the
    # provider never had it, rightly.
    unsent = [row for row in rows if row.published_at is None]
    assert all((row.last_error or "").startswith("cancelled:") for row in unsent)
    assert len(unsent) < len(rows) // 2


def test_no_victim_is_referred_twice_to_a_provider(chaos_run: ChaosRun) -> None:
    referrals = [row for row in chaos_run.env.action_rows() if row.action == "referral"]
    per_victim = Counter((row.victim_id, row.provider) for row in referrals)
    assert referrals
    assert max(per_victim.values()) == 1


def test_the_outbox_equals_that_of_a_calm_reference_run(chaos_run: ChaosRun) -> None:
    assert chaos_run.reference_verdicts == Counter(
        {Ack.__name__: len(chaos_run.messages) - BAD, DeadLetter.__name__: BAD}
    )
    assert set(chaos_run.reference_published) == chaos_run.reference_outbox
    worker_outbox = {row.message_id for row in chaos_run.env.outbox_rows()}
    assert len(worker_outbox) > EVENTS // 2
    assert worker_outbox == chaos_run.reference_outbox


def test_every_bad_message_is_dead_lettered(chaos_run: ChaosRun) -> None:
    assert {d.body for d in chaos_run.dead} == {m.body for m in chaos_run.bad}


def test_no_worker_log_holds_the_marker_or_the_marker_date_of_birth(chaos_run: ChaosRun) -> None:
    logs = {str(w.log_path): w.log_text() for w in chaos_run.workers}
    assert len(logs) == KILLS + 1
    assert all("event.processed" in text for text in logs.values())
    leaks = [path for path, text in logs.items() if MARKER in text or MARKER_DATE_OF_BIRTH in text]
    assert leaks == []


def test_no_dead_letter_detail_holds_the_marker(chaos_run: ChaosRun) -> None:
    details = [str(d.headers["x-rb-detail"]) for d in chaos_run.dead]
    assert details
    assert not [d for d in details if MARKER in d or MARKER_DATE_OF_BIRTH in d]
