"""The composition root: the one place that turns settings into real adapters.

Long on purpose: it is the one place, so the settings' checks (policy, keys, TLS files),
the provider routes and the wiring of the service layer belong together.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential_jitter,
)

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.events import DeadLetterReason
from referral_bridge.core.policy import Policy, PolicyError, load_policy_text
from referral_bridge.delivery import (
    AmqpRoute,
    DeliveryEngine,
    DeliveryPolicy,
    FallbackIssuer,
    HttpsRoute,
    ReferralsBrokerPublisher,
    Route,
)
from referral_bridge.delivery.https import tls_context
from referral_bridge.errors import ConfigError, LedgerUnavailableError
from referral_bridge.files import private_dir, private_tree
from referral_bridge.ledger import Ledger
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.sealing import (
    KeySet,
    PrivateKey,
    SealingError,
    load_key_set,
    seal,
)
from referral_bridge.sealing.rotation import load_signing_key
from referral_bridge.service.deciding import CaseDecider
from referral_bridge.service.effects import Effects, Sealer
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.holds import HoldExpiry
from referral_bridge.service.outbox import OutboxWriter, Routes
from referral_bridge.service.scheduled import ScheduledWork
from referral_bridge.settings import ProviderSection, Settings
from referral_bridge.transport.embedded import BrokerSpec, broker_spec
from referral_bridge.transport.publisher import Publisher
from referral_bridge.transport.topology import Topology

log = structlog.get_logger("referral_bridge.bootstrap")


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProviderSealer:
    """Seals payloads with the bridge's signing key to each provider's current public key.

    The signing key is the current key of the bridge's signing set (a private JWK or JWKS).
    """

    def __init__(self, signing_key: PrivateKey, provider_keys: Mapping[str, KeySet]) -> None:
        self._signing_key = signing_key
        self._provider_keys = dict(provider_keys)

    def seal(self, provider: str, payload: Mapping[str, Any]) -> str:
        return seal(payload, signing_key=self._signing_key, recipient=self._provider_keys[provider])


@dataclass(frozen=True, slots=True)
class Keys:
    signing_key: PrivateKey
    provider_keys: Mapping[str, KeySet]


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: policy file cannot be read: {exc.strerror}"]) from None
    try:
        return load_policy_text(text, source=str(path))
    except PolicyError as exc:
        raise ConfigError(list(exc.problems)) from None


def load_keys(settings: Settings) -> Keys:
    """Load every key, collecting all problems so an operator can fix them in one go."""
    problems: list[str] = []
    signing_key: PrivateKey | None = None
    try:
        signing_key = load_signing_key(settings.keys.signing_key)
    except SealingError as exc:
        problems.append(f"keys.signing_key: {exc}")
    provider_keys: dict[str, KeySet] = {}
    for provider_id, provider in settings.providers.items():
        try:
            provider_keys[provider_id] = load_key_set(provider.public_keys)
        except SealingError as exc:
            problems.append(f"providers.{provider_id}.public_keys: {exc}")
    if problems or signing_key is None:
        raise ConfigError(problems)
    return Keys(signing_key=signing_key, provider_keys=provider_keys)


def check_policy_providers(policy: Policy, settings: Settings) -> None:
    missing = sorted(policy.providers() - set(settings.providers))
    if missing:
        raise ConfigError(
            [
                f"{settings.bridge.policy_file}: the policy routes to provider {p!r}, which has no "
                f"[providers.{p}] section in {settings.config_path}"
                for p in missing
            ]
        )


def topology_of(settings: Settings) -> Topology:
    names = settings.broker.topology
    return Topology(
        inbound_exchange=names.inbound_exchange,
        work_queue=names.work_queue,
        referrals_exchange=names.referrals_exchange,
        outcomes_exchange=names.outcomes_exchange,
        tasks_exchange=names.tasks_exchange,
        dead_letter_queue=names.dead_letter_queue,
        retry_queue=names.retry_queue,
        queue_type=settings.broker.queue_type,
    )


def broker_of(settings: Settings) -> BrokerSpec:
    return broker_spec(settings.broker.url or None, settings.data_dir)


@dataclass(frozen=True, slots=True)
class Bridge:
    """Everything `run` needs, built and validated."""

    settings: Settings
    policy: Policy
    keys: Keys
    ledger: Ledger
    broker: BrokerSpec
    topology: Topology
    publisher: Publisher
    metrics: BridgeMetrics
    service: ReferralService
    holds: HoldExpiry
    scheduled: ScheduledWork
    delivery: DeliveryEngine

    def count_dead_letter(self, reason: DeadLetterReason) -> None:
        self.metrics.dead_letters.labels(reason=reason.value).inc()

    def close(self) -> None:
        self.delivery.close()
        self.publisher.close()
        self.ledger.dispose()


def provider_routes(
    settings: Settings, publisher: Publisher, topology: Topology, *, force: Route | None = None
) -> dict[str, Route]:
    """One route per provider: HTTPS, AMQP on its own broker, or AMQP on the force broker.

    `force` is the force-broker route to share (also the engine's default); one is built if not
    given. Nothing connects here: clients and broker connections open on first use.
    """
    force = force or AmqpRoute(publisher, name="amqp-force")
    routes: dict[str, Route] = {}
    for provider_id, provider in settings.providers.items():
        if provider.delivery == "https":
            assert provider.url is not None  # ProviderSection validates this
            _warn_if_retries_clamped(settings, provider_id)
            routes[provider_id] = HttpsRoute.build(
                provider=provider_id,
                url=provider.url,
                context=provider_tls(provider_id, provider),
                connect_timeout=provider.connect_timeout_seconds,
                read_timeout=provider.read_timeout_seconds,
            )
        elif provider.broker_url:
            provider_tls(provider_id, provider)  # the broker's CA bundle, loaded again at connect
            routes[provider_id] = AmqpRoute(
                ReferralsBrokerPublisher(
                    provider.broker_url,
                    exchange=topology.referrals_exchange,
                    ca_bundle=provider.broker_ca_bundle,
                ),
                name="amqp-provider",
                owns_publisher=True,
            )
        else:
            routes[provider_id] = force
    return routes


def provider_tls(provider_id: str, provider: ProviderSection) -> ssl.SSLContext | None:
    """The TLS context of a provider's own connection (HTTPS, or its amqps broker), its files
    loaded now: a CA bundle or client certificate that cannot be used is a ConfigError at
    start-up and in `check-config --offline`, not deliveries failing until their deadline.
    None when the provider has no connection of its own (the force broker)."""
    if provider.delivery == "https":
        ca, cert, key = provider.ca_bundle, provider.client_cert, provider.client_key
    elif provider.broker_url:
        ca, cert, key = provider.broker_ca_bundle, None, None
    else:
        return None
    try:
        return tls_context(ca_bundle=ca, client_cert=cert, client_key=key)
    except (OSError, ValueError) as exc:
        files = ", ".join(str(path) for path in (ca, cert, key) if path is not None)
        raise ConfigError(
            [
                f"providers.{provider_id}: TLS files cannot be loaded ({files or 'system CAs'}: "
                f"{type(exc).__name__}: {exc}); check the paths, that this user can read them, "
                "that they are PEM files and that the client certificate is its key's"
            ]
        ) from None


def _warn_if_retries_clamped(settings: Settings, provider_id: str) -> None:
    """Say at start-up when a provider's in-place retries cannot all fit in a delivery pass.

    They are not refused: the pass budget clamps them at run time (a retry starts only if a whole
    attempt still fits), so a stalled provider is parked after one attempt, and a fast failure
    (connection refused, 503) is still retried in place.
    """
    provider = settings.providers[provider_id]
    attempt = provider.connect_timeout_seconds + provider.read_timeout_seconds
    attempts = settings.delivery.attempts_in_place
    budget = ProviderSection.ATTEMPT_LIMIT_SECONDS
    if attempts * attempt > budget:
        # Expected with the defaults and harmless: informative, not a warning.
        log.info(
            "delivery.in_place_retries_clamped",
            provider=provider_id,
            attempts_in_place=attempts,
            attempt_s=attempt,
            budget_s=budget,
            detail="a retry in place starts only if a whole attempt fits in the pass budget; "
            "a timed-out delivery is parked at once",
        )


def validate(settings: Settings) -> tuple[Policy, Keys]:
    """Start-up checks that need no network: policy, providers, keys."""
    policy = load_policy(settings.bridge.policy_file)
    check_policy_providers(policy, settings)
    return policy, load_keys(settings)


def build_when_ready(
    settings: Settings, *, wait_seconds: float = 120.0, stop: threading.Event | None = None
) -> Bridge:
    """Build, waiting with backoff for a ledger that is still starting (e.g. after a reboot).

    Configuration errors are not retried: they need an operator.
    """
    validate(settings)
    for attempt in Retrying(
        stop=stop_after_delay(wait_seconds) | stop_when_event_set(stop or threading.Event()),
        wait=wait_exponential_jitter(multiplier=1.0, max=15.0),
        retry=retry_if_exception_type(LedgerUnavailableError),
        before_sleep=lambda state: log.warning(
            "ledger.waiting",
            attempts=state.attempt_number,
            detail=str(state.outcome.exception() if state.outcome else ""),
        ),
        reraise=True,
    ):
        with attempt:
            return build(settings)
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


def build(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Bridge:
    """Build the bridge; raises ConfigError, LedgerUnavailableError or LedgerSchemaError."""
    policy, keys = validate(settings)
    # Owner-only, with the embedded broker's message files (whole events) tightened if an older
    # version or a hand left them looser; the SQLite ledger's files are seen to by Ledger.open.
    private_dir(settings.data_dir)
    broker = broker_of(settings)
    for folder in {folder.parent for folder in broker.data_folders}:
        private_tree(folder)
    topology = topology_of(settings)
    publisher = Publisher(broker, topology)
    # Before the ledger opens: a bad CA bundle or client certificate is a ConfigError.
    force = AmqpRoute(publisher, name="amqp-force")
    routes = provider_routes(settings, publisher, topology, force=force)
    try:
        ledger = Ledger.open_for_worker(settings.ledger_url)
    except BaseException:
        for route in routes.values():
            route.close()
        raise
    metrics = BridgeMetrics()
    layer = service_layer(
        ledger=ledger,
        policy=policy,
        calendar=WorkingDayCalendar(),
        sealer=ProviderSealer(keys.signing_key, keys.provider_keys),
        routes=Routes(
            referrals_exchange=topology.referrals_exchange, tasks_exchange=topology.tasks_exchange
        ),
        source=settings.bridge.source,
        clock=clock,
        metrics=metrics,
        delivery=lambda fallbacks: DeliveryEngine(
            ledger=ledger,
            default_route=force,
            routes=routes,
            policy=DeliveryPolicy.from_settings(settings.delivery),
            clock=clock,
            metrics=metrics,
            fallbacks=fallbacks,
        ),
        max_message_bytes=settings.bridge.max_message_bytes,
        max_processing_attempts=settings.bridge.max_processing_attempts,
    )
    return Bridge(
        settings=settings,
        policy=policy,
        keys=keys,
        ledger=ledger,
        broker=broker,
        topology=topology,
        publisher=publisher,
        metrics=metrics,
        service=layer.service,
        holds=layer.holds,
        scheduled=layer.scheduled,
        delivery=layer.delivery,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceLayer:
    """The application's objects, wired: one message to a verdict, and the scheduled steps."""

    service: ReferralService
    holds: HoldExpiry
    scheduled: ScheduledWork
    delivery: DeliveryEngine


def service_layer(
    *,
    ledger: Ledger,
    policy: Policy,
    calendar: WorkingDayCalendar,
    sealer: Sealer,
    routes: Routes,
    source: str,
    clock: Callable[[], datetime],
    metrics: BridgeMetrics,
    delivery: Callable[[FallbackIssuer], DeliveryEngine],
    max_message_bytes: int,
    max_processing_attempts: int,
    ledger_attempts: int = 3,
) -> ServiceLayer:
    """Wire the service, its effects, the delivery engine and the scheduled steps.

    `delivery` builds the engine around the fallback issuer it is given (the effects): the
    engine issues fallback tasks through it, and the service and the scheduled steps deliver
    through the engine, so each is built once, in this order, and nothing is set afterwards.
    Tests and benchmarks wire the same way with their own ports.
    """
    outbox = OutboxWriter(source=source, routes=routes)
    effects = Effects(
        sealer=sealer,
        outbox=outbox,
        policy=policy,
        calendar=calendar,
        metrics=metrics,
    )
    engine = delivery(effects)
    decider = CaseDecider(policy=policy, calendar=calendar, effects=effects)
    service = ReferralService(
        ledger=ledger,
        policy=policy,
        calendar=calendar,
        decider=decider,
        effects=effects,
        delivery=engine,
        metrics=metrics,
        clock=clock,
        max_message_bytes=max_message_bytes,
        max_processing_attempts=max_processing_attempts,
        ledger_attempts=ledger_attempts,
    )
    holds = HoldExpiry(
        ledger=ledger, decider=decider, delivery=engine, metrics=metrics, clock=clock
    )
    scheduled = ScheduledWork(
        ledger=ledger,
        policy=policy,
        calendar=calendar,
        outbox=outbox,
        delivery=engine,
        clock=clock,
    )
    return ServiceLayer(service=service, holds=holds, scheduled=scheduled, delivery=engine)
