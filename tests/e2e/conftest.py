"""Fixtures for end-to-end tests: the real CLI as a subprocess, real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import RABBITMQ_URL, BridgeEnv

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
POSTGRES_ADMIN_URL = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(service: str, host: str, port: int) -> None:
    """Skip when a service is down locally; fail under CI, which must provide it."""
    if _reachable(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must start it before the end-to-end tests")
    pytest.skip(message)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    _require("RabbitMQ", "127.0.0.1", 5672)
    return RABBITMQ_URL


BridgeFactory = Callable[..., BridgeEnv]


@pytest.fixture
def make_bridge(rabbitmq_url: str, tmp_path: Path) -> Iterator[BridgeFactory]:
    """Build BridgeEnvs (config, keys, unique topology, collecting queues); all cleaned up after."""
    made: list[BridgeEnv] = []

    def make(**options: Any) -> BridgeEnv:
        env = BridgeEnv.create(
            tmp_path / f"bridge-{len(made)}", rabbitmq_url=rabbitmq_url, **options
        )
        made.append(env)
        return env

    try:
        yield make
    finally:
        for env in made:
            env.close()


@pytest.fixture
def bridge(make_bridge: BridgeFactory) -> BridgeEnv:
    """One bridge configuration with a SQLite ledger and this test's own topology."""
    return make_bridge()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of its own (its SQLAlchemy URL), dropped afterwards."""
    _require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import psycopg

    name = f"rb_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex only
    try:
        yield f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_ledger_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def postgres_bridge_url(postgres_ledger_url: str) -> Iterator[str]:
    """This test's PostgreSQL ledger migrated by the owner (`postgres`), and a URL for a
    least-privilege role of its own, as the runbook sets up: `run` refuses the owner."""
    from tests.fakes import bridge_role

    with bridge_role(postgres_ledger_url) as url:
        yield url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault runs' results table (tests/faults/harness.py), when any ran."""
    from tests.faults.harness import RESULTS

    if not RESULTS:
        return
    rows = [result.row() for result in RESULTS]
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    terminalreporter.section("fault runs")
    terminalreporter.line(" | ".join(c.ljust(widths[c]) for c in columns))
    terminalreporter.line("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        terminalreporter.line(" | ".join(str(row[c]).ljust(widths[c]) for c in columns))
