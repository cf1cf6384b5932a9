"""Periodic work between messages: ended holds, crime-recording reviews, escalations of overdue
tasks, fallbacks for passed deadlines, then delivery of parked and left-over outbox rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from referral_bridge.bootstrap import Bridge
from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.transport.errors import TransportError

log = structlog.get_logger("referral_bridge.scheduler")

#: Outbox rows never tried and older than this are delivered by the scheduler: the worker that
#: wrote a row normally delivers it within milliseconds, so an older one was left by a crash or
#: a failed hand-over. Parked rows are delivered when their next attempt is due, whatever their
#: age. Two workers never send one row at once (each attempt is claimed in the ledger first),
#: so this only keeps schedulers from doing the writer's work, and can be short.
OUTBOX_GRACE = timedelta(seconds=5)


class Scheduler:
    """Runs periodic work between messages: ended holds, overdue referrals, due deliveries."""

    def __init__(
        self, bridge: Bridge, *, interval: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._bridge = bridge
        self._interval = interval
        self._monotonic = monotonic
        self._next = 0.0

    def __call__(self) -> None:
        if self._monotonic() < self._next:
            return
        self._next = self._monotonic() + self._interval
        service = self._bridge.service
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("expire_holds", service.expire_holds),
            ("review_crime_recording", service.review_crime_recording),
            ("escalate_overdue_tasks", service.escalate_overdue_tasks),
            ("issue_overdue_fallbacks", service.issue_overdue_fallbacks),
            ("flush", lambda: service.flush(older_than=OUTBOX_GRACE)),
        )
        # Each step on its own: one that fails must not skip the others, nor leave the idle
        # callback (the consumer would re-raise it and the worker would exit, then crash-loop on
        # the same row). Nothing is lost: holds and outbox rows stay for the next tick.
        for name, step in steps:
            try:
                step()
            except (LedgerUnavailableError, TransportError) as exc:
                log.warning("scheduler.deferred", step=name, error_type=type(exc).__name__)
            except Exception as exc:  # logged by type only: its text could hold anything
                log.error("scheduler.step_failed", step=name, error_type=type(exc).__name__)
