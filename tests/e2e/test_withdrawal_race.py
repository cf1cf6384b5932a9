"""Issue 9: a withdrawn victim's referral must never be left with the provider.

Two real workers share the work queue on RabbitMQ and one PostgreSQL ledger. Each opt-out crime
is followed closely by its victim's withdrawal for half the victims, so a withdrawal is often
handled by one worker while the other is still delivering the referral. What reaches the
provider's queue, in the order it arrived, must satisfy: for every victim who withdrew, either
no referral arrived, or one did and a withdrawal arrived after the last copy of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from referral_bridge.core import ids
from referral_bridge.ledger.schema import outbox
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import (
    LANCASHIRE,
    BridgeEnv,
    consent_event,
    crime_event,
    encode,
)
from tests.faults.harness import LONG
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: About 1,000 events in `make test`; `make chaos` runs 4,500.
CASES = 3000 if LONG else 700
SEED = 9


@dataclass(frozen=True)
class RaceRun:
    env: BridgeEnv
    #: Referral id -> whether its victim withdrew.
    withdrawn: dict[str, bool]
    #: Message ids in the order the provider's queue received them.
    wire: list[str]
    exit_codes: list[int]


@pytest.fixture
def race_run(make_bridge: BridgeFactory, postgres_bridge_url: str) -> RaceRun:
    env = make_bridge(ledger_url=postgres_bridge_url, prefetch=4)
    rng = random.Random(SEED)
    reported = datetime.now(UTC) - timedelta(hours=1)
    withdrawn: dict[str, bool] = {}
    items: list[tuple[str, bytes]] = []
    pending_withdrawals: list[bytes] = []
    for n in range(CASES):
        crime_ref, victim_id = f"RACE-{n:05d}", f"V-RACE-{n:05d}"
        items.append(
            ("crime.recorded", encode(crime_event(crime_ref=crime_ref, victim_id=victim_id)))
        )
        withdraws = rng.random() < 0.5
        withdrawn[ids.referral_id(LANCASHIRE, crime_ref, victim_id)] = withdraws
        if withdraws:
            pending_withdrawals.append(
                encode(
                    consent_event(
                        case_ref=crime_ref,
                        victim_id=victim_id,
                        referral="withdrawn",
                        recorded_at=reported + timedelta(minutes=30),
                    )
                )
            )
        # Each withdrawal goes out zero to two messages after its crime: close enough that the
        # other worker often handles it while the referral is being delivered.
        while pending_withdrawals and rng.random() < 0.6:
            items.append(("consent.updated", pending_withdrawals.pop(0)))
    items.extend(("consent.updated", body) for body in pending_withdrawals)

    workers = [env.start_worker("worker-a"), env.start_worker("worker-b")]
    env.publish_raw(items)
    settled = wait_until(
        lambda: (
            env.processed_count() >= len(items)
            and env.depth(env.topology.work_queue) == 0
            and env.unpublished_count() == 0
        ),
        timeout=300,
        interval=0.5,
    )
    codes = [worker.terminate() for worker in workers]
    assert settled, (
        f"not settled: processed {env.processed_count()} of {len(items)}, "
        f"undelivered {env.unpublished_count()}; logs: {[str(w.log_path) for w in workers]}"
    )
    wire = [str(r.message_id) for r in env.take_all(env.collect_referrals)]
    return RaceRun(env=env, withdrawn=withdrawn, wire=wire, exit_codes=codes)


def test_withdrawals_racing_deliveries_on_two_workers(race_run: RaceRun) -> None:
    """One run (about a thousand events), every invariant checked on it."""
    no_referral_left_with_the_provider(race_run)
    every_victim_who_kept_consent_is_referred(race_run)
    no_withdrawal_before_its_referral(race_run)
    the_ledger_agrees_with_the_wire(race_run)


def no_referral_left_with_the_provider(race_run: RaceRun) -> None:
    last_seen = {message_id: index for index, message_id in enumerate(race_run.wire)}
    left_behind = [
        referral
        for referral, withdrew in race_run.withdrawn.items()
        if withdrew
        and referral in last_seen
        and last_seen.get(ids.withdrawal_id(referral), -1) < last_seen[referral]
    ]
    assert left_behind == []


def every_victim_who_kept_consent_is_referred(race_run: RaceRun) -> None:
    kept = {referral for referral, withdrew in race_run.withdrawn.items() if not withdrew}
    assert kept <= set(race_run.wire)
    assert not any(ids.withdrawal_id(referral) in race_run.wire for referral in kept)


def no_withdrawal_before_its_referral(race_run: RaceRun) -> None:
    first_seen: dict[str, int] = {}
    for index, message_id in enumerate(race_run.wire):
        first_seen.setdefault(message_id, index)
    early = [
        referral
        for referral in race_run.withdrawn
        if ids.withdrawal_id(referral) in first_seen
        and first_seen[ids.withdrawal_id(referral)] < first_seen.get(referral, len(race_run.wire))
    ]
    assert early == []


def the_ledger_agrees_with_the_wire(race_run: RaceRun) -> None:
    """The issue's detector finds nothing, and every withdrawal of a delivered referral went."""
    with race_run.env.engine.connect() as connection:
        rows = {row.message_id: row for row in connection.execute(select(outbox))}
    delivered_and_cancelled = [
        m
        for m, row in rows.items()
        if row.kind == "referral"
        and row.published_at is not None
        and (row.last_error or "").startswith("cancelled:")
    ]
    assert delivered_and_cancelled == []
    for referral, withdrew in race_run.withdrawn.items():
        row = rows.get(referral)
        if withdrew and row is not None and (row.published_at or row.maybe_delivered):
            assert rows[ids.withdrawal_id(referral)].published_at is not None, referral
    assert race_run.exit_codes == [0, 0]
