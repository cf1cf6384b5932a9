"""Configuration: one TOML file plus a few environment overrides, validated once at start-up.

Relative paths in the file are relative to the file's own folder, so a deployment can ship
`/etc/referral-bridge/` as a unit. `${VAR}` in a path expands from the environment (for example
systemd's `${CREDENTIALS_DIRECTORY}`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from referral_bridge.core.limits import MAX_EVENT_BYTES
from referral_bridge.errors import ConfigError

CONFIG_ENV = "REFERRAL_BRIDGE_CONFIG"
#: Environment variables that override one setting each: name -> (section, key).
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "REFERRAL_BRIDGE_BROKER_URL": ("broker", "url"),
    "REFERRAL_BRIDGE_LEDGER_URL": ("ledger", "url"),
    "REFERRAL_BRIDGE_DATA_DIR": ("bridge", "data_dir"),
}
#: The file paths in a provider's table: resolved against the config file's folder, and all left
#: as written when operator tools load settings without keys (`resolve_keys=False`).
PROVIDER_FILE_KEYS = ("public_keys", "ca_bundle", "client_cert", "client_key", "broker_ca_bundle")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BridgeSection(_Section):
    #: CloudEvents `source` of everything the bridge publishes.
    source: str = "urn:referral-bridge"
    data_dir: Path = Path("var/data")
    policy_file: Path = Path("policy.toml")
    #: At most MAX_EVENT_BYTES: the sealing limits are derived from it (core/limits.py), so a
    #: referral from any event accepted can be sealed and opened.
    max_message_bytes: Annotated[int, Field(ge=1024, le=MAX_EVENT_BYTES)] = MAX_EVENT_BYTES
    #: Attempts at a message whose processing keeps failing before it is dead-lettered.
    max_processing_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    #: Wait before a failed message is tried again (in the broker's retry queue, never in the
    #: worker), doubling with each further failure up to `retry_max_delay_seconds`.
    retry_delay_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    retry_max_delay_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    #: How often the worker looks for holds that have ended and unsent outbox rows.
    scheduler_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0

    @model_validator(mode="after")
    def _retry_delays_grow(self) -> BridgeSection:
        if self.retry_max_delay_seconds < self.retry_delay_seconds:
            raise ValueError("retry_max_delay_seconds must not be less than retry_delay_seconds")
        return self


class TopologySection(_Section):
    inbound_exchange: str = "police.events"
    work_queue: str = "referral-bridge.events"
    referrals_exchange: str = "victim-services.referrals"
    #: Providers publish `victim.referral.outcome` here, with their provider id as routing key.
    outcomes_exchange: str = "victim-services.outcomes"
    tasks_exchange: str = "officer.tasks"
    dead_letter_queue: str = "referral-bridge.dead-letter"
    #: Where failed messages wait before they are tried again; empty: "<work_queue>.retry".
    retry_queue: str = ""


class BrokerSection(_Section):
    #: Empty: the embedded transport under the data directory (for trying the bridge only).
    url: str = ""
    #: Messages the broker may hand the worker before it acks them (a batch can only be
    #: filled from these, so at least `batch_size`).
    prefetch: Annotated[int, Field(ge=1, le=1000)] = 64
    #: Group commit: up to this many messages share one ledger transaction, one window of
    #: publisher confirms and one ack. 1 turns batching off.
    batch_size: Annotated[int, Field(ge=1, le=500)] = 32
    #: The longest the first message of a batch waits while more keep arriving, in seconds.
    #: A message alone never waits: the batch is what has already arrived.
    batch_max_wait_seconds: Annotated[float, Field(ge=0, le=1)] = 0.02
    #: "quorum" declares the work, retry and dead-letter queues as RabbitMQ quorum queues:
    #: replicated over a cluster, they survive the loss of a minority of its nodes (see
    #: docs/operations.md, "Quorum queues"). An existing queue keeps the type it was declared
    #: with: changing this needs new queue names (or the old queues drained and deleted).
    queue_type: Literal["classic", "quorum"] = "classic"
    #: AMQP heartbeat of the consuming connection, in whole seconds; a silent (half-open)
    #: connection is noticed in about two periods. Unset: derived from the delivery timeouts
    #: (45 s by default), which no in-place delivery outlasts; shorter notices sooner but may
    #: drop the connection during a slow delivery pass (churn, not loss).
    heartbeat_seconds: Annotated[int, Field(ge=1, le=600)] | None = None
    topology: TopologySection = TopologySection()

    @model_validator(mode="after")
    def _batch_fits_prefetch(self) -> BrokerSection:
        if self.queue_type == "quorum" and not self.url:
            raise ValueError(
                'queue_type = "quorum" needs RabbitMQ ([broker] url): the embedded broker has '
                "one kind of queue"
            )
        if self.batch_size > self.prefetch and "batch_size" not in self.model_fields_set:
            # The default follows a smaller prefetch (set before batching existed).
            object.__setattr__(self, "batch_size", self.prefetch)
        if self.batch_size > self.prefetch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed prefetch ({self.prefetch}): "
                "a batch is filled from what the broker has handed over; raise prefetch or "
                "lower batch_size"
            )
        return self


class LedgerSection(_Section):
    #: Empty: SQLite (WAL) in the data directory. PostgreSQL for several workers.
    url: str = ""


class KeysSection(_Section):
    #: The bridge's private signing key (P-256 JWK with a kid, mode 0600).
    signing_key: Path


class ProviderSection(_Section):
    #: Longest one delivery attempt may take (https: connect + read timeout), in seconds. It is
    #: also the delivery engine's pass budget: passes run on the consumer thread, which pings the
    #: systemd watchdog (WatchdogSec=120), so a pass (budget + one attempt) stays well inside it.
    ATTEMPT_LIMIT_SECONDS: ClassVar[float] = 20.0
    #: Hosts a plain `amqp://` broker_url may name (tests and local brokers only).
    LOOPBACK_HOSTS: ClassVar[frozenset[str]] = frozenset({"127.0.0.1", "localhost", "::1"})

    #: The provider's public key set (JWK or JWKS); referrals are encrypted to its current key.
    public_keys: Path
    #: Optional display name for summaries; never personal data.
    name: str | None = None
    #: How referrals reach the provider: over AMQP (default) or HTTPS POST.
    delivery: Literal["amqp", "https"] = "amqp"
    #: amqp: a provider-facing broker; empty means the force broker (`[broker] url`). Must be
    #: `amqps://` (server certificate and host name verified); plain `amqp://` only on loopback.
    broker_url: str = ""
    #: amqp: CA bundle the provider broker's certificate must chain to (default: system CAs).
    broker_ca_bundle: Path | None = None
    #: https: the provider's endpoint, e.g. "https://referrals.provider.example/v1/referrals".
    url: str | None = None
    #: https: CA bundle the provider's server certificate must chain to (default: system CAs).
    ca_bundle: Path | None = None
    #: https: client certificate and key for mutual TLS.
    client_cert: Path | None = None
    client_key: Path | None = None
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 5.0
    read_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 15.0

    @model_validator(mode="after")
    def _https_needs_a_url(self) -> ProviderSection:
        if self.delivery == "https" and not (self.url or "").startswith("https://"):
            raise ValueError('delivery = "https" needs url = "https://..."')
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        attempt = self.connect_timeout_seconds + self.read_timeout_seconds
        if self.delivery == "https" and attempt > self.ATTEMPT_LIMIT_SECONDS:
            raise ValueError(
                f"connect_timeout_seconds + read_timeout_seconds is {attempt:g}: one delivery "
                f"attempt may take at most {self.ATTEMPT_LIMIT_SECONDS:g} s (delivery runs on the "
                "thread that feeds the systemd watchdog); lower the timeouts"
            )
        if self.broker_url:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(self.broker_url)
                host = parts.hostname
            except ValueError:
                raise ValueError("broker_url is not a URL (amqps://user@host:5671/vhost)") from None
            if parts.scheme != "amqps" and not (
                parts.scheme == "amqp" and host in self.LOOPBACK_HOSTS
            ):
                raise ValueError(
                    "broker_url must be amqps:// (TLS, the server certificate and host name "
                    "verified): plain amqp:// would send the bridge's broker password and the "
                    "referrals' metadata in clear; it is allowed only for 127.0.0.1/localhost"
                )
        if self.broker_ca_bundle is not None and not self.broker_url:
            raise ValueError("broker_ca_bundle needs broker_url (the provider-facing broker)")
        return self


class DeliverySection(_Section):
    """Retries that never block other work: in place first, then parked in the ledger."""

    #: Quick attempts in place before a delivery is parked.
    attempts_in_place: Annotated[int, Field(ge=1, le=10)] = 3
    #: Parked deliveries are retried after this, doubling up to `park_max_seconds`.
    park_initial_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    park_max_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    #: Consecutive failures that open a provider's circuit. It stays open for
    #: `circuit_first_open_seconds` the first time, doubling at each failed probe up to
    #: `circuit_open_seconds`; a success closes it and brings the provider's parked rows forward.
    circuit_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    circuit_first_open_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    circuit_open_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: A referral past its deadline gets a fallback leaflet task only after this long unsent.
    fallback_grace_seconds: Annotated[float, Field(ge=0, le=86400)] = 900.0


class RetentionSection(_Section):
    """How long personal data is kept (UK GDPR Art. 5(1)(e), DPA 2018 s.39; see
    docs/data-protection.md). A force's data protection officer sets these."""

    #: Erase a matter's snapshots, delivered message bodies and consent recorders this many days
    #: after its last activity (decisions, actions and the audit trail are kept: ids only).
    #: At least 30: nothing is erased while a Victims' Code deadline or a hold could still run.
    erase_after_days: Annotated[int, Field(ge=30, le=3650)] = 365
    #: The worker's scheduled sweep: false leaves erasure to `referral-bridge retention`.
    sweep: bool = True
    #: How often the sweep runs, once among all workers.
    sweep_interval_hours: Annotated[float, Field(ge=1, le=168)] = 24.0


class MetricsSection(_Section):
    """Prometheus metrics and the health endpoints."""

    #: host:port for /metrics, /healthz and /readyz; empty disables the endpoint.
    listen: str = "127.0.0.1:9464"
    #: How often the worker recomputes this month's compliance gauges from the ledger.
    compliance_refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0


class Settings(_Section):
    """Validated settings; build with `load_settings`."""

    config_path: Path
    bridge: BridgeSection = BridgeSection()
    broker: BrokerSection = BrokerSection()
    ledger: LedgerSection = LedgerSection()
    keys: KeysSection
    providers: dict[str, ProviderSection]
    delivery: DeliverySection = DeliverySection()
    metrics: MetricsSection = MetricsSection()
    retention: RetentionSection = RetentionSection()

    @field_validator("providers")
    @classmethod
    def _at_least_one_provider(
        cls, value: dict[str, ProviderSection]
    ) -> dict[str, ProviderSection]:
        if not value:
            raise ValueError("at least one provider must be configured")
        return value

    @property
    def data_dir(self) -> Path:
        return self.bridge.data_dir

    @property
    def ledger_url(self) -> str:
        if self.ledger.url:
            return self.ledger.url
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.url


def _expand(value: str, env: Mapping[str, str], problems: list[str], key: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            problems.append(f"{key}: refers to ${{{name}}}, which is not set in the environment")
            return ""
        return env[name]

    return _ENV_REF.sub(sub, value)


def _resolve_paths(
    raw: dict[str, Any], base: Path, env: Mapping[str, str], problems: list[str]
) -> None:
    """Expand `${VAR}` and make relative paths relative to the config file's folder."""

    def fix(section: dict[str, Any], key: str, where: str) -> None:
        value = section.get(key)
        if isinstance(value, str):
            expanded = Path(_expand(value, env, problems, where))
            section[key] = expanded if expanded.is_absolute() else base / expanded

    for section_name, key in (
        ("bridge", "data_dir"),
        ("bridge", "policy_file"),
        ("keys", "signing_key"),
    ):
        section = raw.get(section_name)
        if isinstance(section, dict):
            fix(section, key, f"{section_name}.{key}")
    providers = raw.get("providers")
    if isinstance(providers, dict):
        for provider_id, provider in providers.items():
            if isinstance(provider, dict):
                for key in PROVIDER_FILE_KEYS:
                    fix(provider, key, f"providers.{provider_id}.{key}")


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_settings(  # noqa: C901 (every override and path, resolved in one place)
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    resolve_keys: bool = True,
) -> Settings:
    """Read, override from the environment and validate; raise ConfigError listing every problem.

    `resolve_keys=False` is for operator tools that need no key (`dlq`, `audit`): the paths of
    the signing key and of every provider file (PROVIDER_FILE_KEYS) are left exactly as written,
    `${VAR}` unexpanded, so that an unset `${CREDENTIALS_DIRECTORY}` outside systemd is no error.
    Such settings must not be used to load keys.
    """
    env = os.environ if env is None else env
    if path is None:
        if CONFIG_ENV not in env:
            raise ConfigError([f"no configuration file: pass --config PATH or set {CONFIG_ENV}"])
        path = Path(env[CONFIG_ENV])
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None

    for variable, (section, key) in ENV_OVERRIDES.items():
        if env.get(variable):
            raw.setdefault(section, {})[key] = env[variable]
    problems: list[str] = []
    # Without resolve_keys, key paths are set aside so that they are not expanded, then restored.
    aside: list[tuple[dict[str, Any], str, Any]] = []
    if not resolve_keys:
        providers = raw.get("providers")
        tables: list[tuple[Any, tuple[str, ...]]] = [(raw.get("keys"), ("signing_key",))]
        if isinstance(providers, dict):
            tables += [(provider, PROVIDER_FILE_KEYS) for provider in providers.values()]
        for table, names in tables:
            if isinstance(table, dict):
                aside += [(table, name, table.pop(name)) for name in names if name in table]
    _resolve_paths(raw, path.parent.resolve(), env, problems)
    for table, name, value in aside:
        table[name] = value
    raw["config_path"] = path
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        # Config holds no personal data, but keep messages short and about keys.
        problems += [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return settings
