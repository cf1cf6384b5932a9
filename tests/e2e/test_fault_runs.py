"""The fault suite (issue 9): real workers under broker, ledger and process faults.

Every scenario runs the same workload (tests/faults/harness.py) and checks the same promises:
every valid event's referral reaches the provider's queue (at least once), nothing valid is
dead-lettered, every bad message is, and the workers stop cleanly afterwards. The results table
is printed at the end of the session; `make chaos` runs the long version.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import POSTGRES_ADMIN_URL, BridgeFactory
from tests.e2e.helpers import RABBITMQ_URL, Worker, wait_until
from tests.faults.disk import SmallDisk
from tests.faults.harness import BAD, LONG, FaultResult, lasting, logged, run_with_faults
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spread]


@pytest.fixture
def broker_proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(RABBITMQ_URL).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def ledger_proxy(postgres_ledger_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(postgres_ledger_url).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs to fill up. Ask for it before `make_bridge`, so that the workers are stopped
    before it is unmounted (it is unmounted lazily otherwise)."""
    disk = SmallDisk(tmp_path / "small-disk", size_bytes=(256 if LONG else 64) << 20).mount()
    try:
        yield disk
    finally:
        disk.unmount()


def assert_nothing_lost(result: FaultResult) -> None:
    assert (result.lost, result.unexpected) == (0, 0), result.row()
    assert result.referrals_out == result.referrals_expected, result.row()
    assert (result.dead_lettered, result.wrongly_dead_lettered) == (BAD, 0), result.row()
    assert set(result.exit_codes) == {0}, result.row()


def test_broker_connections_reset(make_bridge: BridgeFactory, broker_proxy: FaultProxy) -> None:
    env = make_bridge(worker_broker_url=broker_proxy.url_through(RABBITMQ_URL))
    result = run_with_faults(
        "broker: every connection reset", env, [env.worker()], lambda _: broker_proxy.reset()
    )
    assert_nothing_lost(result)


def test_broker_refuses_connections_for_a_while(
    make_bridge: BridgeFactory, broker_proxy: FaultProxy
) -> None:
    env = make_bridge(worker_broker_url=broker_proxy.url_through(RABBITMQ_URL))

    def outage(_: int) -> None:
        broker_proxy.cut()
        lasting(2.0)  # long enough that the worker tries to reconnect and is refused
        broker_proxy.restore()

    result = run_with_faults("broker: down 2 s, refusing", env, [env.worker()], outage)
    assert_nothing_lost(result)


def test_ledger_connections_reset(
    make_bridge: BridgeFactory, postgres_bridge_url: str, ledger_proxy: FaultProxy
) -> None:
    env = make_bridge(
        ledger_url=postgres_bridge_url,
        worker_ledger_url=ledger_proxy.url_through(postgres_bridge_url),
    )
    result = run_with_faults(
        "ledger: every connection reset", env, [env.worker()], lambda _: ledger_proxy.reset()
    )
    assert_nothing_lost(result)


def test_ledger_backends_terminated(make_bridge: BridgeFactory, postgres_bridge_url: str) -> None:
    env = make_bridge(ledger_url=postgres_bridge_url)
    database = postgres_bridge_url.rsplit("/", 1)[1]

    def terminate(_: int) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )

    result = run_with_faults("ledger: pg_terminate_backend", env, [env.worker()], terminate)
    assert_nothing_lost(result)


def test_worker_killed_and_restarted(make_bridge: BridgeFactory) -> None:
    env = make_bridge()
    worker = env.worker()

    def crash(_: int) -> None:
        worker.kill()
        worker.start()

    result = run_with_faults("worker: SIGKILL, restarted", env, [worker], crash)
    # The kills' exit codes are recorded on the worker; the final stop must be clean.
    assert_nothing_lost(result)


def test_two_workers_on_postgresql_with_connection_resets(
    make_bridge: BridgeFactory, postgres_bridge_url: str, ledger_proxy: FaultProxy
) -> None:
    env = make_bridge(
        ledger_url=postgres_bridge_url,
        worker_ledger_url=ledger_proxy.url_through(postgres_bridge_url),
        prefetch=4,
    )
    result = run_with_faults(
        "two workers, PostgreSQL: ledger connections reset",
        env,
        [env.worker("worker-a"), env.worker("worker-b")],
        lambda _: ledger_proxy.reset(),
    )
    assert_nothing_lost(result)


def ledger_failures(worker: Worker) -> int:
    """Log lines in which the worker met a ledger it could not write (and said so)."""
    return logged(worker, "event.retry", reason="ledger_unavailable") + sum(
        logged(worker, event, error_type="LedgerUnavailableError")
        for event in ("delivery.deferred", "scheduler.deferred")
    )


def truncate_wal(database: Path) -> None:
    """Checkpoint the WAL into the database and truncate it to nothing (as any connection may:
    SQLite waits for the worker's transaction in hand, and none is lost)."""
    connection = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        for _ in range(100):
            busy, _frames, _done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.05)  # a reader was still in the WAL: try again
        raise AssertionError(f"could not checkpoint {database}: readers kept the WAL busy")
    finally:
        connection.close()


def test_sqlite_ledger_on_a_full_disk(small_disk: SmallDisk, make_bridge: BridgeFactory) -> None:
    """The disk under the SQLite ledger fills up mid-run, then space comes back.

    Writes then fail with SQLITE_FULL: the worker must record nothing half-way, ack nothing it
    has not recorded, dead-letter nothing valid, keep running, and carry on once there is room.
    """
    database = small_disk.mount_point / "ledger.sqlite3"
    env = make_bridge(ledger_url=f"sqlite:///{database}")
    worker = env.worker()
    bites: list[int] = []

    def disk_full(_: int) -> None:
        failures = ledger_failures(worker)
        # SQLite writes into the room its WAL file already has (up to ~4 MB) before it needs
        # more: empty the WAL first, as if the disk had filled up when the WAL was at its
        # largest, so that the full disk bites at once rather than hundreds of events later.
        truncate_wal(database)
        small_disk.fill()
        try:
            met = wait_until(lambda: ledger_failures(worker) > failures, timeout=30, interval=0.1)
            assert met, f"the worker never met the full disk; log: {worker.log_path}"
            lasting(5.0 if LONG else 2.0)
            bites.append(ledger_failures(worker) - failures)
        finally:
            small_disk.make_room()

    faults = 6 if LONG else 2
    result = run_with_faults(
        "SQLite ledger: disk full, then room",
        env,
        [worker],
        disk_full,
        events=3000 if LONG else 600,
        faults=faults,
    )
    assert_nothing_lost(result)
    assert result.duplicated == 0, result.row()
    assert len(bites) == faults, bites  # each fault was met, and ended
    # Said what to do, and never crashed: one process, stopped cleanly at the end.
    assert logged(worker, "worker.started") == 1
    assert "its disk is full; free space on it" in worker.log_text()


def test_broker_paused(make_bridge: BridgeFactory, broker_proxy: FaultProxy) -> None:
    """Nothing moves between the bridge and RabbitMQ for longer than two heartbeats, then the
    network heals.

    The consuming connection is given up by heartbeat: by the worker's own check, or, when a
    handler was waiting on a publish confirm meanwhile, by RabbitMQ, which closes its end (the
    worker finds out the moment the network heals). Either way it is replaced, and the messages
    it held come again; the publisher's connection, without heartbeats, just resumes.
    """
    heartbeat_s, pause_s = 2, 6.0
    env = make_bridge(
        worker_broker_url=broker_proxy.url_through(RABBITMQ_URL), broker_heartbeat=heartbeat_s
    )
    worker = env.worker()

    def pause(_: int) -> None:
        broker_proxy.pause()
        try:
            lasting(pause_s)
        finally:
            broker_proxy.resume()

    faults = 6 if LONG else 2
    result = run_with_faults(
        f"broker: paused {pause_s:g} s (heartbeat {heartbeat_s} s)",
        env,
        [worker],
        pause,
        events=6000 if LONG else 340,
        rate=60.0 if LONG else 20.0,
        faults=faults,
        reconnected="transport.consuming",
    )
    assert_nothing_lost(result)
    assert result.duplicated == 0, result.row()
    # Each pause cost the consuming connection: one at start-up, one after each pause.
    assert logged(worker, "transport.consuming") == 1 + faults, worker.log_path
