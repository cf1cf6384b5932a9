"""The SQLite ledger on a full disk, then with room again."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import Worker
from tests.faults.disk import SmallDisk
from tests.faults.harness import LONG, assert_nothing_lost, lasting, logged, run_with_faults
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


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
