"""Fault runs: real workers, a steady stream of events, faults injected on a schedule.

Each run publishes opt-out burglaries (one referral each, with a known id) and a few messages
that must be dead-lettered, at a steady rate, while a scenario hurts the workers' broker or
ledger connections or the workers themselves. Afterwards it counts what reached the provider's
queue against what should have: nothing may be lost, nothing valid dead-lettered; repeats are
allowed (at-least-once) and counted. `make test` runs the short version; `make chaos` the long
one (RB_FAULT_SCALE=long), and prints the results table that docs/reliability.md records.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from referral_bridge.core import ids
from tests.e2e.helpers import LANCASHIRE, BridgeEnv, Worker, crime_event, encode
from tests.waiting import wait_until

LONG = os.environ.get("RB_FAULT_SCALE") == "long"
#: Events of a run, the rate they are published at, and the faults injected meanwhile.
EVENTS = 3000 if LONG else 160
RATE_PER_S = 60.0 if LONG else 40.0
FAULTS = 12 if LONG else 2
BAD = 4


@dataclass
class FaultResult:
    """One row of the results table."""

    scenario: str
    events_in: int = 0
    referrals_expected: int = 0
    referrals_out: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    #: Bad messages found among the dead letters (each counted once).
    dead_lettered: int = 0
    #: Further copies of a dead letter: one whose ack was lost with its connection comes again
    #: and is dead-lettered again (at least once, as for referrals).
    dead_letter_repeats: int = 0
    #: Valid events among the dead letters: must be none.
    wrongly_dead_lettered: int = 0
    bad_in: int = 0
    #: Longest time from the end of a fault to the next event recorded as processed.
    recovery_s: float = 0.0
    seconds: float = 0.0
    exit_codes: list[int] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "events in": self.events_in,
            "referrals out": self.referrals_out,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "dead-lettered": f"{self.dead_lettered}/{self.bad_in}"
            + (f" (+{self.dead_letter_repeats} repeat)" if self.dead_letter_repeats else "")
            + (f", {self.wrongly_dead_lettered} VALID" if self.wrongly_dead_lettered else ""),
            "recovery s": round(self.recovery_s, 2),
            "run s": round(self.seconds, 1),
        }


#: Rows collected in this test session, printed by tests/faults/conftest.py at the end.
RESULTS: list[FaultResult] = []

Fault = Callable[[int], None]
"""Injects fault number n (0, 1, ...) and returns once it has ended."""


def bad_message(n: int) -> bytes:
    """Bad message n: invalid JSON, told apart from the others by its number."""
    return b"{not json %d" % n


def workload(events: int = EVENTS) -> tuple[list[tuple[str, bytes]], set[str]]:
    """Burglaries (each referred once) with a few bad messages among them."""
    reported = datetime.now(UTC) - timedelta(hours=1)
    tag = uuid.uuid4().hex[:6].upper()
    items: list[tuple[str, bytes]] = []
    expected: set[str] = set()
    for n in range(events - BAD):
        crime_ref, victim_id = f"F{tag}-{n:06d}", f"V{tag}-{n:06d}"
        expected.add(ids.referral_id(LANCASHIRE, crime_ref, victim_id))
        items.append(
            (
                "crime.recorded",
                encode(crime_event(crime_ref=crime_ref, victim_id=victim_id, reported_at=reported)),
            )
        )
    for n in range(BAD):
        items.insert((n + 1) * len(items) // (BAD + 1), ("crime.recorded", bad_message(n)))
    return items, expected


def run_with_faults(
    scenario: str,
    env: BridgeEnv,
    workers: list[Worker],
    fault: Fault,
    *,
    events: int = EVENTS,
    rate: float = RATE_PER_S,
    faults: int = FAULTS,
    reconnected: str | None = None,
    settle_timeout: float = 600.0 if LONG else 240.0,
) -> FaultResult:
    """Publish `events` at `rate` a second, inject `faults` faults evenly meanwhile, settle.

    A fault that lasts a while needs a run long enough for all of them to end while events are
    still arriving, or its recovery could not be timed. `reconnected`: the log event that says
    a worker is working again after a fault (see `_recovery_after`).
    """
    result = FaultResult(scenario=scenario, bad_in=BAD)
    items, expected = workload(events)
    result.events_in, result.referrals_expected = len(items), len(expected)
    for worker in workers:
        worker.start()
    # The fault clock starts once every worker is consuming: a fault during start-up makes it
    # exit (systemd restarts it), which is start-up's contract, not what these runs measure.
    ready = wait_until(lambda: all(_ready(w) for w in workers), timeout=120, interval=0.1)
    assert ready, f"{scenario}: workers not ready; logs: {[str(w.log_path) for w in workers]}"
    started = time.monotonic()
    publishing = threading.Thread(target=_publish_steadily, args=(env, items, rate), daemon=True)
    publishing.start()
    span = len(items) / rate
    recoveries: list[float] = []
    for n in range(faults):
        _sleep_until(started + span * (n + 1) / (faults + 1))
        recoveries.append(_recovery_after(env, workers, fault, n, reconnected=reconnected))
    publishing.join(timeout=settle_timeout)
    settled = wait_until(
        lambda: (
            env.processed_count() >= len(items) - BAD
            and env.depth(env.topology.work_queue) == 0
            and env.unpublished_count() == 0
            and env.depth(env.topology.dead_letter_queue) >= BAD
        ),
        timeout=settle_timeout,
        interval=0.25,
    )
    result.exit_codes = [w.terminate() if w.running else -1 for w in workers]
    result.seconds = time.monotonic() - started
    result.recovery_s = max(recoveries, default=0.0)
    wire = Counter(str(r.message_id) for r in env.take_all(env.collect_referrals))
    result.referrals_out = len(set(wire) & expected)
    result.lost = len(expected - set(wire))
    result.duplicated = sum(count - 1 for count in wire.values())
    result.unexpected = len(set(wire) - expected)
    dead = Counter(r.body for r in env.take_all(env.topology.dead_letter_queue))
    bad = {bad_message(n) for n in range(BAD)}
    result.dead_lettered = len(set(dead) & bad)
    result.dead_letter_repeats = sum(count - 1 for body, count in dead.items() if body in bad)
    result.wrongly_dead_lettered = sum(count for body, count in dead.items() if body not in bad)
    RESULTS.append(result)
    assert settled, (
        f"{scenario}: not settled: processed {env.processed_count()} of {len(items) - BAD}, "
        f"work queue {env.depth(env.topology.work_queue)}, unpublished "
        f"{env.unpublished_count()}; logs: {[str(w.log_path) for w in workers]}"
    )
    return result


def _ready(worker: Worker) -> bool:
    return logged(worker, "worker.ready") > 0


def logged(worker: Worker, event: str, **fields: object) -> int:
    """How many of the worker's log lines are `event` with these field values."""
    return sum(
        1
        for line in worker.log_events()
        if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
    )


def _recovery_after(
    env: BridgeEnv, workers: list[Worker], fault: Fault, n: int, *, reconnected: str | None
) -> float:
    """Inject fault n; seconds from its end until the next event is recorded as processed.

    With `reconnected`, that event must come after a worker logged it anew: after a pause, the
    messages a worker already held can still be recorded on a connection that is about to be
    found dead, which is no recovery.
    """
    logged_before = sum(logged(w, reconnected) for w in workers) if reconnected else 0
    fault(n)
    ended = time.monotonic()
    if reconnected is not None:
        wait_until(
            lambda: sum(logged(w, reconnected) for w in workers) > logged_before,
            timeout=60,
            interval=0.1,
        )
    before = env.processed_count()
    wait_until(lambda: env.processed_count() > before, timeout=60, interval=0.05)
    return time.monotonic() - ended


def _publish_steadily(env: BridgeEnv, items: list[tuple[str, bytes]], rate: float) -> None:
    started = time.monotonic()
    for n, (key, body) in enumerate(items):
        _sleep_until(started + n / rate)
        env.publisher.publish_inbound(body, key)


def lasting(seconds: float) -> None:
    """Keep a fault in place this long (its duration, not a wait for anything to happen)."""
    _sleep_until(time.monotonic() + seconds)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def assert_nothing_lost(result: FaultResult) -> None:
    assert (result.lost, result.unexpected) == (0, 0), result.row()
    assert result.referrals_out == result.referrals_expected, result.row()
    assert (result.dead_lettered, result.wrongly_dead_lettered) == (BAD, 0), result.row()
    assert set(result.exit_codes) == {0}, result.row()
