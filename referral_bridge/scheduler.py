"""Periodic work between messages: ended holds, fallbacks for passed deadlines, then delivery of
parked and left-over outbox rows."""

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
#: wrote a row normally delivers it within milliseconds, so an older one was left by a crash.
#: Parked rows are delivered when their next attempt is due, whatever their age.
OUTBOX_GRACE = timedelta(seconds=30)


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
        try:
            self._bridge.service.expire_holds()
            self._bridge.service.issue_overdue_fallbacks()
            self._bridge.service.flush(older_than=OUTBOX_GRACE)
        except (LedgerUnavailableError, TransportError) as exc:
            # Nothing is lost: holds and outbox rows stay in the ledger for the next tick.
            log.warning("scheduler.deferred", error_type=type(exc).__name__)
