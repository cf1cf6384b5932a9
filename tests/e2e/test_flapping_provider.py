"""A provider that flaps (issue 9, finding 2): down for a moment every few seconds.

The default delivery policy must ride it out: short first circuit openings, parked rows brought
forward as soon as the provider answers again, and no fallback leaflet task for a referral that
is delivered anyway. The short version (run by `make test`) is up 90% of the time in outages
of 1 s every 10 s for 40 s; `make chaos` runs 3 s every 30 s for 10 minutes. Referrals arrive
at a steady 10 a second, on the real clock, in process, with the worker's shape: one thread
handles messages and, every second, runs the scheduler's steps (fallbacks, then due
deliveries). The figures are printed (-s).

Targets at full scale (3 s outages every 30 s): p99 delivery latency under 30 s and no fallback
task for a referral delivered before its deadline. This run asserts the same bounds.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import structlog.testing
from sqlalchemy import select

from referral_bridge.bootstrap import utc_now
from referral_bridge.core import ids
from referral_bridge.delivery import DeliveryEngine, DeliveryPolicy, FallbackIssuer
from referral_bridge.delivery.amqp import AmqpRoute
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.runtime.scheduler import OUTBOX_GRACE
from tests.e2e.test_delivery_fault_run import _RealClock
from tests.fakes import RecordingPublisher, cloudevent, inbound, make_keys, make_layer
from tests.faults.harness import LONG
from tests.integration.test_delivery_helpers import LANCASHIRE, https_route, make_pki, running_inbox
from tests.unit.factories import make_crime, make_victim

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: `make chaos` (RB_FAULT_SCALE=long): the issue's own figures, 3 s down every 30 s, 10 minutes.
PERIOD_S = 30.0 if LONG else 10.0
OUTAGE_S = 3.0 if LONG else 1.0
RUN_S = 600.0 if LONG else 40.0
RATE_PER_S = 10
SCHEDULER_INTERVAL_S = 1.0
#: Bound on the 99th percentile of publish-to-delivered latency, as issue 9 states it.
P99_BOUND_S = 30.0


@dataclass
class FlapRun:
    expected: set[str]
    latencies: list[float]
    fallbacks: int
    accepted: Counter[str] = field(default_factory=Counter)
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def flap_run(tmp_path_factory: pytest.TempPathFactory) -> FlapRun:
    folder = tmp_path_factory.mktemp("flapping")
    pki, keys = make_pki(folder / "pki"), make_keys(folder / "keys")
    ledger = Ledger.open(f"sqlite:///{folder / 'ledger.sqlite3'}")
    started = time.monotonic()
    refused = 0

    def flapping() -> int | None:
        nonlocal refused
        if (time.monotonic() - started) % PERIOD_S >= PERIOD_S - OUTAGE_S:
            refused += 1
            return 503
        return None

    with running_inbox(pki, keys, LANCASHIRE, folder / "inbox.sqlite3") as inbox:
        inbox.faults.chooser = flapping
        publisher = RecordingPublisher()

        def engine(fallbacks: FallbackIssuer, metrics: BridgeMetrics) -> DeliveryEngine:
            return DeliveryEngine(
                ledger=ledger,
                default_route=AmqpRoute(publisher),
                routes={LANCASHIRE: https_route(pki, LANCASHIRE, inbox.url)},
                policy=DeliveryPolicy(),  # the shipped defaults are what is under test
                clock=utc_now,
                metrics=metrics,
                fallbacks=fallbacks,
            )

        bridge = make_layer(
            ledger=ledger,
            sealer=keys.sealer(),
            publisher=publisher,
            clock=_RealClock(),
            delivery=engine,
        )
        service = bridge.service
        expected: set[str] = set()
        fallbacks = 0
        next_tick = started
        n = 0
        with structlog.testing.capture_logs() as logs:
            while time.monotonic() - started < RUN_S + 180:  # ends once all are delivered
                now = time.monotonic()
                if now - started < RUN_S and n < (now - started) * RATE_PER_S:
                    crime_ref, victim = f"LC-26-{n:07d}", make_victim(f"P-{n:05d}")
                    expected.add(ids.referral_id(LANCASHIRE, crime_ref, victim.victim_id))
                    # Reported long ago: the deadline has passed, so a parked referral is
                    # "overdue" at once; only a real risk may give the officer a task.
                    service.handle(
                        inbound(
                            cloudevent(
                                make_crime(victim, crime_ref=crime_ref),
                                event_type="crime.recorded",
                            )
                        )
                    )
                    n += 1
                # The worker's loop tick: the scheduler runs on time however busy the queue is.
                if now >= next_tick:
                    next_tick = now + SCHEDULER_INTERVAL_S
                    fallbacks += bridge.scheduled.issue_overdue_fallbacks()
                    bridge.scheduled.flush(older_than=OUTBOX_GRACE)
                if now - started >= RUN_S and not ledger.deliveries(state="undelivered", limit=1):
                    break
                if n >= (time.monotonic() - started) * RATE_PER_S:
                    time.sleep(0.01)
        with ledger.engine.connect() as connection:
            rows = connection.execute(
                select(t.outbox.c.created_at, t.outbox.c.published_at).where(
                    t.outbox.c.kind == "referral"
                )
            ).all()
        latencies = sorted(
            (row.published_at - row.created_at).total_seconds()
            for row in rows
            if row.published_at is not None
        )
        answers = [e for e in logs if e["event"] == "inbox.answered"]
        accepted = Counter(e["message_id"] for e in answers if 200 <= e["status"] < 300)
        run = FlapRun(
            expected=expected,
            latencies=latencies,
            fallbacks=fallbacks,
            accepted=accepted,
            figures={
                "referrals": len(expected),
                "delivered": len(latencies),
                "503s answered in outages": refused,
                "circuit openings": sum(1 for e in logs if e["event"] == "delivery.circuit_opened"),
                "bring-forwards": sum(1 for e in logs if e["event"] == "delivery.brought_forward"),
                "fallback tasks": fallbacks,
                "latency p50 s": round(statistics.median(latencies), 3) if latencies else -1,
                "latency p99 s": round(_p99(latencies), 3),
                "latency max s": round(max(latencies, default=-1), 3),
            },
        )
        bridge.delivery.close()
    ledger.dispose()
    print("\nflapping provider figures:")
    for name, value in run.figures.items():
        print(f"  {name:<28} {value}")
    return run


def _p99(values: list[float]) -> float:
    if not values:
        return float("inf")
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def test_every_referral_is_delivered_exactly_once(flap_run: FlapRun) -> None:
    assert flap_run.accepted == Counter(dict.fromkeys(flap_run.expected, 1))


def test_the_outages_really_happened(flap_run: FlapRun) -> None:
    assert flap_run.figures["503s answered in outages"] > 0
    assert flap_run.figures["bring-forwards"] > 0


def test_p99_delivery_latency_stays_within_the_bound(flap_run: FlapRun) -> None:
    assert _p99(flap_run.latencies) < P99_BOUND_S, flap_run.figures


def test_no_fallback_task_for_a_referral_that_was_delivered(flap_run: FlapRun) -> None:
    assert flap_run.fallbacks == 0
