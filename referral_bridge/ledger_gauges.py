"""Gauges computed from the ledger and the broker when Prometheus scrapes, not kept in memory.

Computing at scrape time means every worker sharing a ledger reports the same figures, and a
restart loses nothing. Only counts, ages and configured provider ids leave here: no personal data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from referral_bridge.ledger import schema as t
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import TransportError
from referral_bridge.transport.topology import queue_depth

log = structlog.get_logger("referral_bridge.ledger_gauges")

#: The outbox kind of a referral (withdrawals and tasks have no Victims' Code deadline).
REFERRAL_KIND = "referral"
#: A referral handed over after its deadline.
DELIVERED_LATE = "delivered_late"
#: A referral still not handed over, its deadline passed.
UNDELIVERED = "undelivered"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    """The ledger's state at one moment, as the gauges report it."""

    holds_open: int
    #: Seconds since the oldest referral still waiting to be handed over was written; 0 if none.
    #: A referral the provider refused for good is not waiting: it is counted in `rejected`.
    oldest_undelivered_referral_seconds: float
    #: Referrals the provider refused for good, kept for an operator (never delivered).
    rejected: int = 0
    #: (provider, DELIVERED_LATE or UNDELIVERED) -> referrals.
    deadlines_missed: Mapping[tuple[str, str], int] = field(default_factory=dict)


def ledger_figures(engine: Engine, now: datetime) -> LedgerFigures:
    """Read the figures in one connection; raises SQLAlchemyError when the ledger is away."""
    outbox = t.outbox
    referral = outbox.c.kind == REFERRAL_KIND
    with engine.connect() as connection:
        holds_open = connection.execute(
            select(func.count()).select_from(t.holds).where(t.holds.c.open)
        ).scalar_one()
        oldest = connection.execute(
            select(func.min(outbox.c.created_at)).where(
                referral, outbox.c.published_at.is_(None), outbox.c.rejected_at.is_(None)
            )
        ).scalar_one()
        rejected = connection.execute(
            select(func.count())
            .select_from(outbox)
            .where(referral, outbox.c.published_at.is_(None), outbox.c.rejected_at.is_not(None))
        ).scalar_one()
        late = and_(outbox.c.published_at.is_not(None), outbox.c.published_at > outbox.c.deadline)
        overdue = and_(outbox.c.published_at.is_(None), outbox.c.deadline < now)
        missed_rows = connection.execute(
            select(outbox.c.provider, outbox.c.published_at.is_(None), func.count())
            .where(referral, outbox.c.deadline.is_not(None), or_(late, overdue))
            .group_by(outbox.c.provider, outbox.c.published_at.is_(None))
        ).all()
        connection.rollback()
    oldest_age = 0.0
    if oldest is not None:
        oldest_at = t.UtcDateTime().process_result_value(oldest, engine.dialect)
        if oldest_at is not None:
            oldest_age = max(0.0, (now - oldest_at).total_seconds())
    missed: dict[tuple[str, str], int] = {}
    for provider, unpublished, count in missed_rows:
        key = (provider or "unknown", UNDELIVERED if unpublished else DELIVERED_LATE)
        missed[key] = missed.get(key, 0) + int(count)
    return LedgerFigures(
        holds_open=int(holds_open),
        oldest_undelivered_referral_seconds=oldest_age,
        rejected=int(rejected),
        deadlines_missed=missed,
    )


class _CachedDepth:
    """The dead-letter queue's depth, asked of the broker at most once per `ttl` seconds."""

    def __init__(
        self,
        read: Callable[[], int],
        *,
        ttl: float,
        monotonic: Callable[[], float],
    ) -> None:
        self._read = read
        self._ttl = ttl
        self._monotonic = monotonic
        self._value: int | None = None
        self._expires = 0.0

    def __call__(self) -> int:
        if self._value is None or self._monotonic() >= self._expires:
            # A failure is not cached: the next scrape asks again.
            self._value = self._read()
            self._expires = self._monotonic() + self._ttl
        return self._value


class LedgerGauges(Collector):
    """A Prometheus collector: holds open, oldest undelivered referral, referrals rejected for
    good, missed Victims' Code deadlines, and the dead-letter queue's depth.

    A source that cannot be read leaves its gauges out of that scrape and sets
    `referral_bridge_gauge_source_up{source=...}` to 0, so an alert fires on the outage itself
    rather than on a misleading zero.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        broker: BrokerSpec,
        dead_letter_queue: str,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        depth_ttl: float = 5.0,
        depth: Callable[[BrokerSpec, str], int] = queue_depth,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._depth = _CachedDepth(
            lambda: depth(broker, dead_letter_queue), ttl=depth_ttl, monotonic=monotonic
        )

    def describe(self) -> Iterable[Metric]:
        # Lets a registry check names without querying the ledger at registration.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        holds, oldest, rejected, missed, dead, up = self._families()
        try:
            figures = ledger_figures(self._engine, self._clock())
        except SQLAlchemyError as exc:
            log.warning("metrics.ledger_unavailable", error_type=type(exc).__name__)
            up.add_metric(["ledger"], 0)
        else:
            up.add_metric(["ledger"], 1)
            holds.add_metric([], figures.holds_open)
            oldest.add_metric([], figures.oldest_undelivered_referral_seconds)
            rejected.add_metric([], figures.rejected)
            for (provider, state), count in sorted(figures.deadlines_missed.items()):
                missed.add_metric([provider, state], count)
        try:
            depth = self._depth()
        except TransportError as exc:
            log.warning("metrics.broker_unavailable", error_type=type(exc).__name__)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            dead.add_metric([], depth)
        return [holds, oldest, rejected, missed, dead, up]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "referral_bridge_holds_open",
                "Victims whose referral decision is on hold (awaiting consent or a time limit).",
            ),
            GaugeMetricFamily(
                "referral_bridge_oldest_undelivered_referral_age_seconds",
                "Age of the oldest referral waiting to be handed over to a provider; 0 when none.",
            ),
            GaugeMetricFamily(
                "referral_bridge_referrals_rejected",
                "Referrals their provider refused for good, kept undelivered for an operator.",
            ),
            GaugeMetricFamily(
                "referral_bridge_victims_code_deadlines_missed",
                "Referrals that missed their Victims' Code deadline: handed over late, or still "
                "undelivered with the deadline passed.",
                labels=["provider", "state"],
            ),
            GaugeMetricFamily(
                "referral_bridge_dead_letter_queue_depth",
                "Messages waiting on the dead-letter queue for an operator.",
            ),
            GaugeMetricFamily(
                "referral_bridge_gauge_source_up",
                "1 when the source of the gauges above (ledger, broker) answered this scrape.",
                labels=["source"],
            ),
        )
