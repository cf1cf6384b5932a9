"""The long-running worker: consume, run the hold scheduler, flush the outbox, stop cleanly.

Around the consumer it keeps systemd informed (READY once consuming, STOPPING on SIGTERM,
WATCHDOG while the consumer loop comes round) and serves /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import faulthandler
import functools
import signal
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from referral_bridge.bootstrap import Bridge
from referral_bridge.core.events import DeadLetterReason, EventType
from referral_bridge.core.retry import RetryPolicy
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.runtime.gauges import CompliancePoller, LedgerGauges
from referral_bridge.runtime.health import (
    PROBE_CACHE_SECONDS,
    CachedCheck,
    HealthServer,
    Heartbeat,
    Readiness,
    broker_check,
    consumer_check,
    ledger_check,
    parse_listen,
)
from referral_bridge.runtime.scheduler import RetentionSweep, Scheduler
from referral_bridge.runtime.systemd import Notifier, Watchdog, watchdog_interval
from referral_bridge.settings import Settings
from referral_bridge.transport.consumer import DEFAULT_HEARTBEAT_SECONDS, Consumer

log = structlog.get_logger("referral_bridge.runtime.worker")


@functools.cache
def process_notifier() -> Notifier:
    """The process's one Notifier, so the signal handler and `run` send STOPPING=1 only once."""
    return Notifier.from_environment()


def install_stop_signals(stop: threading.Event, *, notifier: Notifier | None = None) -> None:
    """SIGTERM and SIGINT ask the worker to stop after the message in hand.

    systemd hears STOPPING=1 at once, so `systemctl status` shows the drain rather than a hang.
    """
    notify = notifier if notifier is not None else process_notifier()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("worker.stopping", reason=signal.Signals(signum).name)
        notify.stopping("stopping: finishing the message in hand, then flushing the outbox")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


class LoopTick:
    """The consumer's idle callback: records that the loop is alive, then runs the scheduler.

    The consumer calls it each time round its loop (after every message, and at least once per
    drain timeout when idle), only while it is connected and consuming. So the heartbeat and the
    watchdog stop together with the loop: a hung handler or a lost broker stops the pings.
    """

    def __init__(
        self,
        *,
        scheduler: Callable[[], None],
        heartbeat: Heartbeat,
        watchdog: Watchdog,
        on_first: Callable[[], object],
    ) -> None:
        self._scheduler = scheduler
        self._heartbeat = heartbeat
        self._watchdog = watchdog
        self._on_first: Callable[[], object] | None = on_first

    def __call__(self) -> None:
        self._heartbeat.beat()
        if self._on_first is not None:
            on_first, self._on_first = self._on_first, None
            on_first()
        self._watchdog.beat()
        self._scheduler()


def readiness_of(bridge: Bridge, heartbeat: Heartbeat) -> Readiness:
    """The checks behind /readyz: consumer loop, broker, ledger.

    There is no `keys` check: keys are loaded once, into memory, and the bridge does not start
    without them, so such a check could never fail; the key files on disk are not what a running
    worker uses (`check-config` checks those).
    """
    return Readiness(
        {
            "consumer": consumer_check(heartbeat),
            "broker": CachedCheck(
                broker_check(bridge.broker, bridge.topology.work_queue), ttl=PROBE_CACHE_SECONDS
            ),
            "ledger": CachedCheck(ledger_check(bridge.ledger.engine), ttl=PROBE_CACHE_SECONDS),
        }
    )


def retry_policy_of(settings: Settings) -> RetryPolicy:
    """Attempts and delays for messages whose processing fails, from `[bridge]`."""
    section = settings.bridge
    return RetryPolicy(
        max_attempts=section.max_processing_attempts,
        first_delay=timedelta(seconds=section.retry_delay_seconds),
        longest_delay=timedelta(seconds=section.retry_max_delay_seconds),
    )


def consumer_heartbeat_seconds(settings: Settings) -> float:
    """The AMQP heartbeat of the consuming connection, in seconds.

    Both ends give up on a connection after about two heartbeat periods without a byte from the
    other: RabbitMQ, and py-amqp when the loop calls `heartbeat_check`. That is how a half-open
    connection is noticed (in about 2 x this, rather than after TCP keepalive, if that works at
    all). But the loop neither sends nor reads while a handler runs, so two periods must outlast
    the longest handler: the in-place delivery attempts, each up to a provider's connect and
    read timeouts, plus a margin. A drop is not a loss (the message comes back and the ledger
    spots the duplicate), but it is churn. `[broker] heartbeat_seconds` overrides this, for a
    network that forgets idle connections sooner than two periods, or to notice them sooner.
    """
    if settings.broker.heartbeat_seconds is not None:
        return float(settings.broker.heartbeat_seconds)
    slowest = max(
        (p.connect_timeout_seconds + p.read_timeout_seconds for p in settings.providers.values()),
        default=0.0,
    )
    busy = settings.delivery.attempts_in_place * slowest
    return max(DEFAULT_HEARTBEAT_SECONDS, busy / 2 + 15.0)


def initialise_known_series(metrics: BridgeMetrics) -> None:
    """Export 0 for every label value known in advance, so that the first dead letter of a kind
    shows as an increase (an alert on `increase(...)` never fires for a series born at 1)."""
    for reason in DeadLetterReason:
        metrics.dead_letters.labels(reason=reason.value)
    for event_type in EventType:
        metrics.events_consumed.labels(type=event_type.value)


def exposition_registry(
    bridge: Bridge, compliance: CompliancePoller | None = None
) -> CollectorRegistry:
    """Everything /metrics shows: the bridge's counters, the ledger gauges (with the month's
    compliance figures when a poller computes them), the process."""
    initialise_known_series(bridge.metrics)
    registry = CollectorRegistry()
    registry.register(bridge.metrics.registry)
    registry.register(
        LedgerGauges(
            engine=bridge.ledger.engine,
            broker=bridge.broker,
            dead_letter_queue=bridge.topology.dead_letter_queue,
            compliance=compliance,
        )
    )
    registry.register(ProcessCollector(registry=None))
    return registry


def start_health_server(
    bridge: Bridge,
    readiness: Readiness,
    notifier: Notifier,
    compliance: CompliancePoller | None = None,
) -> HealthServer | None:
    """Serve the endpoint if configured; a port already in use is logged, not fatal.

    Referring victims matters more than being observed: a second worker on the same host with
    the same configuration still works, and Prometheus alerts on the target it cannot scrape.
    A malformed address is a configuration error (raised as ConfigError, exit 3).
    """
    address = parse_listen(bridge.settings.metrics.listen)
    if address is None:
        log.info("health.disabled", detail="metrics.listen is empty")
        return None
    host, port = address
    server = HealthServer(
        host=host,
        port=port,
        registry=exposition_registry(bridge, compliance),
        readiness=readiness,
    )
    try:
        server.start()
    except OSError as exc:
        log.warning(
            "health.unavailable",
            url_host=f"{host}:{port}",
            error_type=type(exc).__name__,
            detail=f"cannot listen ({exc.strerror}); running without /metrics and /readyz: "
            'set [metrics] listen to a free address, or to "" to turn the endpoint off',
        )
        notifier.status(f"running without metrics: cannot listen on {host}:{port}")
        return None
    # Tests ask for port 0 and read the one the kernel chose from this line.
    log.info(
        "health.listening", url_host=f"{host}:{server.port}", detail="/metrics /healthz /readyz"
    )
    return server


def run(bridge: Bridge, stop: threading.Event, *, notifier: Notifier | None = None) -> None:
    """Consume until `stop` is set; publish everything left in the outbox before returning.

    READY=1 goes to systemd from the consumer's first idle callback, that is once the consumer
    is connected and consuming, so `systemctl start` returns only when the bridge is working.
    """
    notifier = notifier if notifier is not None else process_notifier()
    settings = bridge.settings
    watchdog = Watchdog(notifier, watchdog_interval())
    if watchdog.enabled and not faulthandler.is_enabled():
        # On a watchdog timeout systemd sends SIGABRT: the journal then shows where it hung.
        faulthandler.enable(file=sys.stderr, all_threads=True)
    heartbeat = Heartbeat()
    compliance = CompliancePoller(
        bridge.ledger.engine, interval=settings.metrics.compliance_refresh_seconds
    )
    server = start_health_server(bridge, readiness_of(bridge, heartbeat), notifier, compliance)
    stop_compliance = threading.Event()
    if server is not None:
        # Only when someone can scrape the figures: a thread of its own, never the consumer's.
        compliance.start(stop_compliance)
    try:
        if bridge.broker.embedded:
            log.warning(
                "broker.embedded",
                detail="using the embedded broker under the data directory: for trying the "
                "bridge only, not for production (a crash loses in-flight messages; no "
                "publisher confirms)",
                path=str(settings.data_dir),
            )
        # Crash recovery: whatever an earlier run committed but did not publish goes out first.
        notifier.status("publishing what an earlier run left in the outbox")
        recovered = bridge.scheduled.flush()
        log.info(
            "worker.started",
            transport="embedded" if bridge.broker.embedded else "amqp",
            queue=bridge.topology.work_queue,
            count=recovered,
        )
        notifier.status("connecting to the broker")

        def consuming() -> None:
            notifier.ready(f"consuming {bridge.topology.work_queue}")
            log.info(
                "worker.ready",
                detail=f"watchdog every {watchdog.interval:g} s" if watchdog.enabled else "",
            )

        consumer = Consumer(
            bridge.broker,
            bridge.topology,
            handler=bridge.service.handle,
            publisher=bridge.publisher,
            prefetch=settings.broker.prefetch,
            idle_callback=LoopTick(
                scheduler=Scheduler(
                    bridge,
                    interval=settings.bridge.scheduler_interval_seconds,
                    retention=RetentionSweep(bridge.ledger, settings.retention),
                ),
                heartbeat=heartbeat,
                watchdog=watchdog,
                on_first=consuming,
            ),
            on_dead_lettered=bridge.count_dead_letter,
            on_retried=bridge.metrics.retries.inc,
            heartbeat=consumer_heartbeat_seconds(settings),
            retry_policy=retry_policy_of(settings),
            batch_handler=bridge.service.handle_batch,
            batch_size=settings.broker.batch_size,
            batch_max_wait=settings.broker.batch_max_wait_seconds,
            count_redelivery=bridge.ledger.count_redelivery,
        )
        try:
            consumer.run(stop)
        finally:
            # Also when the consumer gave up on the broker: systemd sees the stop begin.
            notifier.stopping("stopping: flushing the outbox")
        flushed = bridge.scheduled.flush()
        log.info("worker.stopped", count=flushed)
    finally:
        stop_compliance.set()
        compliance.join(timeout=10.0)
        if server is not None:
            server.stop()
