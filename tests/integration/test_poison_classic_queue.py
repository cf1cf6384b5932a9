# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; the test declares its topology.
"""A message that kills its worker is dead-lettered after `max_processing_attempts` on a classic
queue too, where RabbitMQ counts nothing but says `redelivered`: the ledger counts instead.

The worker is a real process (tests/integration/poison_worker.py) that SIGKILLs itself while
handling the message, as the OOM killer would, and is started again each time, as systemd would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from referral_bridge.ledger import Ledger
from referral_bridge.ledger.retention import sweep
from referral_bridge.transport import declare
from tests.integration.conftest import BrokerHarness

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: poison_worker's max_processing_attempts.
MAX_ATTEMPTS = 3


def run_worker(rabbit: BrokerHarness, ledger_url: str, calls: Path) -> int:
    """One life of the worker; its exit status (negative: the signal that ended it)."""
    command = [
        sys.executable,
        "-m",
        "tests.integration.poison_worker",
        rabbit.spec.url,
        rabbit.topology.work_queue,
        ledger_url,
        str(calls),
    ]
    return subprocess.run(command, cwd=ROOT, timeout=120, check=False).returncode


def test_a_message_that_kills_its_worker_is_dead_lettered_after_the_last_attempt(
    rabbit: BrokerHarness, tmp_path: Path
) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    Ledger.open(ledger_url).dispose()
    connection = rabbit.spec.connection()
    try:
        with connection.channel() as channel:
            declare(channel, rabbit.topology)
    finally:
        connection.release()
    rabbit.publisher.publish_inbound(b'{"id": "poison"}', "crime.recorded")
    calls = tmp_path / "calls"

    lives = [run_worker(rabbit, ledger_url, calls) for _ in range(MAX_ATTEMPTS)]
    last = run_worker(rabbit, ledger_url, calls)

    assert lives == [-signal.SIGKILL] * MAX_ATTEMPTS
    assert last == 0
    # Handed over once per attempt, each time knowing the attempts that came before.
    assert calls.read_text().split() == ["0", "1", "2"]
    dead = rabbit.fetch_eventually(rabbit.topology.dead_letter_queue)
    assert (dead.headers["x-rb-reason"], dead.headers["x-rb-attempts"]) == (
        "processing_error",
        MAX_ATTEMPTS,
    )
    assert rabbit.depth(rabbit.topology.work_queue) == 0


class TestRedeliveryCounts:
    """`Ledger.count_redelivery`, on SQLite and PostgreSQL."""

    def test_each_redelivery_of_a_copy_is_counted(self, ledger: Ledger) -> None:
        at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

        counts = [ledger.count_redelivery("a" * 64, at) for _ in range(3)]

        assert counts == [1, 2, 3]
        assert ledger.count_redelivery("b" * 64, at) == 1

    def test_the_retention_sweep_forgets_counts_untouched_for_a_week(self, ledger: Ledger) -> None:
        at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
        ledger.count_redelivery("old" + "0" * 61, at)
        ledger.count_redelivery("new" + "0" * 61, at + timedelta(days=6))

        sweep(
            ledger,
            now=at + timedelta(days=7, seconds=1),
            erase_after=timedelta(days=365),
            actor="t",
        )

        assert ledger.count_redelivery("old" + "0" * 61, at) == 1
        assert ledger.count_redelivery("new" + "0" * 61, at) == 2
