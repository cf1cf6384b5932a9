"""`dlq` and `audit` on an operator's shell: no keys, no migration, no silent embedded broker."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from sqlalchemy import create_engine, select

from referral_bridge.cli import dlq as dlq_commands
from referral_bridge.cli import main as cli
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.operator.deadletters import DeadLetterMessage
from referral_bridge.settings import CONFIG_ENV
from tests.fakes import write_operator_config


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """main() configures logging for the process; put back what other tests expect."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for name in ("REFERRAL_BRIDGE_BROKER_URL", "REFERRAL_BRIDGE_LEDGER_URL"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


@pytest.fixture
def production_config(tmp_path: Path) -> Path:
    return write_operator_config(tmp_path)


@pytest.fixture
def worker_has_run(production_config: Path) -> Path:
    """What a worker leaves in the data directory: the embedded queue folder and the ledger."""
    data = production_config.parent / "data"
    (data / "broker" / "queue").mkdir(parents=True)
    Ledger.open(f"sqlite:///{data / 'ledger.sqlite3'}").dispose()
    return data


def run(*argv: str) -> int:
    return cli.main(["--log-level", "WARNING", "--no-log-json", *argv])


#: Every operator command that reads or writes the ledger, as an operator would type it.
LEDGER_COMMANDS = [
    ("audit",),
    ("audit", "verify"),
    ("provider", "deliveries"),
    ("provider", "resend", "no-such-message"),
    ("report", "--no-dead-letters"),
    ("retention", "--dry-run"),
]


@pytest.mark.usefixtures("worker_has_run")
class TestNoKeysNeeded:
    @pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
    def test_no_operator_command_reads_a_key(
        self, production_config: Path, command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = run(*command, "--config", str(production_config))

        # `resend` of an unknown id fails, as it should; but none is a configuration error.
        assert code in (cli.RET_OK, cli.RET_FAILURE)
        assert "CREDENTIALS_DIRECTORY" not in capsys.readouterr().err

    def test_dlq_list_works_without_the_credentials_directory(
        self, production_config: Path
    ) -> None:
        assert run("dlq", "list", "--config", str(production_config)) == cli.RET_OK

    def test_audit_works_without_the_credentials_directory(self, production_config: Path) -> None:
        assert run("audit", "--config", str(production_config)) == cli.RET_OK


class TestEmbeddedBroker:
    @pytest.mark.usefixtures("worker_has_run")
    def test_every_dlq_command_says_it_reads_the_embedded_broker(
        self, production_config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        commands = [("list",), ("show", "x"), ("replay", "--all", "--dry-run"), ("purge", "x")]
        notes = []
        for command in commands:
            run("dlq", *command, "--config", str(production_config))
            notes.append("embedded broker" in capsys.readouterr().err)

        assert notes == [True] * len(commands)

    def test_a_missing_queue_folder_is_a_config_error_naming_it(
        self, production_config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        folder = production_config.parent / "data" / "broker" / "queue"

        assert run("dlq", "list", "--config", str(production_config)) == cli.RET_CONFIG
        captured = capsys.readouterr()
        assert str(folder) in captured.err
        assert "0 dead letters" not in captured.out

    def test_a_missing_queue_folder_is_not_created(self, production_config: Path) -> None:
        run("dlq", "list", "--config", str(production_config))

        assert not (production_config.parent / "data").exists()


class TestNoMigration:
    @pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
    def test_no_operator_command_upgrades_an_older_ledger(
        self,
        production_config: Path,
        worker_has_run: Path,
        command: tuple[str, ...],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        engine = create_engine(f"sqlite:///{worker_has_run / 'ledger.sqlite3'}")
        with engine.begin() as connection:
            connection.execute(t.schema_info.update().values(value="1"))

        assert run(*command, "--config", str(production_config)) == cli.RET_CONFIG
        with engine.connect() as connection:
            assert connection.execute(select(t.schema_info.c.value)).scalar_one() == "1"
        engine.dispose()
        assert "does not migrate" in capsys.readouterr().err

    @pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
    def test_no_operator_command_creates_a_missing_sqlite_ledger(
        self, production_config: Path, command: tuple[str, ...]
    ) -> None:
        assert run(*command, "--config", str(production_config)) == cli.RET_CONNECT
        assert not (production_config.parent / "data").exists()


class TestRevealAsJson:
    def test_headers_of_any_amqp_type_do_not_break_the_json(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An AMQP timestamp, bytes or a decimal in a header arrive as such from py-amqp."""
        letter = DeadLetterMessage(
            id="msg-1",
            position=0,
            body=b"{}",
            headers={
                "x-rb-reason": "schema_violation",
                "x-when": datetime(2026, 11, 23, tzinfo=UTC),
                "x-raw": b"\x00\x01",
                "x-amount": Decimal("1.5"),
            },
            message_id="msg-1",
            content_type=None,
            content_encoding=None,
            reason="schema_violation",
            detail="",
            failed_at=None,
            first_failed_at=None,
            attempts=1,
            original_routing_key="crime.recorded",
            shown_routing_key="crime.recorded",
            replay_count=0,
            event_type=None,
        )

        class OneLetter:
            def browse(self, _selection: object) -> list[DeadLetterMessage]:
                return [letter]

        monkeypatch.setattr(dlq_commands, "_queue", lambda _settings: OneLetter())
        monkeypatch.setattr(dlq_commands, "_audit_reveal", lambda _session, _letters, _why: [7])
        no_session = contextlib.nullcontext(SimpleNamespace(settings=None))
        monkeypatch.setattr(dlq_commands, "operator_session", lambda _args: no_session)
        args = argparse.Namespace(id="msg-1", reveal=True, reason="INC-1", json=True)

        assert dlq_commands.cmd_show(args) == cli.RET_OK
        [shown] = json.loads(capsys.readouterr().out)
        assert shown["headers"]["x-when"].startswith("2026-11-23")


def test_every_resend_outcome_has_its_operator_message() -> None:
    from referral_bridge.cli.provider import RESEND_MESSAGES
    from referral_bridge.ledger import ResendOutcome

    assert set(RESEND_MESSAGES) == set(ResendOutcome)
