"""`referral-bridge check-config` as a subprocess against the real RabbitMQ and PostgreSQL.

Exit codes are what systemd and scripts act on: 0 all good, 3 something an operator must change,
4 a service that cannot be reached (and may come back).
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from referral_bridge.cli.exit_codes import RET_CONFIG, RET_CONNECT, RET_OK
from referral_bridge.ledger import schema as t
from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import BridgeEnv, cli_command, crime_event, new_ref, worker_environment

pytestmark = pytest.mark.e2e

#: Put in every personal field of the event the worker processes before check-config runs.
MARKER = "CHECKCONFIGMARKERZ"


def check_config(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), "check-config", "--config", str(config), "--timeout", "3", *extra],
        capture_output=True,
        text=True,
        env=worker_environment(),
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def set_broker_url(env: BridgeEnv, url: str) -> None:
    text = env.config.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^url = "amqp[^"]*"$', f'url = "{url}"', text, count=1)
    env.config.write_text(text, encoding="utf-8")


def line_of(output: str, check: str) -> str:
    return next(line for line in output.splitlines() if line.split()[1:2] == [check])


def test_a_reachable_broker_and_postgresql_ledger_pass(
    make_bridge: BridgeFactory, postgres_bridge_url: str
) -> None:
    env = make_bridge(ledger_url=postgres_bridge_url)

    result = check_config(env.config)

    assert result.returncode == RET_OK, result.stdout + result.stderr
    assert line_of(result.stdout, "broker").startswith("WARN")  # work queue not declared yet
    assert line_of(result.stdout, "ledger").startswith("OK")
    assert "configuration ok" in result.stdout


def test_a_refused_broker_login_exits_3_without_printing_the_password(
    bridge: BridgeEnv,
) -> None:
    set_broker_url(bridge, "amqp://guest:n0t-the-Passw0rd@127.0.0.1:5672//")

    result = check_config(bridge.config)

    assert result.returncode == RET_CONFIG
    assert "refused the user name or password" in result.stderr
    assert "n0t-the-Passw0rd" not in result.stdout + result.stderr


def test_an_unreachable_broker_exits_4(bridge: BridgeEnv) -> None:
    set_broker_url(bridge, f"amqp://guest:guest@127.0.0.1:{closed_port()}//")

    result = check_config(bridge.config)

    assert result.returncode == RET_CONNECT
    assert line_of(result.stdout, "broker").startswith("FAIL")


def test_an_unreachable_broker_is_not_checked_offline(bridge: BridgeEnv) -> None:
    set_broker_url(bridge, f"amqp://guest:guest@127.0.0.1:{closed_port()}//")

    result = check_config(bridge.config, "--offline")

    assert result.returncode == RET_OK


def test_a_missing_postgresql_database_exits_4_naming_it(make_bridge: BridgeFactory) -> None:
    env = make_bridge(ledger_url="postgresql+psycopg://postgres@127.0.0.1:5432/rb_no_such_db")

    result = check_config(env.config)

    assert result.returncode == RET_CONNECT
    assert "rb_no_such_db" in line_of(result.stdout, "ledger")


def test_a_ledger_from_a_newer_bridge_exits_3(
    make_bridge: BridgeFactory, postgres_ledger_url: str
) -> None:
    env = make_bridge(ledger_url=postgres_ledger_url)
    engine = create_engine(postgres_ledger_url)
    try:
        with engine.begin() as connection:
            t.schema_info.create(connection)
            connection.execute(t.schema_info.insert().values(key="schema_version", value="999"))
    finally:
        engine.dispose()

    result = check_config(env.config)

    assert result.returncode == RET_CONFIG
    assert "schema version 999" in result.stderr


def test_after_a_real_workload_the_output_holds_no_personal_data(bridge: BridgeEnv) -> None:
    event = crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))
    victim = event["data"]["victims"][0]
    victim["name"] = {"title": "Ms", "given": MARKER, "family": MARKER}
    victim["contact"]["email"] = f"{MARKER.lower()}@example.org"
    victim["contact"]["safe_contact_notes"] = MARKER
    worker = bridge.start_worker()
    bridge.publish(event)
    bridge.wait_settled(1)
    assert worker.terminate() == 0

    result = check_config(bridge.config)

    assert result.returncode == RET_OK, result.stdout + result.stderr
    assert line_of(result.stdout, "broker").startswith("OK")
    assert MARKER not in result.stdout + result.stderr
    assert MARKER.lower() not in result.stdout + result.stderr
