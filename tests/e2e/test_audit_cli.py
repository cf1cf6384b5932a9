"""`migrate`, `run`'s refusal, `audit verify`, `retention` and the subject access export as
subprocesses, against a real worker (issue 10 items 3 and 7)."""

from __future__ import annotations

import json
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from referral_bridge.cli.exit_codes import RET_CONFIG, RET_OK, RET_TAMPERED, RET_USAGE
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import BridgeEnv, crime_event, new_ref, run_cli

pytestmark = pytest.mark.e2e

MARKER = "AUDITCLIMARK"


def referred(env: BridgeEnv) -> str:
    """One burglary processed and referred by a real worker, then the worker stopped; returns
    the victim id. The victim's name and notes carry MARKER."""
    event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))
    victim = event["data"]["victims"][0]
    victim["name"] = {"title": "Ms", "given": MARKER, "family": MARKER}
    victim["contact"]["safe_contact_notes"] = MARKER
    worker = env.start_worker()
    env.publish(event)
    env.wait_settled(1)
    assert worker.terminate() == 0
    return str(victim["victim_id"])


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


# --- PostgreSQL: two roles ---------------------------------------------------------------------


def test_migrate_as_the_owner_then_run_as_the_granted_role(
    make_bridge: BridgeFactory, postgres_ledger_url: str
) -> None:
    """The runbook's order: the owner migrates and grants; the bridge's role runs."""
    role = f"rb_e2e_{new_ref('').lower().strip('-')}"
    with psycopg.connect(
        f"postgresql://postgres@127.0.0.1:5432/{database_of(postgres_ledger_url)}",
        autocommit=True,
    ) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    bridge_url = postgres_ledger_url.replace("://postgres@", f"://{role}@")
    try:
        env = make_bridge(ledger_url=bridge_url)
        refused = run_cli(env.config, "run")  # nothing migrated yet
        assert refused.returncode == RET_CONFIG
        assert "run `referral-bridge migrate` as the ledger's owner role" in refused.stderr

        migrated = run_cli(
            env.config,
            "migrate",
            "--grant",
            role,
            env={"REFERRAL_BRIDGE_LEDGER_URL": postgres_ledger_url},
        )
        assert migrated.returncode == RET_OK, migrated.stderr
        assert f"granted role {role}" in migrated.stdout

        referred(env)
        verified = run_cli(env.config, "audit", "verify")
        assert verified.returncode == RET_OK, verified.stdout + verified.stderr
        assert "audit trail intact: 1 records" in verified.stdout
    finally:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:5432/{database_of(postgres_ledger_url)}",
            autocommit=True,
        ) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_run_as_a_role_that_could_rewrite_the_audit_trail_exits_3(
    make_bridge: BridgeFactory, postgres_ledger_url: str
) -> None:
    env = make_bridge(ledger_url=postgres_ledger_url)
    assert run_cli(env.config, "migrate").returncode == RET_OK

    result = run_cli(env.config, "run")

    assert result.returncode == RET_CONFIG
    assert "refusing to start: the ledger role could rewrite the audit trail" in result.stderr
    assert "is a superuser" in result.stderr


def test_verify_names_the_first_record_the_owner_changed(
    make_bridge: BridgeFactory, postgres_bridge_url: str, postgres_ledger_url: str
) -> None:
    env = make_bridge(ledger_url=postgres_bridge_url)
    referred(env)
    with psycopg.connect(postgres_ledger_url.replace("+psycopg", ""), autocommit=True) as owner:
        owner.execute("ALTER TABLE rb_audit DISABLE TRIGGER USER")
        owner.execute("UPDATE rb_audit SET provider = 'someone-else' WHERE id = 1")
        owner.execute("ALTER TABLE rb_audit ENABLE TRIGGER USER")

    result = run_cli(env.config, "audit", "verify", "--json")

    assert result.returncode == RET_TAMPERED
    document = json.loads(result.stdout)
    assert (document["intact"], document["broken"]["id"]) == (False, 1)


# --- SQLite -----------------------------------------------------------------------------------


def sqlite_path(env: BridgeEnv) -> Path:
    return Path(env.ledger_url.removeprefix("sqlite:///"))


def test_verify_on_sqlite_passes_then_finds_an_edit(bridge: BridgeEnv) -> None:
    referred(bridge)
    intact = run_cli(bridge.config, "audit", "verify")
    assert intact.returncode == RET_OK, intact.stdout + intact.stderr
    head = intact.stdout.split("head: ", 1)[1].split()[0]

    with sqlite3.connect(sqlite_path(bridge)) as connection:
        connection.execute("DROP TRIGGER rb_audit_no_update")
        connection.execute("UPDATE rb_audit SET lawful_basis = 'legitimate_interests'")
    broken = run_cli(bridge.config, "audit", "verify", "--anchor", head)

    assert broken.returncode == RET_TAMPERED
    assert "BROKEN at audit record 1" in broken.stdout


def _age_everything(env: BridgeEnv, days: int) -> None:
    """Move every time in the ledger `days` back, as if the matter had been idle that long."""
    shift = f"-{days} days"
    columns = {
        "rb_records": ("updated_at",),
        "rb_processed_events": ("processed_at",),
        "rb_actions": ("at", "due_at"),
        "rb_decisions": ("decided_at",),
        "rb_outbox": ("created_at", "published_at"),
    }
    with sqlite3.connect(sqlite_path(env)) as connection:
        for table, names in columns.items():
            for name in names:
                connection.execute(
                    f"UPDATE {table} SET {name} = datetime({name}, ?) "  # noqa: S608 - constants
                    f"WHERE {name} IS NOT NULL",
                    (shift,),
                )


def test_retention_dry_run_counts_then_the_real_run_erases(bridge: BridgeEnv) -> None:
    victim_id = referred(bridge)
    _age_everything(bridge, 400)

    dry = run_cli(bridge.config, "retention", "--dry-run")

    assert dry.returncode == RET_OK, dry.stderr
    assert "would erase the personal data of 1 matters" in dry.stdout
    assert MARKER not in dry.stdout + dry.stderr
    assert victim_id not in dry.stdout
    with sqlite3.connect(sqlite_path(bridge)) as connection:
        snapshot = connection.execute("SELECT snapshot FROM rb_records").fetchone()[0]
    assert MARKER in snapshot

    applied = run_cli(bridge.config, "retention", "--json")

    assert applied.returncode == RET_OK, applied.stderr
    assert json.loads(applied.stdout)["matters"] == 1
    with sqlite3.connect(sqlite_path(bridge)) as connection:
        rows = connection.execute("SELECT snapshot, erased_at FROM rb_records").fetchall()
    assert [(snapshot, erased is not None) for snapshot, erased in rows] == [("{}", True)]
    listed = run_cli(bridge.config, "audit", "--action", "personal_data_erased", "--json")
    assert len(json.loads(listed.stdout)["records"]) == 1


def test_the_subject_access_export_is_audited_and_owner_only(
    bridge: BridgeEnv, tmp_path: Path
) -> None:
    victim_id = referred(bridge)
    target = tmp_path / "sar.json"

    result = run_cli(
        bridge.config,
        "audit",
        "--victim",
        victim_id,
        "--export",
        str(target),
        "--reason",
        "SAR-2026-0042",
    )

    assert result.returncode == RET_OK, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    document = json.loads(target.read_text(encoding="utf-8"))
    assert document["victim_id"] == victim_id
    assert document["records"][0]["held"]["you"]["name"]["given"] == MARKER
    assert [d["action"] for d in document["disclosures"]] == ["referral_sent"]
    assert MARKER not in result.stdout + result.stderr
    listed = run_cli(bridge.config, "audit", "--victim", victim_id, "--json")
    exports = [
        r for r in json.loads(listed.stdout)["records"] if r["action"] == "subject_access_export"
    ]
    assert len(exports) == 1
    assert exports[0]["detail"] == "subject access export: SAR-2026-0042"
    assert datetime.fromisoformat(exports[0]["at"]) > datetime.now(UTC) - timedelta(minutes=5)


def test_an_export_without_a_reason_writes_nothing(bridge: BridgeEnv, tmp_path: Path) -> None:
    target = tmp_path / "sar.json"

    result = run_cli(bridge.config, "audit", "--victim", "P-1", "--export", str(target))

    assert result.returncode == RET_USAGE
    assert "needs --reason" in result.stderr
    assert not target.exists()
