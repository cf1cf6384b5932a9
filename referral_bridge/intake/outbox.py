"""Recorded outcomes go to the force until its broker confirms them: a small outbox loop.

A case worker's "contacted" is committed to the store with the referral's new state (and a
CloudEvent id of its own) before the page answers; this loop publishes what is due through
`OutcomeSender` (publisher confirms), marks it sent, and on failure waits longer each time
(1 s doubling to a minute) and tries again, for ever. Sending the same event id twice is
harmless: the bridge drops a repeat.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from referral_bridge.core.retry import RetryPolicy
from referral_bridge.intake.store import IntakeStore, PendingOutcome

log = structlog.get_logger("referral_bridge.intake.outbox")

#: Publish one outcome (referral id, outcome, when, event id); returning means confirmed.
SendOutcome = Callable[[str, str, datetime, str], object]

RETRY = RetryPolicy(
    max_attempts=1_000_000_000, first_delay=timedelta(seconds=1), longest_delay=timedelta(minutes=1)
)


class OutcomeOutbox:
    """Runs in a thread of its own; `wake` after recording an outcome sends it at once."""

    def __init__(
        self,
        store: IntakeStore,
        send: SendOutcome,
        *,
        clock: Callable[[], datetime],
        idle_seconds: float = 2.0,
    ) -> None:
        self._store = store
        self._send = send
        self._clock = clock
        self._idle_seconds = idle_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="intake-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def send_due(self) -> int:
        """Send every outcome now due; returns how many the broker confirmed."""
        sent = 0
        for pending in self._store.due_outcomes(self._clock()):
            if self._stop.is_set():
                break
            sent += self._attempt(pending)
        return sent

    def _attempt(self, pending: PendingOutcome) -> int:
        try:
            self._send(pending.referral_id, pending.outcome, pending.at, pending.event_id)
        except Exception as exc:  # noqa: BLE001 (any failure to send is retried later)
            # The kind only: a broker error's text may carry a URL with credentials.
            retry_at = self._clock() + RETRY.delay(pending.attempts + 1)
            self._store.outcome_failed(
                pending.event_id, error=type(exc).__name__, retry_at=retry_at
            )
            log.warning(
                "intake.outcome_not_sent",
                referral_id=pending.referral_id,
                event_id=pending.event_id,
                error_type=type(exc).__name__,
                attempts=pending.attempts + 1,
                retry_at=retry_at.isoformat(),
            )
            return 0
        self._store.outcome_sent(pending.event_id, self._clock())
        log.info(
            "intake.outcome_sent",
            referral_id=pending.referral_id,
            event_id=pending.event_id,
            outcome=pending.outcome,
        )
        return 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception as exc:  # noqa: BLE001 (the store itself failed: try again later)
                log.error("intake.outbox_failed", error_type=type(exc).__name__)
            # Wake early when an outcome is recorded; otherwise look again after a while
            # (retries come due then).
            self._wake.wait(timeout=self._idle_seconds)
            self._wake.clear()
