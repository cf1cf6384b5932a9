# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; these helpers drive it directly.
"""Drive a real `referral-bridge run` subprocess against RabbitMQ and inspect what it did.

Each BridgeEnv owns exchanges and queues with a unique prefix, its own keys, config file and
ledger, so tests never see each other's messages (nor those of a bridge running on the machine).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue, binding
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.exc import DBAPIError

from referral_bridge.ledger.schema import actions, outbox, processed_events
from referral_bridge.resources import DEFAULT_POLICY, SAMPLES
from referral_bridge.sealing import generate_key_pair
from referral_bridge.transport import Publisher, Topology, broker_spec, queue_depth
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
POLICY = DEFAULT_POLICY
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
PROVIDERS = ("lancashire-victim-services", "homicide-service")
LANCASHIRE = "lancashire-victim-services"
BRIDGE_KID = "bridge-e2e"
#: Environment variables that would silently redirect a worker away from the test's own config.
_BRIDGE_ENV = (
    "REFERRAL_BRIDGE_CONFIG",
    "REFERRAL_BRIDGE_BROKER_URL",
    "REFERRAL_BRIDGE_LEDGER_URL",
    "REFERRAL_BRIDGE_DATA_DIR",
)


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m referral_bridge`."""
    script = Path(sys.executable).with_name("referral-bridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "referral_bridge"]


def worker_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _BRIDGE_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def key_path(keys: Path, kid: str, kind: str) -> Path:
    return keys / f"{kid}.{kind}.jwk"


def provider_kid(provider: str) -> str:
    return f"{provider}-e2e"


# --- events ------------------------------------------------------------------------------------


def load_sample(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((SAMPLES / name).read_bytes())
    return document


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_ref(prefix: str = "E2E") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


def crime_event(
    *,
    crime_ref: str,
    victim_id: str,
    version: int = 1,
    reported_at: datetime | None = None,
    category: str = "burglary",
    ho_class: str = "28E",
    consent: str = "not_asked",
    status: str = "recorded",
    linked_incident_refs: Iterable[str] = (),
    event_id: str | None = None,
) -> dict[str, Any]:
    """A crime.recorded event built from the contract's burglary sample, with a fresh identity."""
    reported = reported_at or datetime.now(UTC) - timedelta(minutes=10)
    event = load_sample("crime-recorded-burglary.json")
    event["id"] = event_id or str(uuid.uuid4())
    event["time"] = iso(reported + timedelta(minutes=5))
    data = event["data"]
    data.update(
        crime_ref=crime_ref,
        version=version,
        reported_at=iso(reported),
        recorded_at=iso(reported + timedelta(minutes=4)),
        status=status,
        linked_incident_refs=list(linked_incident_refs),
    )
    data["offence"] = {"ho_class": ho_class, "label": f"{category} offence", "category": category}
    victim = data["victims"][0]
    victim["victim_id"] = victim_id
    victim["consent"] = (
        {"referral": consent, "recorded_at": iso(reported), "recorded_by": "PC 4412"}
        if consent != "not_asked"
        else {"referral": "not_asked", "recorded_at": None, "recorded_by": None}
    )
    return event


def incident_event(
    *,
    incident_ref: str,
    victim_id: str,
    version: int = 1,
    opened_at: datetime | None = None,
    consent: str = "given",
    linked_crime_ref: str | None = None,
) -> dict[str, Any]:
    """An incident.recorded event built from the contract's ASB sample, with a fresh identity."""
    opened = opened_at or datetime.now(UTC) - timedelta(minutes=30)
    event = load_sample("incident-recorded-asb.json")
    event["id"] = str(uuid.uuid4())
    event["time"] = iso(opened + timedelta(minutes=5))
    data = event["data"]
    data.update(
        incident_ref=incident_ref,
        version=version,
        opened_at=iso(opened),
        linked_crime_ref=linked_crime_ref,
    )
    victim = data["victims"][0]
    victim["victim_id"] = victim_id
    victim["consent"] = (
        {"referral": consent, "recorded_at": iso(opened), "recorded_by": "PCSO 7731"}
        if consent != "not_asked"
        else {"referral": "not_asked", "recorded_at": None, "recorded_by": None}
    )
    return event


def consent_event(
    *, case_ref: str, victim_id: str, referral: str, recorded_at: datetime | None = None
) -> dict[str, Any]:
    at = recorded_at or datetime.now(UTC) - timedelta(minutes=1)
    event = load_sample("consent-updated.json")
    event["id"] = str(uuid.uuid4())
    event["time"] = iso(at)
    event["data"] = {
        "case_ref": case_ref,
        "victim_id": victim_id,
        "referral": referral,
        "recorded_at": iso(at),
        "recorded_by": "PC 4412",
        "lawful_basis": "consent" if referral == "given" else None,
    }
    return event


def encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event).encode()


def with_changes(event: Mapping[str, Any], **data: Any) -> dict[str, Any]:
    """A deep copy of `event` with a new id and the given `data` fields replaced."""
    changed = copy.deepcopy(dict(event))
    changed["id"] = str(uuid.uuid4())
    changed["data"].update(data)
    return changed


# --- the broker side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message taken off a collecting queue, body as raw bytes."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    routing_key: str

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


def unique_topology() -> Topology:
    tag = f"e2e-{uuid.uuid4().hex[:12]}"
    return Topology(
        inbound_exchange=f"{tag}.police.events",
        work_queue=f"{tag}.referral-bridge.events",
        referrals_exchange=f"{tag}.victim-services.referrals",
        outcomes_exchange=f"{tag}.victim-services.outcomes",
        tasks_exchange=f"{tag}.officer.tasks",
        dead_letter_queue=f"{tag}.referral-bridge.dead-letter",
    )


def _topic(name: str) -> Exchange:
    # Same settings as the bridge's own declaration, so neither side's declare is refused.
    return Exchange(name, type="topic", durable=True, auto_delete=False, delivery_mode=2)


# --- the worker --------------------------------------------------------------------------------


@dataclass
class Worker:
    """`referral-bridge --log-json run --config FILE` as a subprocess, output to a log file."""

    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)
    #: Added to the worker's environment (e.g. NOTIFY_SOCKET, as systemd sets it).
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Worker:
        assert self.process is None or self.process.poll() is not None, "already running"
        log_file = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [*cli_command(), "--log-json", "run", "--config", str(self.config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**worker_environment(), **self.env},
            )
        finally:
            log_file.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code once the worker has finished the message in hand."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.exit_codes.append(code)
        return code

    def kill(self) -> int:
        """SIGKILL: the crash the ledger and the broker must recover from."""
        assert self.process is not None
        self.process.kill()
        code = self.process.wait(timeout=30)
        self.exit_codes.append(code)
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines (other lines, if any, are skipped)."""
        events = []
        for line in self.log_text().splitlines():
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(document, dict):
                events.append(document)
        return events


# --- one test's bridge -------------------------------------------------------------------------


@dataclass
class BridgeEnv:
    """A bridge configuration of a test's own, with queues that collect what it publishes."""

    root: Path
    topology: Topology
    rabbitmq_url: str
    ledger_url: str
    config: Path
    keys: Path
    collect_referrals: str
    collect_tasks: str
    workers: list[Worker] = field(default_factory=list)
    _engine: Engine | None = None
    _publisher: Publisher | None = None

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        rabbitmq_url: str = RABBITMQ_URL,
        ledger_url: str = "",
        max_message_bytes: int = 1024 * 1024,
        prefetch: int = 16,
        scheduler_interval: float = 1.0,
        metrics_listen: str = "",
        worker_broker_url: str | None = None,
        worker_ledger_url: str | None = None,
        broker_heartbeat: int | None = None,
        queue_type: str = "classic",
    ) -> BridgeEnv:
        """`worker_*_url`: where the workers reach the broker and the ledger, when not where the
        test does (through a fault proxy). `broker_heartbeat`: `[broker] heartbeat_seconds`."""
        root.mkdir(parents=True, exist_ok=True)
        keys = root / "keys"
        generate_key_pair(BRIDGE_KID, keys)
        for provider in PROVIDERS:
            generate_key_pair(provider_kid(provider), keys)
        topology = replace(unique_topology(), queue_type=queue_type)
        providers = "".join(
            f'\n[providers.{p}]\npublic_keys = "keys/{provider_kid(p)}.public.jwk"\n'
            for p in PROVIDERS
        )
        config = root / "referral-bridge.toml"
        config.write_text(
            "[bridge]\n"
            'source = "urn:referral-bridge:e2e"\n'
            'data_dir = "data"\n'
            f"policy_file = {json.dumps(str(POLICY))}\n"
            f"max_message_bytes = {max_message_bytes}\n"
            "max_processing_attempts = 5\n"
            f"scheduler_interval_seconds = {scheduler_interval}\n\n"
            "[broker]\n"
            f"url = {json.dumps(worker_broker_url or rabbitmq_url)}\n"
            f"prefetch = {prefetch}\n"
            f"queue_type = {json.dumps(queue_type)}\n"
            + (f"heartbeat_seconds = {broker_heartbeat}\n" if broker_heartbeat else "")
            + "\n"
            "[broker.topology]\n"
            f'inbound_exchange = "{topology.inbound_exchange}"\n'
            f'work_queue = "{topology.work_queue}"\n'
            f'referrals_exchange = "{topology.referrals_exchange}"\n'
            f'outcomes_exchange = "{topology.outcomes_exchange}"\n'
            f'tasks_exchange = "{topology.tasks_exchange}"\n'
            f'dead_letter_queue = "{topology.dead_letter_queue}"\n\n'
            f"[ledger]\nurl = {json.dumps(worker_ledger_url or ledger_url)}\n\n"
            # Off by default: concurrent workers would otherwise compete for one port.
            f"[metrics]\nlisten = {json.dumps(metrics_listen)}\n\n"
            f'[keys]\nsigning_key = "keys/{BRIDGE_KID}.private.jwk"\n' + providers,
            encoding="utf-8",
        )
        tag = topology.work_queue.split(".", 1)[0]
        env = cls(
            root=root,
            topology=topology,
            rabbitmq_url=rabbitmq_url,
            ledger_url=ledger_url or f"sqlite:///{(root / 'data' / 'ledger.sqlite3').resolve()}",
            config=config,
            keys=keys,
            collect_referrals=f"{tag}.collect.referrals",
            collect_tasks=f"{tag}.collect.tasks",
        )
        env._declare_collectors()
        return env

    # --- broker ---

    def connection(self) -> Connection:
        return broker_spec(self.rabbitmq_url, self.root).connection()

    def _declare_collectors(self) -> None:
        """Queues bound to the outbound exchanges before any worker starts, so nothing is missed."""
        referrals, tasks = (
            _topic(self.topology.referrals_exchange),
            _topic(self.topology.tasks_exchange),
        )
        with self.connection() as connection:
            channel = connection.channel()
            for name, exchange in (
                (self.collect_referrals, referrals),
                (self.collect_tasks, tasks),
            ):
                Queue(
                    name,
                    bindings=[binding(exchange, routing_key="#")],
                    durable=True,
                    auto_delete=False,
                ).declare(channel=channel)
            channel.close()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(broker_spec(self.rabbitmq_url, self.root), self.topology)
        return self._publisher

    def publish(self, *events: Mapping[str, Any] | bytes, routing_key: str | None = None) -> None:
        """Publish events (dicts or raw bytes) to the inbound exchange as the police systems do."""
        for event in events:
            if isinstance(event, bytes):
                body, key = event, routing_key or "crime.recorded"
            else:
                body, key = encode(event), routing_key or str(event["type"])
            self.publisher.publish_inbound(body, key)

    def publish_raw(self, items: Iterable[tuple[str, bytes]]) -> int:
        count = 0
        for key, body in items:
            self.publisher.publish_inbound(body, key)
            count += 1
        return count

    def depth(self, queue: str) -> int:
        return queue_depth(broker_spec(self.rabbitmq_url, self.root), queue)

    def take_all(self, queue: str) -> list[Received]:
        """Take every message now on `queue` (acknowledged on receipt), bodies as raw bytes."""
        received: list[Received] = []
        with self.connection() as connection:
            channel = connection.channel()
            channel.auto_decode = False
            bound = Queue(queue, no_declare=True)(channel)
            while (message := bound.get(no_ack=True)) is not None:
                received.append(
                    Received(
                        body=bytes(message.body),
                        headers=dict(message.headers or {}),
                        message_id=message.properties.get("message_id"),
                        routing_key=str(message.delivery_info.get("routing_key", "")),
                    )
                )
            channel.close()
        return received

    # --- ledger ---

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.ledger_url, pool_pre_ping=True)
        return self._engine

    def _scalar(self, query: Any) -> int:
        try:
            with self.engine.connect() as connection:
                return int(connection.execute(query).scalar_one())
        except DBAPIError:  # the worker has not created the ledger or its tables yet
            return -1

    def processed_count(self) -> int:
        return self._scalar(select(func.count()).select_from(processed_events))

    def unpublished_count(self) -> int:
        """Outbox rows still to deliver; cancelled (and rejected) rows will never be sent."""
        return self._scalar(
            select(func.count())
            .select_from(outbox)
            .where(outbox.c.published_at.is_(None), outbox.c.rejected_at.is_(None))
        )

    def outbox_rows(self) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(outbox)))

    def action_rows(self) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(actions)))

    def processed_results(self) -> dict[str, str]:
        with self.engine.connect() as connection:
            return {
                row.event_id: row.result
                for row in connection.execute(
                    select(processed_events.c.event_id, processed_events.c.result)
                )
            }

    def settled(self, processed: int) -> bool:
        """At least `processed` events recorded, the work queue empty, the outbox published."""
        return (
            self.processed_count() >= processed
            and self.depth(self.topology.work_queue) == 0
            and self.unpublished_count() == 0
        )

    def wait_settled(self, processed: int, *, timeout: float = 60.0) -> None:
        if not wait_until(lambda: self.settled(processed), timeout=timeout, interval=0.25):
            raise AssertionError(
                f"not settled within {timeout}s: processed {self.processed_count()} of "
                f"{processed}, work queue {self.depth(self.topology.work_queue)}, unpublished "
                f"{self.unpublished_count()}; logs: {[str(w.log_path) for w in self.workers]}"
            )

    def wait_dead_letters(self, count: int, *, timeout: float = 30.0) -> None:
        assert wait_until(
            lambda: self.depth(self.topology.dead_letter_queue) >= count, timeout=timeout
        ), f"expected {count} dead letters, found {self.depth(self.topology.dead_letter_queue)}"

    # --- workers ---

    def worker(self, name: str = "worker") -> Worker:
        """A new (not started) worker for this config, logging to its own file."""
        worker = Worker(config=self.config, log_path=self.root / f"{name}.log")
        self.workers.append(worker)
        return worker

    def start_worker(self, name: str = "worker") -> Worker:
        return self.worker(name).start()

    def close(self) -> None:
        """Stop workers, forget connections, delete this test's exchanges and queues."""
        for worker in self.workers:
            if worker.running and worker.process is not None:
                worker.process.kill()
                worker.process.wait(timeout=30)
        if self._publisher is not None:
            self._publisher.close()
        if self._engine is not None:
            self._engine.dispose()
        with self.connection() as connection:
            for queue in (
                self.topology.work_queue,
                self.topology.dead_letter_queue,
                self.topology.retry_queue,
                self.collect_referrals,
                self.collect_tasks,
            ):
                with connection.channel() as channel:
                    channel.queue_delete(queue=queue)
            for exchange in (
                self.topology.inbound_exchange,
                self.topology.referrals_exchange,
                self.topology.tasks_exchange,
            ):
                with connection.channel() as channel:
                    channel.exchange_delete(exchange=exchange)


def run_cli(
    config: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`referral-bridge --log-json ARGS --config CONFIG` as an operator runs it; `env` is added
    to the environment (e.g. REFERRAL_BRIDGE_LEDGER_URL naming the owner role for `migrate`)."""
    return subprocess.run(
        [*cli_command(), "--log-json", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        errors="replace",
        env={**worker_environment(), **(env or {})},
        timeout=timeout,
        check=False,
    )


def open_with_cli(
    body: bytes, *, key: Path, verify_with: Path
) -> subprocess.CompletedProcess[bytes]:
    """`referral-bridge open - --key KEY --verify-with PUB`, the provider's side, on stdin."""
    return subprocess.run(
        [*cli_command(), "open", "-", "--key", str(key), "--verify-with", str(verify_with)],
        input=body,
        capture_output=True,
        env=worker_environment(),
        timeout=60,
        check=False,
    )
