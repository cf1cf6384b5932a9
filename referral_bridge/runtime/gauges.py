"""Gauges computed from the ledger and the broker when Prometheus scrapes, not kept in memory.

Computing at scrape time means every worker sharing a ledger reports the same figures, and a
restart loses nothing. Only counts, ages and configured provider ids leave here: no personal data.
"""

from __future__ import annotations

import threading
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

from referral_bridge.core.calendar import LONDON
from referral_bridge.core.report import ALL, ComplianceReport, Period
from referral_bridge.ledger import schema as t
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import TransportError
from referral_bridge.transport.topology import queue_depth

log = structlog.get_logger("referral_bridge.runtime.gauges")

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
    #: Officer tasks still open past their due time, by kind (leaflet, crime_review, escalation).
    tasks_overdue: Mapping[str, int] = field(default_factory=dict)
    #: Crime-recording reviews raised and still open: no crime linked, task not completed.
    crime_reviews_open: int = 0


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
        tasks = t.tasks
        overdue_tasks = connection.execute(
            select(tasks.c.kind, func.count())
            .where(tasks.c.completed_at.is_(None), tasks.c.due_by < now)
            .group_by(tasks.c.kind)
        ).all()
        reviews = t.crime_reviews
        reviews_open = connection.execute(
            select(func.count())
            .select_from(reviews.outerjoin(tasks, tasks.c.task_id == reviews.c.task_id))
            .where(
                reviews.c.raised_at.is_not(None),
                reviews.c.resolved_at.is_(None),
                tasks.c.completed_at.is_(None),
            )
        ).scalar_one()
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
        tasks_overdue={str(kind): int(count) for kind, count in overdue_tasks},
        crime_reviews_open=int(reviews_open),
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


#: How often the worker recomputes the month's compliance figures (they change slowly, and on a
#: large ledger one computation takes a second or more: never at scrape time).
COMPLIANCE_REFRESH_SECONDS = 60.0

#: The month's shares exported under `referral_bridge_compliance_ratio{figure=...}`, as
#: (label, report section, column).
COMPLIANCE_RATIOS = (
    ("referred_in_time", "referrals", "share_in_time"),
    ("consent_asked", "consent", "share_asked"),
    ("tasks_on_time", "tasks", "share_on_time"),
    ("contacted_within_2wd", "provider_outcomes", "share_contacted_within_2wd"),
    ("crimes_recorded_within_24h", "crime_data_integrity", "share_recorded_within_24h"),
)
_REFERRAL_STATES = ("in_time", "late", "overdue", "rejected", "pending", "cancelled")
_TASK_STATES = ("completed_on_time", "completed_late", "overdue", "open", "escalated")


def this_month(now: datetime) -> Period:
    """The calendar month `now` is in (Europe/London), up to today."""
    today = now.astimezone(LONDON).date()
    return Period(today.replace(day=1), today)


class CompliancePoller:
    """The current month's compliance report, recomputed by a thread of the worker.

    The gauges read the latest result, so a scrape never waits for the ledger's GROUP BYs, and
    every worker sharing a ledger reports the same figures (each computes them).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float = COMPLIANCE_REFRESH_SECONDS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._report: ComplianceReport | None = None
        self._ok = False
        self._thread: threading.Thread | None = None

    @property
    def latest(self) -> tuple[ComplianceReport | None, bool]:
        """The last report computed (None before the first), and whether the last try worked."""
        with self._lock:
            return self._report, self._ok

    def refresh(self) -> None:
        from referral_bridge.report import produce

        now = self._clock()
        try:
            report = produce(self._engine, this_month(now), now=now, dead_letters=None)
        except SQLAlchemyError as exc:
            log.warning("metrics.compliance_unavailable", error_type=type(exc).__name__)
            with self._lock:
                self._ok = False
            return
        with self._lock:
            self._report, self._ok = report, True

    def start(self, stop: threading.Event) -> None:
        """Refresh now and every `interval` seconds until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 (logged by type only; the next round tries again)
                    log.error("metrics.compliance_failed", error_type=type(exc).__name__)
                stop.wait(self._interval)

        self._thread = threading.Thread(target=loop, name="compliance-gauges", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class LedgerGauges(Collector):
    """A Prometheus collector: holds open, oldest undelivered referral, referrals rejected for
    good, missed Victims' Code deadlines, tasks overdue, crime reviews open, the dead-letter
    queue's depth, and (with a CompliancePoller) the current month's compliance figures.

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
        compliance: CompliancePoller | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._depth = _CachedDepth(
            lambda: depth(broker, dead_letter_queue), ttl=depth_ttl, monotonic=monotonic
        )
        self._compliance = compliance

    def describe(self) -> Iterable[Metric]:
        # Lets a registry check names without querying the ledger at registration.
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        f = _families()
        up = f["up"]
        try:
            figures = ledger_figures(self._engine, self._clock())
        except SQLAlchemyError as exc:
            log.warning("metrics.ledger_unavailable", error_type=type(exc).__name__)
            up.add_metric(["ledger"], 0)
        else:
            up.add_metric(["ledger"], 1)
            f["holds"].add_metric([], figures.holds_open)
            f["oldest"].add_metric([], figures.oldest_undelivered_referral_seconds)
            f["rejected"].add_metric([], figures.rejected)
            for (provider, state), count in sorted(figures.deadlines_missed.items()):
                f["missed"].add_metric([provider, state], count)
            for kind in ("leaflet", "crime_review", "escalation"):
                f["tasks_overdue"].add_metric([kind], figures.tasks_overdue.get(kind, 0))
            f["reviews_open"].add_metric([], figures.crime_reviews_open)
        try:
            depth = self._depth()
        except TransportError as exc:
            log.warning("metrics.broker_unavailable", error_type=type(exc).__name__)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            f["dead"].add_metric([], depth)
        if self._compliance is not None:
            report, ok = self._compliance.latest
            up.add_metric(["compliance"], 1 if ok else 0)
            if report is not None:
                _add_compliance(f, report)
        return list(f.values())


def _add_compliance(f: dict[str, GaugeMetricFamily], report: ComplianceReport) -> None:
    f["computed"].add_metric([], report.generated_at.timestamp())
    referrals = report.table("referrals")
    for state in _REFERRAL_STATES:
        f["month_referrals"].add_metric([state], _number(referrals.column(state)[ALL]))
    tasks = report.table("tasks")
    for state in _TASK_STATES:
        f["month_tasks"].add_metric([state], _number(tasks.column(state)[ALL]))
    victims = report.table("victims")
    for outcome in victims.columns:
        if outcome != "victims":
            f["month_victims"].add_metric([outcome], _number(victims.column(outcome)[ALL]))
    for label, section, column in COMPLIANCE_RATIOS:
        value = report.table(section).column(column)[ALL]
        if isinstance(value, float):  # None: nothing to divide by this month, so no sample
            f["ratio"].add_metric([label], value)
    median = referrals.column("median_minutes_to_referral")[ALL]
    if isinstance(median, float):
        f["median"].add_metric([], median * 60)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _families() -> dict[str, GaugeMetricFamily]:
    """Every gauge this module exports, by a short key (names are checked by the alert rules'
    test against `ops/prometheus/`)."""
    return {
        "holds": GaugeMetricFamily(
            "referral_bridge_holds_open",
            "Victims whose referral decision is on hold (awaiting consent or a time limit).",
        ),
        "oldest": GaugeMetricFamily(
            "referral_bridge_oldest_undelivered_referral_age_seconds",
            "Age of the oldest referral waiting to be handed over to a provider; 0 when none.",
        ),
        "rejected": GaugeMetricFamily(
            "referral_bridge_referrals_rejected",
            "Referrals their provider refused for good, kept undelivered for an operator.",
        ),
        "missed": GaugeMetricFamily(
            "referral_bridge_victims_code_deadlines_missed",
            "Referrals that missed their Victims' Code deadline: handed over late, or still "
            "undelivered with the deadline passed.",
            labels=["provider", "state"],
        ),
        "tasks_overdue": GaugeMetricFamily(
            "referral_bridge_tasks_overdue",
            "Officer tasks still open past their due time, by kind.",
            labels=["kind"],
        ),
        "reviews_open": GaugeMetricFamily(
            "referral_bridge_crime_reviews_open",
            "Crime-recording review tasks raised and still open (no crime recorded, not done).",
        ),
        "dead": GaugeMetricFamily(
            "referral_bridge_dead_letter_queue_depth",
            "Messages waiting on the dead-letter queue for an operator.",
        ),
        "up": GaugeMetricFamily(
            "referral_bridge_gauge_source_up",
            "1 when the source of the gauges above (ledger, broker, compliance) answered.",
            labels=["source"],
        ),
        "computed": GaugeMetricFamily(
            "referral_bridge_compliance_computed_timestamp_seconds",
            "When the current month's compliance figures were last computed (Unix time).",
        ),
        "month_referrals": GaugeMetricFamily(
            "referral_bridge_compliance_month_referrals",
            "Referrals made this calendar month (Europe/London), by delivery state against "
            "the Victims' Code deadline.",
            labels=["state"],
        ),
        "month_tasks": GaugeMetricFamily(
            "referral_bridge_compliance_month_tasks",
            "Officer tasks issued this calendar month, by state (escalated: of those, escalated).",
            labels=["state"],
        ),
        "month_victims": GaugeMetricFamily(
            "referral_bridge_compliance_month_victims",
            "Victims decided this calendar month, by outcome.",
            labels=["outcome"],
        ),
        "ratio": GaugeMetricFamily(
            "referral_bridge_compliance_ratio",
            "This calendar month's compliance shares (0..1): referred_in_time, consent_asked, "
            "tasks_on_time, contacted_within_2wd, crimes_recorded_within_24h.",
            labels=["figure"],
        ),
        "median": GaugeMetricFamily(
            "referral_bridge_compliance_median_seconds_to_referral",
            "This calendar month's median time from report (or consent) to referral hand-over.",
        ),
    }
