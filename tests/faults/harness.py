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
    dead_lettered: int = 0
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
            "dead-lettered": f"{self.dead_lettered}/{self.bad_in}",
            "recovery s": round(self.recovery_s, 2),
            "run s": round(self.seconds, 1),
        }


#: Rows collected in this test session, printed by tests/faults/conftest.py at the end.
RESULTS: list[FaultResult] = []

Fault = Callable[[int], None]
"""Injects fault number n (0, 1, ...) and returns once it has ended."""


def workload() -> tuple[list[tuple[str, bytes]], set[str]]:
    """Burglaries (each referred once) with a few bad messages among them."""
    reported = datetime.now(UTC) - timedelta(hours=1)
    tag = uuid.uuid4().hex[:6].upper()
    items: list[tuple[str, bytes]] = []
    expected: set[str] = set()
    for n in range(EVENTS - BAD):
        crime_ref, victim_id = f"F{tag}-{n:06d}", f"V{tag}-{n:06d}"
        expected.add(ids.referral_id(LANCASHIRE, crime_ref, victim_id))
        items.append(
            (
                "crime.recorded",
                encode(crime_event(crime_ref=crime_ref, victim_id=victim_id, reported_at=reported)),
            )
        )
    for n in range(BAD):
        items.insert((n + 1) * len(items) // (BAD + 1), ("crime.recorded", b"{not json"))
    return items, expected


def run_with_faults(
    scenario: str,
    env: BridgeEnv,
    workers: list[Worker],
    fault: Fault,
    *,
    settle_timeout: float = 600.0 if LONG else 240.0,
) -> FaultResult:
    """Publish the workload at a steady rate, inject FAULTS faults evenly meanwhile, settle."""
    result = FaultResult(scenario=scenario, bad_in=BAD)
    items, expected = workload()
    result.events_in, result.referrals_expected = len(items), len(expected)
    for worker in workers:
        worker.start()
    # The fault clock starts once every worker is consuming: a fault during start-up makes it
    # exit (systemd restarts it), which is start-up's contract, not what these runs measure.
    ready = wait_until(lambda: all(_ready(w) for w in workers), timeout=120, interval=0.1)
    assert ready, f"{scenario}: workers not ready; logs: {[str(w.log_path) for w in workers]}"
    started = time.monotonic()
    publishing = threading.Thread(target=_publish_steadily, args=(env, items), daemon=True)
    publishing.start()
    span = len(items) / RATE_PER_S
    recoveries: list[float] = []
    for n in range(FAULTS):
        _sleep_until(started + span * (n + 1) / (FAULTS + 1))
        recoveries.append(_recovery_after(env, fault, n))
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
    result.dead_lettered = env.depth(env.topology.dead_letter_queue)
    RESULTS.append(result)
    assert settled, (
        f"{scenario}: not settled: processed {env.processed_count()} of {len(items) - BAD}, "
        f"work queue {env.depth(env.topology.work_queue)}, unpublished "
        f"{env.unpublished_count()}; logs: {[str(w.log_path) for w in workers]}"
    )
    return result


def _ready(worker: Worker) -> bool:
    return any(line.get("event") == "worker.ready" for line in worker.log_events())


def _recovery_after(env: BridgeEnv, fault: Fault, n: int) -> float:
    """Inject fault n; seconds from its end until the next event is recorded as processed."""
    before = env.processed_count()
    fault(n)
    ended = time.monotonic()
    wait_until(lambda: env.processed_count() > before, timeout=60, interval=0.05)
    return time.monotonic() - ended


def _publish_steadily(env: BridgeEnv, items: list[tuple[str, bytes]]) -> None:
    started = time.monotonic()
    for n, (key, body) in enumerate(items):
        _sleep_until(started + n / RATE_PER_S)
        env.publisher.publish_inbound(body, key)


def lasting(seconds: float) -> None:
    """Keep a fault in place this long (its duration, not a wait for anything to happen)."""
    _sleep_until(time.monotonic() + seconds)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)
