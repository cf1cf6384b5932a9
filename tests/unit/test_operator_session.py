"""The one way in for operator tools: who is asking, the ledger opened late and never migrated."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from referral_bridge.errors import LedgerSchemaError, LedgerUnavailableError
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.operator.audit import DEAD_LETTER_REVEALED, AuditQuery, OperatorAction
from referral_bridge.operator.session import OperatorSession, operator_name
from referral_bridge.settings import CONFIG_ENV
from tests.fakes import write_operator_config


@pytest.fixture(autouse=True)
def no_environment_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (CONFIG_ENV, "REFERRAL_BRIDGE_LEDGER_URL", "REFERRAL_BRIDGE_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_operator_config(tmp_path)


@pytest.fixture
def ledger_file(config: Path) -> Path:
    path = config.parent / "data" / "ledger.sqlite3"
    path.parent.mkdir()
    Ledger.open(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture
def session(config: Path) -> Iterator[OperatorSession]:
    with OperatorSession.start(config) as started:
        yield started


class TestOperatorName:
    def test_it_is_the_real_users_login_name_not_the_environments(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("SUDO_USER", raising=False)
        monkeypatch.setenv("LOGNAME", "asmith")
        monkeypatch.setenv("USER", "asmith")

        assert operator_name() == pwd.getpwuid(os.getuid()).pw_name

    def test_behind_sudo_the_person_who_ran_sudo_is_appended_to_the_real_user(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SUDO_USER", "jbloggs")

        assert operator_name() == f"{pwd.getpwuid(os.getuid()).pw_name} (sudo by jbloggs)"

    def test_a_uid_without_a_passwd_entry_is_recorded_by_number(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("SUDO_USER", raising=False)
        monkeypatch.setattr(os, "getuid", lambda: 987654)

        assert operator_name() == "uid 987654"


class TestStart:
    def test_settings_load_without_the_keys_they_name(self, session: OperatorSession) -> None:
        assert "lancashire-victim-services" in session.settings.providers

    def test_the_actor_is_the_operator_name(
        self, config: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LOGNAME", "asmith")
        with OperatorSession.start(config) as session:
            assert session.actor == operator_name() != "asmith"

    def test_no_ledger_is_opened_or_created_until_one_is_needed(self, config: Path) -> None:
        with OperatorSession.start(config):
            pass

        assert not (config.parent / "data").exists()


class TestTheLedger:
    def test_a_missing_sqlite_ledger_is_not_created(self, session: OperatorSession) -> None:
        with pytest.raises(LedgerUnavailableError, match="no ledger"):
            session.open_ledger()

        assert not (session.settings.data_dir / "ledger.sqlite3").exists()

    def test_a_ledger_at_an_older_schema_is_refused_and_left_as_it_was(
        self, session: OperatorSession, ledger_file: Path
    ) -> None:
        engine = create_engine(f"sqlite:///{ledger_file}")
        with engine.begin() as connection:
            connection.execute(t.schema_info.update().values(value="1"))

        with pytest.raises(LedgerSchemaError, match="does not migrate"):
            session.open_ledger()

        with engine.connect() as connection:
            assert connection.execute(select(t.schema_info.c.value)).scalar_one() == "1"
        engine.dispose()

    @pytest.mark.usefixtures("ledger_file")
    def test_it_is_opened_once_and_closed_with_the_session(self, config: Path) -> None:
        with OperatorSession.start(config) as session:
            ledger = session.open_ledger()
            assert session.ledger is ledger

        reopened = session.open_ledger()  # closing forgot it: the next use opens it anew
        assert reopened is not ledger
        session.close()


class TestRecord:
    @pytest.mark.usefixtures("ledger_file")
    def test_every_record_carries_the_sessions_actor(self, session: OperatorSession) -> None:
        ids = session.record(
            [
                OperatorAction(action=DEAD_LETTER_REVEALED, message_id="D-1", victim_id="P-1"),
                OperatorAction(action=DEAD_LETTER_REVEALED, message_id="D-1", victim_id="P-2"),
            ]
        )

        records = session.audit_trail.query(AuditQuery(message_id="D-1"))
        assert [record.id for record in records] == ids
        assert {record.actor for record in records} == {session.actor}

    @pytest.mark.usefixtures("ledger_file")
    def test_personal_data_in_the_operators_reason_is_scrubbed(
        self, session: OperatorSession
    ) -> None:
        session.record(
            [OperatorAction(action=DEAD_LETTER_REVEALED, detail="asked by 07700 900456")]
        )

        [record] = session.audit_trail.query(AuditQuery(action=DEAD_LETTER_REVEALED))
        assert record.detail is not None
        assert "07700 900456" not in record.detail


class TestOnBehalfOf:
    def test_a_claimed_name_is_recorded_beside_the_actor(self, config: Path) -> None:
        with OperatorSession.start(config) as session:
            assert session.on_behalf_of("bob") == f"{session.actor} (on behalf of bob)"

    def test_no_claim_is_the_actor_alone(self, session: OperatorSession) -> None:
        assert session.on_behalf_of(None) == session.on_behalf_of("  ") == session.actor

    def test_control_characters_are_dropped_and_the_claim_is_bounded(
        self, session: OperatorSession
    ) -> None:
        claimed = session.on_behalf_of("bob\x1b[2J" + "x" * 100)

        assert "\x1b" not in claimed
        assert len(claimed) <= len(session.actor) + len(" (on behalf of )") + 64
