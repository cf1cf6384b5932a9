"""A circuit breaker per receiver: stop hammering a provider that is down, probe it now and then."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed until `failures` attempts in a row fail; then open, during which nothing is
    attempted; then half-open: one probe attempt closes it again or re-opens it.

    The first opening lasts `first_open_for`, and each re-opening without a success in between
    twice as long, up to `open_for`: a provider that blinks for a few seconds is probed again
    within seconds, one that stays down is not hammered. A success starts over.

    Not thread-safe: the delivery engine runs on the worker's one consumer thread.
    """

    def __init__(
        self,
        *,
        failures: int,
        open_for: timedelta,
        clock: Callable[[], datetime],
        first_open_for: timedelta | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError("a circuit needs at least one failure to open")
        self._threshold = failures
        self._max_open_for = open_for
        self._first_open_for = min(first_open_for or open_for, open_for)
        self._clock = clock
        self._failures = 0
        self._openings = 0
        self._opened_at: datetime | None = None

    @property
    def open_for(self) -> timedelta:
        """How long the current (or next) opening lasts."""
        doublings = min(max(self._openings - 1, 0), 30)
        longest: timedelta = self._max_open_for
        return min(longest, self._first_open_for * (1 << doublings))

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() >= self._opened_at + self.open_for:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failed attempts so far."""
        return self._failures

    @property
    def reopens_at(self) -> datetime | None:
        return self._opened_at + self.open_for if self._opened_at is not None else None

    def allows(self) -> bool:
        """Whether an attempt may be made now (closed, or half-open for a probe)."""
        return self.state is not CircuitState.OPEN

    def record_success(self) -> bool:
        """Note a successful attempt; True if it followed failures (the receiver recovered)."""
        recovered = self._failures > 0 or self._opened_at is not None
        self._failures = 0
        self._openings = 0
        self._opened_at = None
        return recovered

    def record_failure(self) -> bool:
        """Note a failed attempt; True if it opened the circuit (or re-opened it after a probe)."""
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            # A first opening, or a failed probe: open again, for longer.
            self._openings += 1
            self._opened_at = self._clock()
            return True
        return False
