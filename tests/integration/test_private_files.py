"""Personal data on disk is the owner's alone even under a permissive umask (issue 10, finding
4: under umask 022 `run` created `data/` 0755, the ledger 0644 and broker message files 0644)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from referral_bridge.cli.main import main
from referral_bridge.files import private_tree
from referral_bridge.ledger import Ledger
from referral_bridge.provider.inbox import InboxStore
from tests.e2e.helpers import Worker
from tests.unit.test_systemd_notify import embedded_config
from tests.waiting import wait_until


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("permissive_umask")]


def assert_owner_only_while_open(database: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{database}")
    try:
        # While a connection is open, the -wal and -shm files exist.
        files = [Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm")]
        assert [mode(path) for path in files] == [0o600] * 3
    finally:
        ledger.dispose()


class TestLedger:
    def test_a_new_sqlite_ledger_is_owner_only_with_its_wal_and_shm(self, tmp_path: Path) -> None:
        database = tmp_path / "data" / "ledger.sqlite3"
        assert_owner_only_while_open(database)
        assert mode(database.parent) == 0o700

    def test_an_existing_ledger_left_readable_is_tightened(self, tmp_path: Path) -> None:
        database = tmp_path / "ledger.sqlite3"
        Ledger.open(f"sqlite:///{database}").dispose()
        database.chmod(0o644)

        assert_owner_only_while_open(database)


class TestCommands:
    def test_simulate_writes_broker_files_owner_only(self, tmp_path: Path) -> None:
        config = embedded_config(tmp_path)

        assert main(["simulate", "--config", str(config), "--count", "2"]) == 0

        broker = tmp_path / "data" / "broker"
        files = [path for path in broker.rglob("*") if path.is_file()]
        folders = [broker, *(path for path in broker.rglob("*") if path.is_dir())]
        assert files
        assert {mode(path) for path in files} == {0o600}
        assert {mode(path) for path in folders} == {0o700}
        assert mode(tmp_path / "data") == 0o700

    def test_run_tightens_what_it_finds_and_creates_the_ledger_owner_only(
        self, tmp_path: Path
    ) -> None:
        config = embedded_config(tmp_path)
        queue = tmp_path / "data" / "broker" / "queue"
        queue.mkdir(parents=True)
        left = queue / "1_left-by-hand.other-queue.msg"
        left.write_text("{}")
        (tmp_path / "data").chmod(0o755)
        left.chmod(0o644)
        # Started from this test, so under its umask 022.
        worker = Worker(config=config, log_path=tmp_path / "worker.log").start()
        try:
            assert wait_until(lambda: "transport.consuming" in worker.log_text(), timeout=60), (
                worker.log_text()
            )
        finally:
            worker.terminate()

        ledger = tmp_path / "data" / "ledger.sqlite3"
        assert (mode(tmp_path / "data"), mode(left), mode(ledger)) == (0o700, 0o600, 0o600)
        assert {mode(path) for path in queue.parent.rglob("*") if path.is_dir()} == {0o700}


class TestInboxAndTree:
    def test_the_inbox_folder_is_created_owner_only(self, tmp_path: Path) -> None:
        store = InboxStore(tmp_path / "inbox" / "store.sqlite3")
        store.close()

        assert mode(tmp_path / "inbox") == 0o700
        assert mode(tmp_path / "inbox" / "store.sqlite3") == 0o600

    def test_a_tree_is_tightened_without_widening_anything(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "open.msg").write_text("x")
        (root / "sub" / "open.msg").chmod(0o664)
        (root / "already.msg").write_text("x")
        (root / "already.msg").chmod(0o400)

        private_tree(root)

        assert (mode(root), mode(root / "sub"), mode(root / "sub" / "open.msg")) == (
            0o700,
            0o700,
            0o600,
        )
        assert mode(root / "already.msg") == 0o400
