"""The fault run: 1,000 referrals to an HTTPS inbox that is stopped and restarted several times
and answers 503 at random. Afterwards the inbox holds each expected referral exactly once and the
ledger shows every one delivered. The figures are printed (run with -s to see them).

In process: the real service, SQLite ledger, sealing, delivery engine and reference inbox, on
the real clock with short parking so the run stays well under a minute or two.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import structlog.testing
from sqlalchemy import func, select

from referral_bridge.bootstrap import utc_now
from referral_bridge.core import ids
from referral_bridge.delivery import DeliveryEngine, DeliveryPolicy, FallbackIssuer
from referral_bridge.delivery.amqp import AmqpRoute
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.transport import Ack
from tests.fakes import FakeClock, RecordingPublisher, cloudevent, inbound, make_keys, make_layer
from tests.integration.test_delivery_helpers import LANCASHIRE, https_route, make_pki, running_inbox
from tests.unit.factories import make_crime, make_victim

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REFERRALS = 1000
RESTARTS = 5
FAILURE_RATE = 0.2
SEED = 20261123


@dataclass
class FaultRun:
    expected: set[str]
    held: list[str]
    delivered_rows: int
    undelivered_rows: int
    verdicts: list[object]
    #: Per message id, how many requests the inbox answered 2xx: counted from its answers, so
    #: "exactly once" does not rest on the inbox store's primary key.
    accepted: Counter[str] = field(default_factory=Counter)
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> FaultRun:
    folder = tmp_path_factory.mktemp("fault-run")
    pki, keys = make_pki(folder / "pki"), make_keys(folder / "keys")
    ledger = Ledger.open(f"sqlite:///{folder / 'ledger.sqlite3'}")
    chance = random.Random(SEED)
    injected = 0
    restarts = 0

    def random_503() -> int | None:
        nonlocal injected
        if chance.random() < FAILURE_RATE:
            injected += 1
            return 503
        return None

    with running_inbox(pki, keys, LANCASHIRE, folder / "inbox.sqlite3") as inbox:
        inbox.faults.chooser = random_503
        publisher = RecordingPublisher()

        def engine(fallbacks: FallbackIssuer, metrics: BridgeMetrics) -> DeliveryEngine:
            return DeliveryEngine(
                ledger=ledger,
                default_route=AmqpRoute(publisher),
                routes={LANCASHIRE: https_route(pki, LANCASHIRE, inbox.url, read_timeout=5.0)},
                policy=DeliveryPolicy(
                    attempts_in_place=2,
                    in_place_initial_seconds=0.005,
                    in_place_max_seconds=0.02,
                    park_initial=timedelta(milliseconds=50),
                    park_max=timedelta(milliseconds=500),
                    circuit_failures=5,
                    circuit_open=timedelta(milliseconds=200),
                ),
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
        stop = threading.Event()

        def saboteur() -> None:
            nonlocal restarts
            while not stop.wait(1.0) and restarts < RESTARTS:
                inbox.server.stop()
                stop.wait(0.4)
                inbox.server.start()
                restarts += 1

        started = time.monotonic()
        thread = threading.Thread(target=saboteur, daemon=True)
        expected: set[str] = set()
        verdicts: list[object] = []
        with structlog.testing.capture_logs() as logs:
            thread.start()
            for n in range(REFERRALS):
                crime_ref = f"LC-26-{n:07d}"
                victim = make_victim(f"P-{n:05d}")
                expected.add(ids.referral_id(LANCASHIRE, crime_ref, victim.victim_id))
                verdicts.append(
                    service.handle(
                        inbound(
                            cloudevent(
                                make_crime(victim, crime_ref=crime_ref), event_type="crime.recorded"
                            )
                        )
                    )
                )
            handled = time.monotonic() - started
            delivered_inline = REFERRALS - len(ledger.deliveries(state="undelivered", limit=5000))
            thread.join(timeout=30)
            stop.set()
            passes = 0
            # A generous deadline for the drain alone: on a loaded machine the handling above
            # may already have taken minutes.
            drain_deadline = time.monotonic() + 300
            while (
                ledger.deliveries(state="undelivered", limit=1)
                and time.monotonic() < drain_deadline
            ):
                bridge.scheduled.flush()
                passes += 1
                time.sleep(0.05)
        elapsed = time.monotonic() - started
        with ledger.engine.connect() as connection:
            delivered_rows = connection.execute(
                select(func.count())
                .select_from(t.outbox)
                .where(t.outbox.c.published_at.is_not(None))
            ).scalar_one()
            undelivered_rows = connection.execute(
                select(func.count()).select_from(t.outbox).where(t.outbox.c.published_at.is_(None))
            ).scalar_one()
            attempts = connection.execute(select(func.sum(t.outbox.c.attempts))).scalar_one()
        held = inbox.store.message_ids()
        answers = [e for e in logs if e["event"] == "inbox.answered"]
        accepted = Counter(e["message_id"] for e in answers if 200 <= e["status"] < 300)
        run = FaultRun(
            accepted=accepted,
            expected=expected,
            held=held,
            delivered_rows=int(delivered_rows),
            undelivered_rows=int(undelivered_rows),
            verdicts=verdicts,
            figures={
                "referrals": REFERRALS,
                "inbox restarts": restarts,
                "injected 503s": injected,
                "requests seen by the inbox": inbox.faults.requests,
                "answered 2xx (accepted)": sum(accepted.values()),
                "answered 409 (already held)": sum(1 for e in answers if e["status"] == 409),
                "delivered while handling": delivered_inline,
                "delivered later by scheduler passes": REFERRALS - delivered_inline,
                "scheduler passes": passes,
                "parkings logged": sum(1 for e in logs if e["event"] == "delivery.parked"),
                "circuit openings": sum(1 for e in logs if e["event"] == "delivery.circuit_opened"),
                "ledger attempt rounds": int(attempts or 0),
                "seconds handling": round(handled, 1),
                "seconds in total": round(elapsed, 1),
            },
        )
        bridge.delivery.close()
    ledger.dispose()
    print("\nfault run figures:")
    for name, value in run.figures.items():
        print(f"  {name:<38} {value}")
    return run


class _RealClock(FakeClock):
    """The real clock in FakeClock's shape, for make_service."""

    def __init__(self) -> None:
        super().__init__(utc_now())

    def now(self) -> datetime:
        return utc_now()


def test_every_event_was_acked_whatever_the_inbox_did(fault_run: FaultRun) -> None:
    assert fault_run.verdicts == [Ack()] * REFERRALS


def test_the_inbox_holds_each_expected_referral_exactly_once(fault_run: FaultRun) -> None:
    assert len(fault_run.held) == REFERRALS
    assert set(fault_run.held) == fault_run.expected


def test_the_inbox_accepted_each_expected_referral_with_2xx_exactly_once(
    fault_run: FaultRun,
) -> None:
    assert fault_run.accepted == Counter(dict.fromkeys(fault_run.expected, 1))


def test_the_ledger_shows_every_referral_delivered(fault_run: FaultRun) -> None:
    assert (fault_run.delivered_rows, fault_run.undelivered_rows) == (REFERRALS, 0)


def test_the_faults_really_happened(fault_run: FaultRun) -> None:
    assert fault_run.figures["inbox restarts"] == RESTARTS
    assert fault_run.figures["injected 503s"] > 50
    assert fault_run.figures["parkings logged"] > 0
