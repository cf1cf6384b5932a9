"""SIGTERM while the worker is busy: a clean exit that leaves the queue exactly right."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.helpers import BridgeEnv, Received, crime_event, new_ref
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

EVENTS = 400


@dataclass(frozen=True)
class ShutdownRun:
    exit_code: int
    stop_seconds: float
    processed_at_stop: int
    ready_after_stop: int
    log: str
    processed_after_restart: int
    restart_exit_code: int
    referrals: list[Received]


@pytest.fixture(scope="module")
def shutdown_run(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShutdownRun]:
    env = BridgeEnv.create(tmp_path_factory.mktemp("shutdown"), rabbitmq_url=rabbitmq_url)
    try:
        env.publish(
            *(crime_event(crime_ref=new_ref(), victim_id=new_ref("P")) for _ in range(EVENTS))
        )
        worker = env.start_worker("first")
        assert wait_until(lambda: env.processed_count() >= 60, timeout=60), "worker never got busy"
        started = time.monotonic()
        code = worker.terminate()
        stop_seconds = time.monotonic() - started
        processed = env.processed_count()
        # The broker requeues what the worker had prefetched once its connection is gone.
        wait_until(lambda: env.depth(env.topology.work_queue) + processed == EVENTS, timeout=10)
        ready = env.depth(env.topology.work_queue)
        restarted = env.start_worker("second")
        env.wait_settled(EVENTS, timeout=90)
        restart_code = restarted.terminate()
        yield ShutdownRun(
            exit_code=code,
            stop_seconds=stop_seconds,
            processed_at_stop=processed,
            ready_after_stop=ready,
            log=worker.log_text(),
            processed_after_restart=env.processed_count(),
            restart_exit_code=restart_code,
            referrals=env.take_all(env.collect_referrals),
        )
    finally:
        env.close()


def test_sigterm_while_busy_exits_with_code_zero_within_seconds(shutdown_run: ShutdownRun) -> None:
    assert shutdown_run.exit_code == 0
    assert shutdown_run.stop_seconds < 15
    assert "worker.stopped" in shutdown_run.log


def test_sigterm_stopped_the_worker_before_the_queue_was_empty(shutdown_run: ShutdownRun) -> None:
    assert shutdown_run.ready_after_stop > 0


def test_sigterm_leaves_every_unprocessed_message_on_the_queue_and_no_processed_one(
    shutdown_run: ShutdownRun,
) -> None:
    assert shutdown_run.processed_at_stop + shutdown_run.ready_after_stop == EVENTS


def test_a_restarted_worker_processes_the_rest_exactly_once(shutdown_run: ShutdownRun) -> None:
    assert shutdown_run.processed_after_restart == EVENTS
    assert shutdown_run.restart_exit_code == 0
    ids = Counter(r.message_id for r in shutdown_run.referrals)
    assert len(ids) == EVENTS
    # A clean SIGTERM flushes before exiting, so no referral reaches the wire twice.
    assert max(ids.values()) == 1
