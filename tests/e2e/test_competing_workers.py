"""Two workers on one queue with a PostgreSQL ledger: competing consumers, no double referral."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from referral_bridge.devtools.simulate import Simulator
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import BridgeEnv, Received

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 4242


@dataclass(frozen=True)
class CompetingRun:
    env: BridgeEnv
    events: int
    distinct_ids: int
    processed: int
    referrals: list[Received]
    processed_by_worker: list[int]
    exit_codes: list[int]


@pytest.fixture
def competing_run(make_bridge: BridgeFactory, postgres_bridge_url: str) -> CompetingRun:
    """~500 simulated events consumed by two workers sharing the queue and the ledger."""
    env = make_bridge(ledger_url=postgres_bridge_url, prefetch=8)
    simulator = Simulator(seed=SEED, now=datetime.now(UTC), max_age=timedelta(hours=6))
    events = list(simulator.cases(350))
    distinct = len({json.loads(e.body)["id"] for e in events})
    workers = [env.start_worker("worker-a"), env.start_worker("worker-b")]
    env.publish_raw((e.routing_key, e.body) for e in events)
    env.wait_settled(distinct, timeout=300)
    codes = [worker.terminate() for worker in workers]
    return CompetingRun(
        env=env,
        events=len(events),
        distinct_ids=distinct,
        processed=env.processed_count(),
        referrals=env.take_all(env.collect_referrals),
        processed_by_worker=[
            sum(1 for line in w.log_events() if line.get("event") == "event.processed")
            for w in workers
        ],
        exit_codes=codes,
    )


def test_two_workers_on_postgresql_process_every_event_without_a_double_referral(
    competing_run: CompetingRun,
) -> None:
    assert competing_run.events >= 450
    assert competing_run.processed == competing_run.distinct_ids
    referral_rows = [r for r in competing_run.env.action_rows() if r.action == "referral"]
    per_victim = Counter((r.victim_id, r.provider) for r in referral_rows)
    assert referral_rows
    assert max(per_victim.values()) == 1
    created = {
        r.message_id
        for r in competing_run.referrals
        if r.json()["type"] == "victim.referral.created"
    }
    # Every referral handed over is on the wire once; one whose consent was withdrawn before any
    # attempt was cancelled and must never reach the provider.
    outbox_by_id = {row.message_id: row for row in competing_run.env.outbox_rows()}
    delivered = {
        r.message_id for r in referral_rows if outbox_by_id[r.message_id].published_at is not None
    }
    never_sent = {
        r.message_id
        for r in referral_rows
        if outbox_by_id[r.message_id].published_at is None
        and not outbox_by_id[r.message_id].maybe_delivered
    }
    assert delivered <= created <= {r.message_id for r in referral_rows}
    assert not created & never_sent
    # Both really competed for the queue, and both stopped cleanly.
    assert min(competing_run.processed_by_worker) > 0
    assert competing_run.exit_codes == [0, 0]
