"""Quorum queues on a 3-node RabbitMQ cluster started for the test: two workers, one node killed
mid-run (the queues' leader), nothing lost and nobody referred twice (issue 11).

Starting three Erlang nodes and clustering them takes most of a minute on this machine, so this
runs under `make cluster-test` and `make chaos`, not `make test` (which runs the quick checks
of tests/e2e/test_quorum_queues.py on the machine's own broker). If the cluster cannot be
started the test fails: it never skips.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kombu.connection import Connection

from referral_bridge.core import ids
from referral_bridge.transport.topology import declare
from tests.e2e.helpers import (
    LANCASHIRE,
    BridgeEnv,
    Worker,
    crime_event,
    encode,
)
from tests.e2e.rabbit_cluster import ClusterStartError, RabbitCluster
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVENTS = 300
BAD = 4
RATE_PER_S = 40.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    started = time.monotonic()
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    try:
        cluster.start()
    except (ClusterStartError, subprocess.TimeoutExpired, OSError) as exc:
        cluster.close()
        pytest.fail(f"could not start a 3-node RabbitMQ cluster on this machine: {exc}")
    print(f"cluster of 3 nodes up in {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        cluster.close()


def _leader(cluster: RabbitCluster, queue: str) -> str:
    listing = cluster.ctl(cluster.nodes[1], "list_queues", "name", "type", "leader", "--quiet")
    for line in listing.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            assert parts[1] == "quorum", line
            return parts[2]
    raise AssertionError(f"{queue} not listed: {listing}")


def test_two_workers_lose_nothing_when_the_queues_leader_node_dies(
    cluster: RabbitCluster, tmp_path: Path, postgres_ledger_url: str
) -> None:
    first, second, third = cluster.nodes
    env = BridgeEnv.create(
        tmp_path / "bridge",
        rabbitmq_url=second.url,
        ledger_url=postgres_ledger_url,
        prefetch=16,
        queue_type="quorum",
    )
    try:
        # Declared through node 1 first, so node 1 leads the quorum queues: killing it is the
        # hard case (a new leader is elected; what the workers held unacked comes back).
        with Connection(first.url) as connection:
            declare(connection.channel(), env.topology)
        assert _leader(cluster, env.topology.work_queue) == first.name
        other = env.root / "worker-b.toml"
        other.write_text(env.config.read_text().replace(second.url, third.url))
        workers = [
            env.start_worker("worker-a"),
            Worker(config=other, log_path=env.root / "worker-b.log").start(),
        ]
        env.workers.append(workers[1])
        assert wait_until(
            lambda: all("worker.ready" in w.log_text() for w in workers), timeout=120
        ), f"workers not ready: {[str(w.log_path) for w in workers]}"

        tag = uuid.uuid4().hex[:6].upper()
        reported = datetime.now(UTC) - timedelta(hours=1)
        expected: set[str] = set()
        items: list[bytes] = []
        for n in range(EVENTS - BAD):
            crime_ref, victim_id = f"Q{tag}-{n:05d}", f"V{tag}-{n:05d}"
            expected.add(ids.referral_id(LANCASHIRE, crime_ref, victim_id))
            items.append(
                encode(crime_event(crime_ref=crime_ref, victim_id=victim_id, reported_at=reported))
            )
        for n in range(BAD):
            items.insert((n + 1) * len(items) // (BAD + 1), b"{not json")

        def publish() -> None:
            start = time.monotonic()
            for n, body in enumerate(items):
                delay = start + n / RATE_PER_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                env.publisher.publish_inbound(body, "crime.recorded")

        publishing = threading.Thread(target=publish, daemon=True)
        publishing.start()
        assert wait_until(lambda: env.processed_count() >= EVENTS // 3, timeout=60)
        cluster.stop_node(0)
        killed_at = env.processed_count()
        publishing.join(timeout=120)
        assert not publishing.is_alive(), "publishing stalled after the node was killed"

        env.wait_settled(EVENTS - BAD, timeout=180)
        env.wait_dead_letters(BAD, timeout=60)
        assert _leader(cluster, env.topology.work_queue) in {second.name, third.name}

        wire = Counter(r.message_id for r in env.take_all(env.collect_referrals))
        referrals = [row for row in env.action_rows() if row.action == "referral"]
        per_victim = Counter((row.victim_id, row.provider) for row in referrals)
        processed_by = [
            sum(1 for e in w.log_events() if e.get("event") == "event.processed") for w in workers
        ]
        print(
            f"quorum cluster: {len(items)} events, node 1 killed after {killed_at} processed; "
            f"{sum(wire.values())} referrals on the wire ({sum(wire.values()) - len(wire)} "
            f"repeats), processed per worker {processed_by}"
        )
        assert killed_at < EVENTS - BAD  # the node died mid-run
        assert set(wire) == expected  # nothing lost, nothing unexpected
        assert max(per_victim.values()) == 1  # nobody referred twice
        assert len(referrals) == len(expected)
        assert env.processed_count() == EVENTS - BAD
        assert all(count > 0 for count in processed_by)  # both workers took part
    finally:
        env.close()
