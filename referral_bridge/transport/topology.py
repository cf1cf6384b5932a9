# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""The broker topology of contract §1: names, and declaring them idempotently at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.entity import Exchange, Queue, binding

from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import (
    BrokerUnavailableError,
    QueueNotFoundError,
    TopologyError,
)

#: The one event type that comes in through the outcomes exchange (contract §1, §3).
OUTCOME_EVENT_TYPE = "victim.referral.outcome"


@dataclass(frozen=True, kw_only=True)
class Topology:
    """Exchange and queue names; the defaults are the wire contract's, each can be overridden."""

    inbound_exchange: str = "police.events"
    work_queue: str = "referral-bridge.events"
    work_bindings: tuple[str, ...] = ("crime.#", "incident.#", "consent.#", "task.#")
    referrals_exchange: str = "victim-services.referrals"
    #: Version 2: providers' outcomes, routed by provider id; the work queue takes all of them.
    outcomes_exchange: str = "victim-services.outcomes"
    outcome_bindings: tuple[str, ...] = ("#",)
    tasks_exchange: str = "officer.tasks"
    dead_letter_queue: str = "referral-bridge.dead-letter"
    #: Where failed messages wait before they are tried again; empty: "<work_queue>.retry", so
    #: that a work queue of another name gets a retry queue of its own.
    retry_queue: str = ""
    #: "quorum": the work, retry and dead-letter queues are RabbitMQ quorum queues (replicated
    #: over the cluster's nodes, data-safe on a node's loss); "classic" the single-node kind.
    queue_type: str = "classic"

    def __post_init__(self) -> None:
        if not self.retry_queue:
            object.__setattr__(self, "retry_queue", f"{self.work_queue}.retry")

    def exchange_for(self, event_type: str | None) -> str:
        """The exchange an event of this type comes in through: providers' outcomes through the
        outcomes exchange, everything else through the inbound exchange. For putting a dead
        letter back where it came from."""
        if event_type == OUTCOME_EVENT_TYPE:
            return self.outcomes_exchange
        return self.inbound_exchange


QUORUM = "quorum"


def _topic(name: str) -> Exchange:
    return Exchange(name, type="topic", durable=True, auto_delete=False, delivery_mode=2)


def work_queue_entity(topology: Topology) -> Queue:
    """The bridge's work queue, bound to the inbound exchange by each of the work bindings and to
    the outcomes exchange by each of the outcome bindings."""
    inbound = _topic(topology.inbound_exchange)
    outcomes = _topic(topology.outcomes_exchange)
    return Queue(
        topology.work_queue,
        bindings=[binding(inbound, routing_key=key) for key in topology.work_bindings]
        + [binding(outcomes, routing_key=key) for key in topology.outcome_bindings],
        durable=True,
        auto_delete=False,
        exclusive=False,
        queue_arguments=_type_arguments(topology) or None,
    )


def dead_letter_queue_entity(topology: Topology) -> Queue:
    """The dead-letter queue: fed through the default exchange, and without TTL or expiry.

    Dead letters wait for an operator; a broker that silently expired them would lose messages.
    """
    return Queue(
        topology.dead_letter_queue,
        durable=True,
        auto_delete=False,
        exclusive=False,
        queue_arguments=_type_arguments(topology) or None,
    )


def retry_queue_entity(topology: Topology) -> Queue:
    """The retry queue: nobody consumes it; each message expires into the work queue.

    A retry copy is published to it with a per-message TTL (its delay), and RabbitMQ dead-letters
    it, once expired, through the default exchange back into the work queue. So the delay costs
    the worker nothing and survives the worker's restarts. The embedded broker has no TTL: there
    the consumer moves due copies back itself (transport.retry.DueRetries).
    """
    return Queue(
        topology.retry_queue,
        durable=True,
        auto_delete=False,
        exclusive=False,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": topology.work_queue,
            **_type_arguments(topology),
            # A quorum queue dead-letters at most once unless told otherwise: an expired copy
            # must reach the work queue even if it is briefly unavailable.
            **(
                {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
                if topology.queue_type == QUORUM
                else {}
            ),
        },
    )


def _type_arguments(topology: Topology) -> dict[str, str]:
    return {"x-queue-type": QUORUM} if topology.queue_type == QUORUM else {}


def declare(channel: Any, topology: Topology) -> None:
    """Declare every exchange, queue and binding of `topology` on `channel`; safe to repeat.

    Raises TopologyError when the broker refuses, typically because an entity already exists with
    other settings (for instance a dead-letter queue created by hand with a message TTL).
    """
    entities = (
        _topic(topology.inbound_exchange),
        _topic(topology.referrals_exchange),
        _topic(topology.outcomes_exchange),
        _topic(topology.tasks_exchange),
        work_queue_entity(topology),
        dead_letter_queue_entity(topology),
        retry_queue_entity(topology),
    )
    channel_errors = getattr(channel.connection.client, "channel_errors", ())
    for entity in entities:
        try:
            entity.declare(channel=channel)
        except channel_errors as exc:
            raise TopologyError(
                f"the broker refused to declare {entity.name!r} ({exc}); if it already exists "
                "with other settings, delete it or make the bridge's configuration match it"
            ) from exc


def queue_depth(spec: BrokerSpec, queue_name: str) -> int:
    """How many messages wait, ready for delivery, in `queue_name` (unacked ones not counted).

    Uses a passive declare, so it never creates the queue. For tests and operator tools.
    """
    connection = spec.connection()
    try:
        with connection.channel() as channel:
            try:
                declared = channel.queue_declare(queue=queue_name, passive=True)
            except connection.channel_errors as exc:
                raise QueueNotFoundError(
                    f"queue {queue_name!r} does not exist on {spec.display_url}; start the "
                    "bridge once to declare its topology, or check the configured queue names"
                ) from exc
            return int(declared.message_count)
    except connection.connection_errors as exc:
        raise BrokerUnavailableError(
            f"cannot reach the broker at {spec.display_url} ({exc!r}); check that it is running"
        ) from exc
    finally:
        connection.release()
