# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; the broker probe calls it directly.
"""The operations endpoint: /metrics, /healthz and /readyz over HTTP, on the bounded server.

- `/metrics`: Prometheus text exposition of the bridge's counters and the ledger gauges;
- `/healthz`: 200 while the process can answer at all (a liveness probe);
- `/readyz`: 200 only when the consumer is consuming, the broker answers, the ledger takes a
  write and the keys are loaded; otherwise 503 with a JSON body naming the checks that failed.

Bodies hold codes, counts and names from the configuration, never personal data. The probes are
also what `referral-bridge check-config` uses to test the broker and the ledger.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from amqp.exceptions import AccessRefused, AMQPError
from kombu.connection import Connection
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from referral_bridge.errors import ConfigError
from referral_bridge.ledger import schema as t
from referral_bridge.runtime.http_server import BoundedServer, ServerLimits
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.wire import JSON_CONTENT

log = structlog.get_logger("referral_bridge.runtime.health")

#: The consumer loop comes round at least once a second when idle; a loop silent for longer
#: than this is reconnecting to the broker or stuck in one message.
CONSUMER_STALE_SECONDS = 30.0
#: Readiness probes open a connection each; a probe result is reused for this long.
PROBE_CACHE_SECONDS = 2.0
#: How long a probe waits for the broker or the database before calling it unreachable.
PROBE_TIMEOUT_SECONDS = 5.0


def parse_listen(listen: str) -> tuple[str, int] | None:
    """`host:port` (IPv6 as `[::1]:9464`) from `[metrics] listen`; None when it is empty.

    Port 0 asks the kernel for a free port (the worker logs the one it got).
    """
    value = listen.strip()
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not _digits(port_text) or int(port_text) > 65535:
        raise ConfigError(
            [
                f'metrics.listen: {value!r} is not host:port; use e.g. "127.0.0.1:9464", '
                '"[::1]:9464", or "" to turn the endpoint off'
            ]
        )
    return host, int(port_text)


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One readiness check: whether it passed, and a PII-free line saying why."""

    ok: bool
    detail: str


Check = Callable[[], CheckResult]


class Heartbeat:
    """When the consumer loop last came round; written by the worker, read by readiness."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._last: float | None = None

    def beat(self) -> None:
        self._last = self._monotonic()

    def age(self) -> float | None:
        """Seconds since the last beat, or None before the first."""
        last = self._last
        return None if last is None else self._monotonic() - last


def consumer_check(heartbeat: Heartbeat, *, stale_after: float = CONSUMER_STALE_SECONDS) -> Check:
    """Ready while the consumer loop has come round within `stale_after` seconds."""

    def check() -> CheckResult:
        age = heartbeat.age()
        if age is None:
            return CheckResult(False, "not consuming yet: connecting to the broker")
        if age > stale_after:
            return CheckResult(
                False,
                f"consumer loop silent for {age:.0f} s: reconnecting to the broker or stuck on "
                "a message; see the log",
            )
        return CheckResult(True, "consuming")

    return check


class CachedCheck:
    """Reuses a check's result for `ttl` seconds, so scrapes cannot flood the broker or database."""

    def __init__(
        self, check: Check, *, ttl: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._check = check
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._result: CheckResult | None = None
        self._expires = 0.0

    def __call__(self) -> CheckResult:
        with self._lock:
            if self._result is None or self._monotonic() >= self._expires:
                self._result = self._check()
                self._expires = self._monotonic() + self._ttl
            return self._result


class Readiness:
    """Named checks, all of which must pass for /readyz to answer 200."""

    def __init__(self, checks: Mapping[str, Check] | None = None) -> None:
        self._checks: dict[str, Check] = dict(checks or {})

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def evaluate(self) -> dict[str, CheckResult]:
        results: dict[str, CheckResult] = {}
        for name, check in self._checks.items():
            try:
                results[name] = check()
            except Exception as exc:  # noqa: BLE001 (a check that raises has failed)
                # Only the type: an exception's text is not ours to vouch for.
                log.warning("health.check_failed", detail=name, error_type=type(exc).__name__)
                results[name] = CheckResult(False, f"check raised {type(exc).__name__}")
        return results


# --- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerProbe:
    """What a connection attempt and a passive declare of the work queue found."""

    reachable: bool
    queue_exists: bool = False
    waiting: int | None = None
    #: The exception class when unreachable; the broker's text can name hosts and users only.
    error: str | None = None
    #: The broker answered but refused the credentials (restarting will not help).
    refused_login: bool = False


def probe_broker(
    spec: BrokerSpec, queue: str, *, timeout: float = PROBE_TIMEOUT_SECONDS
) -> BrokerProbe:
    """Connect once (no retries) and passively declare `queue`, which never creates it."""
    connection = Connection(
        spec.url, transport_options=dict(spec.transport_options), connect_timeout=timeout
    )
    try:
        try:
            # max_retries=0 is one attempt: kombu would otherwise retry inside our timeout.
            connection.ensure_connection(max_retries=0)
        except (OperationalError, AMQPError, *connection.connection_errors, OSError) as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            return BrokerProbe(
                reachable=False,
                error=type(cause).__name__,
                refused_login=isinstance(cause, AccessRefused) or isinstance(exc, AccessRefused),
            )
        try:
            with connection.channel() as channel:
                declared = channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:
            return BrokerProbe(reachable=True, queue_exists=False)
        except (OperationalError, AMQPError, *connection.connection_errors, OSError) as exc:
            return BrokerProbe(reachable=False, error=type(exc).__name__)
        return BrokerProbe(reachable=True, queue_exists=True, waiting=int(declared.message_count))
    finally:
        try:
            connection.release()
        except (AMQPError, *connection.connection_errors, OSError):
            connection.collect()


def broker_check(spec: BrokerSpec, queue: str) -> Check:
    """Ready while the broker accepts a connection and the work queue exists on it."""

    def check() -> CheckResult:
        found = probe_broker(spec, queue)
        if not found.reachable:
            return CheckResult(
                False, f"broker unreachable ({found.error}): check RabbitMQ and the network"
            )
        if not found.queue_exists:
            return CheckResult(False, "work queue missing on the broker: restart the bridge")
        return CheckResult(True, "connected")

    return check


@dataclass(frozen=True, slots=True)
class LedgerProbe:
    """What connecting to the ledger and a rolled-back write found."""

    reachable: bool
    #: The schema version recorded in the ledger; 0 for a database without the bridge's tables.
    schema_version: int | None = None
    writable: bool = False
    #: The driver's exception class; safe for any output.
    error: str | None = None
    #: The first line of the driver's message when connecting failed (it names the host or the
    #: database, never data); for check-config, which an operator reads at a terminal.
    message: str | None = None


def probe_ledger(engine: Engine) -> LedgerProbe:
    """Read the schema version, then write and roll back, so nothing in the ledger changes.

    The write is an INSERT into the matter locks (what every event's transaction does, and
    allowed to the bridge's least-privilege role on PostgreSQL), or, in an empty database, a
    CREATE TABLE (which the first start needs to be allowed): both are undone by the rollback.
    """
    try:
        connection = engine.connect()
    except SQLAlchemyError as exc:
        return LedgerProbe(reachable=False, error=_db_error(exc), message=_db_message(exc))
    with connection:
        try:
            version = _schema_version(connection)
        except SQLAlchemyError as exc:
            connection.rollback()
            return LedgerProbe(reachable=False, error=_db_error(exc))
        try:
            if version > 0:
                connection.execute(t.locks.insert().values(ref="rb:write-probe"))
            else:
                connection.execute(text("CREATE TABLE rb_write_probe (x INTEGER)"))
        except SQLAlchemyError as exc:
            return LedgerProbe(
                reachable=True, schema_version=version, writable=False, error=_db_error(exc)
            )
        finally:
            connection.rollback()
    return LedgerProbe(reachable=True, schema_version=version, writable=True)


def _schema_version(connection: Any) -> int:
    if not inspect(connection).has_table(t.schema_info.name):
        return 0
    value = connection.execute(
        select(t.schema_info.c.value).where(t.schema_info.c.key == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def _db_message(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    lines = str(original if original is not None else type(exc).__name__).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _db_error(exc: SQLAlchemyError) -> str:
    """The driver's exception class: the text could quote a query's parameters."""
    original = getattr(exc, "orig", None)
    return type(original if original is not None else exc).__name__


def ledger_check(engine: Engine) -> Check:
    """Ready while the ledger takes a (rolled-back) write."""

    def check() -> CheckResult:
        found = probe_ledger(engine)
        if not found.reachable:
            return CheckResult(False, f"ledger unreachable ({found.error}): check the database")
        if not found.writable:
            return CheckResult(
                False, f"ledger refuses writes ({found.error}): check disk space and permissions"
            )
        return CheckResult(True, "writable")

    return check


# --- the HTTP server ---------------------------------------------------------------------------


#: Prometheus and a few probes are all that call; a small cap keeps descriptors for the worker.
HEALTH_LIMITS = ServerLimits(request_seconds=10.0, max_connections=64)
_TEXT = "text/plain; charset=utf-8"
_NO_STORE = {"Cache-Control": "no-store"}


def create_health_app(registry: CollectorRegistry, readiness: Readiness) -> Starlette:
    """/metrics, /healthz and /readyz; sync handlers, so Starlette runs them on worker threads
    (the readiness probes and ledger gauges block on the broker and the database)."""

    def metrics(_request: Request) -> Response:
        try:
            body = generate_latest(registry)
        except Exception as exc:  # noqa: BLE001 (a failing collector is a 500)
            log.error("health.metrics_failed", error_type=type(exc).__name__)
            return Response(b"metrics collection failed\n", 500, _NO_STORE, _TEXT)
        return Response(body, 200, _NO_STORE, CONTENT_TYPE_LATEST)

    def healthz(_request: Request) -> Response:
        return Response(b"ok\n", 200, _NO_STORE, _TEXT)

    def readyz(_request: Request) -> Response:
        results = readiness.evaluate()
        failed = sorted(name for name, result in results.items() if not result.ok)
        document = {
            "status": "unready" if failed else "ready",
            "failed": failed,
            "checks": {
                name: {"ok": result.ok, "detail": result.detail} for name, result in results.items()
            },
        }
        status = HTTPStatus.SERVICE_UNAVAILABLE if failed else HTTPStatus.OK
        body = json.dumps(document).encode() + b"\n"
        return Response(body, status, _NO_STORE, JSON_CONTENT)

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return Response(b"not found: try /metrics, /healthz or /readyz\n", 404, _NO_STORE, _TEXT)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        exception_handlers={404: not_found},
    )


class HealthServer:
    """Serves /metrics, /healthz and /readyz from a thread of its own until `stop`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Readiness,
        limits: ServerLimits = HEALTH_LIMITS,
    ) -> None:
        self._server = BoundedServer(
            create_health_app(registry, readiness),
            host=host,
            port=port,
            limits=limits,
            # Another process on the port must make bind fail, not silently share it.
            reuse_address=False,
            name="referral-bridge-health",
        )

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound (e.g. in use)."""
        self._server.start()

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when asked for port 0)."""
        if not self._server.running:
            raise RuntimeError("the health server is not started")
        return self._server.port

    @property
    def host(self) -> str:
        return self._server.host

    def stop(self) -> None:
        self._server.stop()
