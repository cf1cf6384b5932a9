"""Operator commands, run as subprocesses, record the OS user whatever LOGNAME and USER say."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from referral_bridge.cli.exit_codes import RET_OK
from referral_bridge.ledger import AuditFacts, Ledger, OutboxMessage
from referral_bridge.operator.audit import AuditQuery, AuditRecord, AuditTrail
from tests.e2e.helpers import run_cli
from tests.fakes import write_operator_config

pytestmark = pytest.mark.e2e

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
#: What anyone can put in their environment.
SPOOFED = {"LOGNAME": "mallory", "USER": "mallory"}
REFERRAL = "referral-actor-1"


@pytest.fixture(autouse=True)
def not_behind_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """An operator's view of an install: keys it cannot read, a SQLite ledger a worker made."""
    path = write_operator_config(tmp_path)
    assert run_cli(path, "migrate").returncode == RET_OK
    return path


@pytest.fixture
def ledger(config: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{config.parent / 'data' / 'ledger.sqlite3'}", migrate=False)
    yield opened
    opened.dispose()


def os_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def audit_of(ledger: Ledger, action: str) -> list[AuditRecord]:
    return AuditTrail(ledger.engine).query(AuditQuery(action=action))


def rejected_referral(ledger: Ledger) -> None:
    with ledger.transaction() as tx:
        tx.add_outbox(
            OutboxMessage(
                message_id=REFERRAL,
                event_id="event-actor-1",
                kind="referral",
                exchange="victim-services.referrals",
                routing_key="lancashire-victim-services",
                headers={},
                body=b"sealed",
                provider="lancashire-victim-services",
                audit=AuditFacts(
                    case_ref="LC-1", victim_id="P-1", provider="lancashire-victim-services"
                ),
            ),
            AT,
        )
    with ledger.transaction() as tx:
        tx.reject_delivery(REFERRAL, AT, "HTTP 400")


def test_a_subject_access_export_records_the_os_user_not_logname(
    config: Path, ledger: Ledger
) -> None:
    export = config.parent / "export.json"
    done = run_cli(
        config,
        "audit",
        "--victim",
        "P-1",
        "--export",
        str(export),
        "--reason",
        "SAR-1",
        env=SPOOFED,
    )

    assert done.returncode == RET_OK, done.stderr
    [record] = audit_of(ledger, "subject_access_export")
    assert record.actor == os_user()


def test_a_resend_records_the_os_user_not_logname(config: Path, ledger: Ledger) -> None:
    rejected_referral(ledger)

    done = run_cli(config, "provider", "resend", REFERRAL, env=SPOOFED)

    assert done.returncode == RET_OK, done.stderr
    [record] = audit_of(ledger, "referral_resend")
    assert record.actor == os_user()


def test_a_resend_for_someone_else_names_them_beside_the_os_user(
    config: Path, ledger: Ledger
) -> None:
    rejected_referral(ledger)

    done = run_cli(config, "provider", "resend", REFERRAL, "--actor", "mallory", env=SPOOFED)

    assert done.returncode == RET_OK, done.stderr
    [record] = audit_of(ledger, "referral_resend")
    assert record.actor == f"{os_user()} (on behalf of mallory)"
