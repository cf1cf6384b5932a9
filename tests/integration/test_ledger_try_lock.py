"""`LedgerTransaction.try_lock`: a worker skips a matter another worker holds, without waiting
(PostgreSQL: SKIP LOCKED on `rb_locks`; SQLite: its one writer already holds every lock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from referral_bridge.ledger import Ledger
from tests.fakes import ledger_url_for
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def two_workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Ledger, Ledger]]:
    """Two ledgers on one PostgreSQL database, each with its own connections."""
    url = ledger_url_for("postgresql", request, tmp_path)
    first, second = Ledger.open(url), Ledger.open(url)
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


class HeldLock:
    """One worker's transaction that holds the locks of some refs until told to let go."""

    def __init__(self, ledger: Ledger, refs: set[str]) -> None:
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(ledger, refs), daemon=True)
        self.thread.start()
        assert self.locked.wait(10)

    def _hold(self, ledger: Ledger, refs: set[str]) -> None:
        with ledger.transaction() as tx:
            tx.lock(refs)
            self.locked.set()
            self.release.wait(30)

    def end(self) -> None:
        self.release.set()
        self.thread.join(10)


class TestOnPostgresql:
    def test_a_matter_another_worker_holds_is_refused_at_once(
        self, two_workers: tuple[Ledger, Ledger]
    ) -> None:
        first, second = two_workers
        for ref in ("CR-1", "CR-2"):  # the rows exist: events locked these refs before
            with first.transaction() as tx:
                tx.lock({ref})
        held = HeldLock(first, {"CR-1"})
        answers: list[bool] = []
        try:

            def try_both() -> None:
                with second.transaction() as tx:
                    answers.append(tx.try_lock({"CR-1", "CR-2"}))
                with second.transaction() as tx:
                    answers.append(tx.try_lock({"CR-2"}))

            trying = threading.Thread(target=try_both, daemon=True)
            trying.start()
            # Answered while the other worker still holds CR-1: nobody waited on its lock.
            assert wait_until(lambda: not trying.is_alive(), timeout=10)
            assert answers == [False, True]
        finally:
            held.end()

    def test_once_the_other_worker_lets_go_the_matter_is_locked(
        self, two_workers: tuple[Ledger, Ledger]
    ) -> None:
        first, second = two_workers
        held = HeldLock(first, {"CR-1"})
        held.end()

        with second.transaction() as tx:
            assert tx.try_lock({"CR-1"})

    def test_a_ref_never_locked_before_is_locked(self, two_workers: tuple[Ledger, Ledger]) -> None:
        _, second = two_workers

        with second.transaction() as tx:
            assert tx.try_lock({"CR-new"})


def test_on_sqlite_the_writer_holds_every_lock(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        with ledger.transaction() as tx:
            assert tx.try_lock({"CR-1", "CR-2"})
    finally:
        ledger.dispose()
