"""The fault suite (issue 9): real workers under broker, ledger and process faults.

Every scenario runs the same workload (tests/faults/harness.py) and checks the same promises:
every valid event's referral reaches the provider's queue (at least once), nothing valid is
dead-lettered, every bad message is, and the workers stop cleanly afterwards. The results table
is printed at the end of the session; `make chaos` runs the long version.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.conftest import POSTGRES_ADMIN_URL, BridgeFactory
from tests.e2e.helpers import RABBITMQ_URL
from tests.faults.harness import BAD, FaultResult, lasting, run_with_faults
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.spread]


@pytest.fixture
def broker_proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(RABBITMQ_URL).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def ledger_proxy(postgres_ledger_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(postgres_ledger_url).start()
    try:
        yield proxy
    finally:
        proxy.close()


def assert_nothing_lost(result: FaultResult) -> None:
    assert (result.lost, result.unexpected) == (0, 0), result.row()
    assert result.referrals_out == result.referrals_expected, result.row()
    assert result.dead_lettered == BAD, result.row()
    assert set(result.exit_codes) == {0}, result.row()


def test_broker_connections_reset(make_bridge: BridgeFactory, broker_proxy: FaultProxy) -> None:
    env = make_bridge(worker_broker_url=broker_proxy.url_through(RABBITMQ_URL))
    result = run_with_faults(
        "broker: every connection reset", env, [env.worker()], lambda _: broker_proxy.reset()
    )
    assert_nothing_lost(result)


def test_broker_refuses_connections_for_a_while(
    make_bridge: BridgeFactory, broker_proxy: FaultProxy
) -> None:
    env = make_bridge(worker_broker_url=broker_proxy.url_through(RABBITMQ_URL))

    def outage(_: int) -> None:
        broker_proxy.cut()
        lasting(2.0)  # long enough that the worker tries to reconnect and is refused
        broker_proxy.restore()

    result = run_with_faults("broker: down 2 s, refusing", env, [env.worker()], outage)
    assert_nothing_lost(result)


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


def test_worker_killed_and_restarted(make_bridge: BridgeFactory) -> None:
    env = make_bridge()
    worker = env.worker()

    def crash(_: int) -> None:
        worker.kill()
        worker.start()

    result = run_with_faults("worker: SIGKILL, restarted", env, [worker], crash)
    # The kills' exit codes are recorded on the worker; the final stop must be clean.
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
