"""Fixtures for tests against real brokers: RabbitMQ on 127.0.0.1, and the embedded broker."""

# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these fixtures drive it directly.

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu.entity import Queue
from kombu.message import Message

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.core.retry import RetryPolicy
from referral_bridge.ledger import Ledger
from referral_bridge.transport import (
    Ack,
    BrokerSpec,
    Consumer,
    InboundMessage,
    Publisher,
    Topology,
    Verdict,
    broker_spec,
    queue_depth,
)
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    ledger_url_for,
    make_keys,
    make_layer,
    require_postgres,
    throwaway_postgres_database,
)
from tests.waiting import wait_until

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Retries a test can wait for: 5 attempts, 0.1 to 0.4 s apart.
QUICK_RETRIES = RetryPolicy(
    max_attempts=5,
    first_delay=timedelta(milliseconds=100),
    longest_delay=timedelta(milliseconds=400),
)


class RecordingHandler:
    """A handler that records what it was given and answers with scripted verdicts.

    An Exception in the script is raised instead of answered; the last entry repeats.
    """

    def __init__(self, *script: Verdict | Exception, gate: threading.Event | None = None) -> None:
        self.script = list(script) or [Ack()]
        self.received: list[InboundMessage] = []
        self.gate = gate

    def __call__(self, message: InboundMessage) -> Verdict:
        self.received.append(message)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        step = self.script[min(len(self.received), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        return step


@dataclass
class RunningConsumer:
    """A Consumer running in a thread, with the means to stop it and see how it ended."""

    consumer: Consumer
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    idle_calls: list[float] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> RunningConsumer:
        def target() -> None:
            try:
                self.consumer.run(self.stop)
            except BaseException as exc:  # noqa: BLE001  (tests assert on `errors`, whatever ended the thread)
                self.errors.append(exc)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        return self

    def halt(self, timeout: float = 10.0) -> float:
        """Ask the consumer to stop, wait for run() to return; the seconds it took."""
        started = time.monotonic()
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout)
        return time.monotonic() - started

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class BrokerHarness:
    """A broker with a topology of its own for one test, and helpers to drive and inspect it."""

    spec: BrokerSpec
    topology: Topology
    publisher: Publisher
    running: list[RunningConsumer] = field(default_factory=list)

    def start_consumer(
        self, handler: Callable[[InboundMessage], Verdict], **options: Any
    ) -> RunningConsumer:
        """Run a Consumer of the work queue in a thread until the test ends or halts it."""
        options.setdefault("unparked_pause", 0.0)
        options.setdefault("retry_policy", QUICK_RETRIES)
        options.setdefault("drain_timeout", 0.2)
        idle_calls: list[float] = []
        then_idle: Callable[[], None] | None = options.pop("idle_callback", None)

        def on_idle() -> None:
            idle_calls.append(time.monotonic())
            if then_idle is not None:
                then_idle()

        consumer = Consumer(
            self.spec,
            self.topology,
            handler=handler,
            publisher=self.publisher,
            idle_callback=on_idle,
            **options,
        )
        running = RunningConsumer(consumer=consumer, idle_calls=idle_calls)
        self.running.append(running.start())
        assert wait_until(lambda: bool(running.idle_calls) or not running.alive), "not consuming"
        return running

    def depth(self, queue_name: str) -> int:
        return queue_depth(self.spec, queue_name)

    def fetch(self, queue_name: str) -> Message | None:
        """Take one message off `queue_name` with its body as raw bytes, or None if empty."""
        connection = self.spec.connection()
        try:
            channel = connection.channel()
            if hasattr(channel, "auto_decode"):
                channel.auto_decode = False
            message: Message | None = Queue(queue_name, no_declare=True)(channel).get(no_ack=True)
            return message
        finally:
            connection.release()

    def fetch_eventually(self, queue_name: str, timeout: float = 10.0) -> Message:
        found: list[Message] = []

        def take() -> bool:
            message = self.fetch(queue_name)
            if message is not None:
                found.append(message)
            return bool(found)

        assert wait_until(take, timeout=timeout), f"nothing arrived on {queue_name}"
        return found[0]

    def close(self) -> None:
        for running in self.running:
            running.halt()
        self.publisher.close()


def unique_topology() -> Topology:
    """Names of a test's own, so that tests never see each other's messages."""
    tag = f"test-{uuid.uuid4().hex[:12]}"
    return Topology(
        inbound_exchange=f"{tag}.police.events",
        work_queue=f"{tag}.referral-bridge.events",
        referrals_exchange=f"{tag}.victim-services.referrals",
        outcomes_exchange=f"{tag}.victim-services.outcomes",
        tasks_exchange=f"{tag}.officer.tasks",
        dead_letter_queue=f"{tag}.referral-bridge.dead-letter",
    )


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The local RabbitMQ's URL; skips the test when it is down, but fails it under CI."""
    if not _rabbitmq_reachable():
        message = "RabbitMQ is not reachable on 127.0.0.1:5672"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must start it before the tests")
        pytest.skip(message)
    return RABBITMQ_URL


@pytest.fixture
def topology() -> Topology:
    return unique_topology()


def _delete_topology(spec: BrokerSpec, topology: Topology) -> None:
    connection = spec.connection()
    try:
        for queue in (topology.work_queue, topology.dead_letter_queue, topology.retry_queue):
            with connection.channel() as channel:
                channel.queue_delete(queue=queue)
        for exchange in (
            topology.inbound_exchange,
            topology.referrals_exchange,
            topology.outcomes_exchange,
            topology.tasks_exchange,
        ):
            with connection.channel() as channel:
                channel.exchange_delete(exchange=exchange)
    finally:
        connection.release()


@pytest.fixture
def rabbit(rabbitmq_url: str, topology: Topology, tmp_path: Path) -> Iterator[BrokerHarness]:
    """RabbitMQ with this test's own exchanges and queues, deleted afterwards."""
    spec = broker_spec(rabbitmq_url, tmp_path)
    harness = BrokerHarness(spec=spec, topology=topology, publisher=Publisher(spec, topology))
    try:
        yield harness
    finally:
        harness.close()
        _delete_topology(spec, topology)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A migrated ledger on each backend (modules with a `ledger` of their own override it)."""
    opened = Ledger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Ledger]:
    """An empty SQLite ledger of this test's own."""
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def embedded(topology: Topology, tmp_path: Path) -> Iterator[BrokerHarness]:
    """The embedded filesystem broker under this test's tmp_path."""
    spec = broker_spec(None, tmp_path)
    harness = BrokerHarness(spec=spec, topology=topology, publisher=Publisher(spec, topology))
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database of this test module's own (modules may define their own instead)."""
    require_postgres()
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger database, once on SQLite and once on PostgreSQL."""
    return ledger_url_for(str(request.param), request, tmp_path)


# --- the service, wired as bootstrap wires it, on a ledger of each backend ---------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    """A bridge signing key and a key pair per provider, generated once per test module."""
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def layer(
    ledger: Ledger, keys: KeyMaterial, publisher: RecordingPublisher, clock: FakeClock
) -> ServiceLayer:
    """The service, delivery engine and scheduled steps on `ledger`, publishing to `publisher`."""
    return make_layer(ledger=ledger, sealer=keys.sealer(), publisher=publisher, clock=clock)
