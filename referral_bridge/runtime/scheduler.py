"""Periodic work between messages: ended holds, crime-recording reviews, escalations of overdue
tasks, fallbacks for passed deadlines, delivery of parked and left-over outbox rows, and the daily
retention sweep."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from referral_bridge.bootstrap import Bridge, utc_now
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.ledger import DAEMON_ACTOR, Ledger
from referral_bridge.ledger.retention import claim_sweep, sweep
from referral_bridge.settings import RetentionSection
from referral_bridge.transport.errors import TransportError

log = structlog.get_logger("referral_bridge.runtime.scheduler")

#: Outbox rows never tried and older than this are delivered by the scheduler: the worker that
#: wrote a row normally delivers it within milliseconds, so an older one was left by a crash or
#: a failed hand-over. Parked rows are delivered when their next attempt is due, whatever their
#: age. Two workers never send one row at once (each attempt is claimed in the ledger first),
#: so this only keeps schedulers from doing the writer's work, and can be short.
OUTBOX_GRACE = timedelta(seconds=5)


class Scheduler:
    """Runs periodic work between messages: ended holds, overdue referrals, due deliveries."""

    def __init__(
        self,
        bridge: Bridge,
        *,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
        retention: Callable[[], object] | None = None,
    ) -> None:
        self._bridge = bridge
        self._interval = interval
        self._monotonic = monotonic
        self._next = 0.0
        self._retention = retention

    def __call__(self) -> None:
        if self._monotonic() < self._next:
            return
        self._next = self._monotonic() + self._interval
        scheduled = self._bridge.scheduled
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("expire_holds", self._bridge.holds.expire),
            ("review_crime_recording", scheduled.review_crime_recording),
            ("escalate_overdue_tasks", scheduled.escalate_overdue_tasks),
            ("issue_overdue_fallbacks", scheduled.issue_overdue_fallbacks),
            ("flush", lambda: scheduled.flush(older_than=OUTBOX_GRACE)),
        )
        if self._retention is not None:
            steps += (("retention", self._retention),)
        # Each step on its own: one that fails must not skip the others, nor leave the idle
        # callback (the consumer would re-raise it and the worker would exit, then crash-loop on
        # the same row). Nothing is lost: holds and outbox rows stay for the next tick.
        for name, step in steps:
            try:
                step()
            except (LedgerUnavailableError, TransportError) as exc:
                log.warning("scheduler.deferred", step=name, error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 (logged by type only: its text could hold anything)
                log.error("scheduler.step_failed", step=name, error_type=type(exc).__name__)


#: How often a worker asks the ledger whether the retention sweep is due (cheap; the sweep
#: itself runs once per `sweep_interval_hours` among all workers).
RETENTION_CHECK_SECONDS = 600.0
#: Matters one scheduled pass erases at most; with more due, the worker that claimed the sweep
#: carries on at its next check (each erasure is its own short transaction).
RETENTION_BATCH = 200


class RetentionSweep:
    """The scheduled retention sweep: the worker that claims it (rb_jobs) erases what is due."""

    def __init__(
        self,
        ledger: Ledger,
        policy: RetentionSection,
        *,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        check_every: float = RETENTION_CHECK_SECONDS,
        batch: int = RETENTION_BATCH,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._clock = clock
        self._monotonic = monotonic
        self._check_every = check_every
        self._next = 0.0
        self._batch = batch
        #: This worker claimed the sweep and has more to erase.
        self._unfinished = False

    def __call__(self) -> int:
        """Sweep if it is this worker's turn; returns the matters erased."""
        if not self._policy.sweep or self._monotonic() < self._next:
            return 0
        self._next = self._monotonic() + self._check_every
        now = self._clock()
        every = timedelta(hours=self._policy.sweep_interval_hours)
        if not self._unfinished and not claim_sweep(self._ledger, now=now, every=every):
            return 0
        report = sweep(
            self._ledger,
            now=now,
            erase_after=timedelta(days=self._policy.erase_after_days),
            actor=DAEMON_ACTOR,
            limit=self._batch,
        )
        self._unfinished = report.matters >= self._batch
        log.info(
            "retention.swept",
            count=report.matters,
            detail=f"{report.records} snapshots, {report.bodies} message bodies, "
            f"{report.consents} consent recorders erased",
        )
        return report.matters
