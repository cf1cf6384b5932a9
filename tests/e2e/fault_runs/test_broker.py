"""Broker faults: connections reset, refused for a while, and paused past two heartbeats."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import RABBITMQ_URL
from tests.faults.harness import LONG, assert_nothing_lost, lasting, logged, run_with_faults
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


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


def test_broker_paused(make_bridge: BridgeFactory, broker_proxy: FaultProxy) -> None:
    """Nothing moves between the bridge and RabbitMQ for longer than two heartbeats, then the
    network heals.

    The consuming connection is given up by heartbeat: by the worker's own check, or, when a
    handler was waiting on a publish confirm meanwhile, by RabbitMQ, which closes its end (the
    worker finds out the moment the network heals). Either way it is replaced, and the messages
    it held come again; the publisher's connection, without heartbeats, just resumes.
    """
    heartbeat_s, pause_s = 2, 6.0
    env = make_bridge(
        worker_broker_url=broker_proxy.url_through(RABBITMQ_URL), broker_heartbeat=heartbeat_s
    )
    worker = env.worker()

    def pause(_: int) -> None:
        broker_proxy.pause()
        try:
            lasting(pause_s)
        finally:
            broker_proxy.resume()

    faults = 6 if LONG else 2
    result = run_with_faults(
        f"broker: paused {pause_s:g} s (heartbeat {heartbeat_s} s)",
        env,
        [worker],
        pause,
        events=6000 if LONG else 340,
        rate=60.0 if LONG else 20.0,
        faults=faults,
        reconnected="transport.consuming",
    )
    assert_nothing_lost(result)
    assert result.duplicated == 0, result.row()
    # Each pause cost the consuming connection: one at start-up, one after each pause.
    assert logged(worker, "transport.consuming") == 1 + faults, worker.log_path
