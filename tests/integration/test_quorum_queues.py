"""Quorum queues on the machine's RabbitMQ (one node): the quick checks `make test` runs.

The cluster test (tests/e2e/test_quorum_cluster.py, `make cluster-test`) kills a node under
two workers; these pin what it relies on: the queues are declared as quorum queues, retries
come back through a quorum retry queue, and a message that keeps coming back unsettled (a poison
message killing its worker) is dead-lettered once its deliveries reach the attempt limit.
"""

# mypy: disallow-untyped-calls=False

from __future__ import annotations

from dataclasses import replace

import pytest
from amqp.exceptions import PreconditionFailed
from kombu.entity import Queue

from referral_bridge.transport import Ack, Retry, declare
from referral_bridge.transport.topology import Topology
from tests.integration.conftest import (
    QUICK_RETRIES,
    BrokerHarness,
    RecordingHandler,
    unique_topology,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def topology() -> Topology:
    return replace(unique_topology(), queue_type="quorum")


def test_the_work_retry_and_dead_letter_queues_are_quorum_queues(rabbit: BrokerHarness) -> None:
    with rabbit.spec.connection() as connection:
        declare(connection.channel(), rabbit.topology)
        declare(connection.channel(), rabbit.topology)  # repeating it is harmless
        for name in (
            rabbit.topology.work_queue,
            rabbit.topology.retry_queue,
            rabbit.topology.dead_letter_queue,
        ):
            # A classic declaration of the same name is refused: the queue is a quorum queue.
            with pytest.raises(PreconditionFailed):
                Queue(name, durable=True)(connection.channel()).declare()


def test_a_retry_comes_back_through_the_quorum_retry_queue(rabbit: BrokerHarness) -> None:
    handler = RecordingHandler(Retry(detail="not yet", attempts=1), Ack())
    rabbit.start_consumer(handler)

    rabbit.publisher.publish_inbound(b"again", "crime.recorded")

    assert wait_until(lambda: len(handler.received) == 2, timeout=20)
    assert handler.received[1].attempts == 1
    assert wait_until(lambda: rabbit.depth(rabbit.topology.retry_queue) == 0)
    assert rabbit.depth(rabbit.topology.dead_letter_queue) == 0


def test_a_message_delivered_unsettled_too_often_is_dead_lettered_unhandled(
    rabbit: BrokerHarness,
) -> None:
    """Each requeue stands for a worker that died holding the message: the quorum queue counts
    them (x-delivery-count), so the attempt limit holds across workers and restarts."""
    with rabbit.spec.connection() as connection:
        declare(connection.channel(), rabbit.topology)
    rabbit.publisher.publish_inbound(b"poison", "crime.recorded")
    assert wait_until(lambda: rabbit.depth(rabbit.topology.work_queue) == 1)
    for _ in range(QUICK_RETRIES.max_attempts):
        with rabbit.spec.connection() as connection:
            message = Queue(rabbit.topology.work_queue, no_declare=True)(connection.channel()).get()
            assert message is not None
            message.requeue()
    handler = RecordingHandler(Ack())

    rabbit.start_consumer(handler)

    dead = rabbit.fetch_eventually(rabbit.topology.dead_letter_queue, timeout=20)
    assert dead.body == b"poison"
    assert dead.headers["x-rb-reason"] == "processing_error"
    assert dead.headers["x-rb-attempts"] == QUICK_RETRIES.max_attempts
    assert handler.received == []
    assert rabbit.depth(rabbit.topology.work_queue) == 0
