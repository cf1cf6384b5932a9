"""PostgreSQL ledger faults: connections reset, backends terminated, two workers meanwhile."""

from __future__ import annotations

import psycopg
import pytest

from tests.e2e.conftest import POSTGRES_ADMIN_URL, BridgeFactory
from tests.faults.harness import assert_nothing_lost, run_with_faults
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_ledger_connections_reset(
    make_bridge: BridgeFactory, postgres_bridge_url: str, ledger_proxy: FaultProxy
) -> None:
    env = make_bridge(
        ledger_url=postgres_bridge_url,
        worker_ledger_url=ledger_proxy.url_through(postgres_bridge_url),
    )
    result = run_with_faults(
        "ledger: every connection reset", env, [env.worker()], lambda _: ledger_proxy.reset()
    )
    assert_nothing_lost(result)


def test_ledger_backends_terminated(make_bridge: BridgeFactory, postgres_bridge_url: str) -> None:
    env = make_bridge(ledger_url=postgres_bridge_url)
    database = postgres_bridge_url.rsplit("/", 1)[1]

    def terminate(_: int) -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )

    result = run_with_faults("ledger: pg_terminate_backend", env, [env.worker()], terminate)
    assert_nothing_lost(result)


def test_two_workers_on_postgresql_with_connection_resets(
    make_bridge: BridgeFactory, postgres_bridge_url: str, ledger_proxy: FaultProxy
) -> None:
    env = make_bridge(
        ledger_url=postgres_bridge_url,
        worker_ledger_url=ledger_proxy.url_through(postgres_bridge_url),
        prefetch=4,
    )
    result = run_with_faults(
        "two workers, PostgreSQL: ledger connections reset",
        env,
        [env.worker("worker-a"), env.worker("worker-b")],
        lambda _: ledger_proxy.reset(),
    )
    assert_nothing_lost(result)
