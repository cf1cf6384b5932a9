"""Recording fakes for the service's ports, and helpers the ledger and service tests share.

The fakes record what they were asked (`RecordingPublisher.sent`, `RecordingSealer.sealed`) so a
test asserts on effects rather than on calls into mocks. The PostgreSQL helpers give each test
module a database of its own, so modules never see each other's rows.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from referral_bridge.bootstrap import ProviderSealer, ServiceLayer, load_policy, service_layer
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.delivery import AmqpRoute, DeliveryEngine, FallbackIssuer
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as ledger_schema
from referral_bridge.ledger.roles import grant
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.resources import DEFAULT_POLICY
from referral_bridge.sealing import KeySet, generate_key_pair, load_key_set, load_private_key
from referral_bridge.service.effects import Sealer
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.outbox import Routes
from referral_bridge.transport import InboundMessage, PublishError
from tests.unit.factories import REPORTED_AT

REPO = Path(__file__).resolve().parents[1]
POLICY_FILE = DEFAULT_POLICY
#: Providers the shipped policy routes to; each needs keys for the service to seal to it.
PROVIDERS = ("lancashire-victim-services", "homicide-service")
REFERRALS_EXCHANGE = "victim-services.referrals"
TASKS_EXCHANGE = "officer.tasks"
#: Monday 10:41, an hour after the factories' report; the hold for explicit consent ends Tuesday
#: 09:41. Where the service tests' clocks start.
START = REPORTED_AT + timedelta(hours=1)


# --- clock ------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when a test says so; pass `clock.now` as the service's clock."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment


# --- publisher --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedMessage:
    """One message the service handed to the publisher."""

    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any]
    message_id: str
    content_type: str

    @property
    def event(self) -> dict[str, Any]:
        """The CloudEvent the body holds."""
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document

    @property
    def type(self) -> str:
        return str(self.event["type"])


class RecordingPublisher:
    """An OutboxPublisher that records each message; it can fail on demand or run a probe.

    `fail_times` makes the next N calls raise PublishError (the broker refused); `on_publish` is
    called with each message before it counts as sent, so a test can look at the ledger from
    the publisher's point of view.
    """

    def __init__(
        self,
        *,
        fail_times: int = 0,
        on_publish: Callable[[PublishedMessage], None] | None = None,
    ) -> None:
        self.sent: list[PublishedMessage] = []
        self.failures = 0
        self.fail_times = fail_times
        self.on_publish = on_publish

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str,
        content_type: str,
        mandatory: bool = False,  # noqa: ARG002  (OutboxPublisher protocol; no unroutable messages here)
    ) -> None:
        message = PublishedMessage(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            headers=dict(headers),
            message_id=message_id,
            content_type=content_type,
        )
        if self.fail_times > 0:
            self.fail_times -= 1
            self.failures += 1
            raise PublishError(f"test broker refused a message to {exchange}")
        if self.on_publish is not None:
            self.on_publish(message)
        self.sent.append(message)

    def of_type(self, event_type: str) -> list[PublishedMessage]:
        return [m for m in self.sent if m.type == event_type]


# --- sealers ----------------------------------------------------------------------------------


class RecordingSealer:
    """A Sealer that records each payload and returns a recognisable fake token."""

    def __init__(self) -> None:
        self.sealed: list[tuple[str, dict[str, Any]]] = []

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str:
        self.sealed.append((provider, dict(payload)))
        return f"sealed-for-{provider}-{len(self.sealed)}"


class FailingSealer:
    """A Sealer that always raises `error` (e.g. a message stuffed with personal data)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str:  # noqa: ARG002  (Sealer protocol)
        self.calls += 1
        raise self.error


# --- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMaterial:
    """A generated bridge signing key and one key pair per provider, as files and loaded sets."""

    directory: Path
    bridge_private: Path
    bridge_public: Path
    provider_private: Mapping[str, Path]
    provider_public: Mapping[str, Path]

    def sealer(self) -> ProviderSealer:
        return ProviderSealer(
            load_private_key(self.bridge_private),
            {p: load_key_set(path) for p, path in self.provider_public.items()},
        )

    def provider_keys(self, provider: str) -> KeySet:
        """The provider's private key set, to open what was sealed to it."""
        return load_key_set(self.provider_private[provider])

    def bridge_verification_keys(self) -> KeySet:
        return load_key_set(self.bridge_public)


def make_keys(directory: Path) -> KeyMaterial:
    bridge = generate_key_pair("bridge-test", directory)
    providers = {p: generate_key_pair(p, directory) for p in PROVIDERS}
    return KeyMaterial(
        directory=directory,
        bridge_private=bridge.private_path,
        bridge_public=bridge.public_path,
        provider_private={p: f.private_path for p, f in providers.items()},
        provider_public={p: f.public_path for p, f in providers.items()},
    )


# --- the service ------------------------------------------------------------------------------


#: Builds a test's delivery engine around the fallback issuer it is handed (bootstrap's order).
EngineFactory = Callable[[FallbackIssuer, BridgeMetrics], DeliveryEngine]


def force_broker_engine(
    ledger: Ledger, publisher: RecordingPublisher, clock: FakeClock
) -> EngineFactory:
    """Everything through `publisher`, as on the force broker (no provider has its own route)."""

    def build(fallbacks: FallbackIssuer, metrics: BridgeMetrics) -> DeliveryEngine:
        return DeliveryEngine(
            ledger=ledger,
            default_route=AmqpRoute(publisher, name="amqp-force"),
            clock=clock.now,
            metrics=metrics,
            fallbacks=fallbacks,
        )

    return build


def make_layer(
    *,
    ledger: Ledger,
    sealer: Sealer,
    publisher: RecordingPublisher,
    clock: FakeClock,
    delivery: EngineFactory | None = None,
    max_processing_attempts: int = 3,
    max_message_bytes: int = 1024 * 1024,
    ledger_attempts: int = 3,
) -> ServiceLayer:
    """The service, its delivery engine and the scheduled steps, wired as bootstrap wires them,
    with the shipped policy and the given ports. `delivery` defaults to the force broker's
    engine on `publisher`."""
    metrics = BridgeMetrics()
    engine = delivery or force_broker_engine(ledger, publisher, clock)
    return service_layer(
        ledger=ledger,
        policy=load_policy(POLICY_FILE),
        calendar=WorkingDayCalendar(),
        sealer=sealer,
        routes=Routes(referrals_exchange=REFERRALS_EXCHANGE, tasks_exchange=TASKS_EXCHANGE),
        source="urn:test:referral-bridge",
        clock=clock.now,
        metrics=metrics,
        delivery=lambda fallbacks: engine(fallbacks, metrics),
        max_message_bytes=max_message_bytes,
        max_processing_attempts=max_processing_attempts,
        ledger_attempts=ledger_attempts,
    )


def make_service(
    *,
    ledger: Ledger,
    sealer: Sealer,
    publisher: RecordingPublisher,
    clock: FakeClock,
    **options: Any,
) -> ReferralService:
    """The service of `make_layer` (same options), for tests that only hand it messages."""
    return make_layer(
        ledger=ledger, sealer=sealer, publisher=publisher, clock=clock, **options
    ).service


# --- inbound events ---------------------------------------------------------------------------


def cloudevent(
    data: BaseModel | Mapping[str, Any],
    *,
    event_type: str,
    event_id: str | None = None,
    time: datetime | None = None,
    **extra: Any,
) -> bytes:
    """A CloudEvents 1.0 JSON body around `data`, as a police system would publish it."""
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else dict(data)
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "urn:test:police",
        "type": event_type,
        "time": (time or datetime(2026, 11, 23, 10, 0, tzinfo=UTC)).isoformat(),
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": payload,
        **extra,
    }
    return json.dumps(document).encode()


def inbound(body: bytes, *, routing_key: str = "crime.recorded") -> InboundMessage:
    """A raw message as the consumer would hand it to `ReferralService.handle`."""
    return InboundMessage(
        body=body, headers={}, routing_key=routing_key, redelivered=False, delivery_tag=1
    )


# --- PostgreSQL -------------------------------------------------------------------------------

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"


def postgres_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip when PostgreSQL is down, but fail under CI, where it must be running."""
    if postgres_reachable():
        return
    message = f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must start it before the tests")
    pytest.skip(message)


@contextmanager
def throwaway_postgres_database(prefix: str = "rb_it") -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, and drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # name is ours: hex digits and a prefix
    try:
        yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bridge_role(url: str) -> Iterator[str]:
    """The ledger at `url` migrated by its owner (postgres), and a LOGIN role of this test's own
    with only what `referral-bridge migrate --grant` gives the bridge (SELECT and INSERT on
    rb_audit); yields a URL that logs in as that role. The role is dropped afterwards.

    Role names are cluster-wide: a uuid keeps parallel tests (xdist) apart.
    """
    role = f"rb_bridge_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')  # name is ours: hex digits and a prefix
    try:
        owner = Ledger.open(url)
        try:
            with owner.engine.begin() as connection:
                grant(connection, role)
        finally:
            owner.dispose()
        yield make_url(url).set(username=role).render_as_string(hide_password=False)
    finally:
        database = make_url(url).database
        with psycopg.connect(
            f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}", autocommit=True
        ) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def empty_ledger_database(url: str) -> None:
    """Drop every ledger table, so the next `Ledger.open` starts from nothing."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            ledger_schema.metadata.drop_all(connection)
    finally:
        engine.dispose()


def ledger_url_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty ledger database on `backend` ("sqlite" or "postgresql").

    For PostgreSQL the test module needs a module-scoped `pg_database_url` fixture (built with
    `throwaway_postgres_database`); it is asked for only here, so SQLite runs need no server.
    """
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    url = str(request.getfixturevalue("pg_database_url"))
    empty_ledger_database(url)
    return url


def write_operator_config(folder: Path) -> Path:
    """A configuration shaped like the documented install's, as an operator's shell sees it: its
    keys live under ${CREDENTIALS_DIRECTORY}, which only the service has; data in `folder/data`."""
    shutil.copy(POLICY_FILE, folder / "policy.toml")
    path = folder / "referral-bridge.toml"
    path.write_text(
        '[bridge]\npolicy_file = "policy.toml"\ndata_dir = "data"\n\n'
        '[keys]\nsigning_key = "${CREDENTIALS_DIRECTORY}/bridge.private.jwk"\n\n'
        "[providers.lancashire-victim-services]\n"
        'public_keys = "/etc/referral-bridge/keys/absent.public.jwk"\n'
        "[providers.homicide-service]\n"
        'public_keys = "/etc/referral-bridge/keys/absent.public.jwk"\n'
        'client_cert = "${CREDENTIALS_DIRECTORY}/homicide-client.crt"\n'
        'client_key = "${CREDENTIALS_DIRECTORY}/homicide-client.key"\n'
        "[providers.remote-broker]\n"
        'public_keys = "/etc/referral-bridge/keys/absent.public.jwk"\n'
        'broker_url = "amqps://bridge@provider.example:5671/referrals"\n'
        'broker_ca_bundle = "${CREDENTIALS_DIRECTORY}/provider-ca.pem"\n',
        encoding="utf-8",
    )
    return path
