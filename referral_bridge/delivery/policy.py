"""How hard and how often to try: the numbers behind in-place retries, parking and circuits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from referral_bridge.settings import DeliverySection, ProviderSection


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    """Delivery timing; `from_settings` maps the `[delivery]` section onto it."""

    #: Quick attempts in place (inside handle or a scheduler pass) before a message is parked.
    attempts_in_place: int = 3
    #: Exponential wait between in-place attempts, with jitter, in seconds.
    in_place_initial_seconds: float = 0.1
    in_place_max_seconds: float = 1.0
    #: A parked message waits this long after its first parking, doubling up to the maximum.
    park_initial: timedelta = timedelta(seconds=30)
    park_max: timedelta = timedelta(hours=1)
    #: Up to this fraction is added at random to each parking, so parked work does not stampede.
    park_jitter: float = 0.1
    #: Consecutive failed attempts that open a provider's circuit, and how long it stays open.
    circuit_failures: int = 5
    #: The first opening is short; each re-opening without a success doubles it up to the max.
    circuit_first_open: timedelta = timedelta(seconds=2)
    circuit_open: timedelta = timedelta(seconds=60)
    #: A referral whose deadline has passed gets its fallback leaflet task only once it has been
    #: in the outbox this long: one recorded late is given a fair chance to be delivered first.
    fallback_grace: timedelta = timedelta(minutes=15)
    #: Wall-clock budget of one delivery pass: no new attempt starts once it is spent, and an
    #: in-place retry starts only if a whole attempt still fits. Passes run on the consumer
    #: thread, which pings the systemd watchdog (WatchdogSec=120): a pass lasts at most this plus
    #: one attempt, and one HTTPS attempt (connect + read timeout) is at most this long too.
    pass_budget_seconds: float = ProviderSection.ATTEMPT_LIMIT_SECONDS

    @property
    def claim_lease(self) -> timedelta:
        """How long a claimed row is left to its claimer: longer than any attempt can last (a
        pass's budget plus one attempt, each at most `pass_budget_seconds`), with a margin for
        the ledger round trips. A withdrawal waits at most this long after a crashed attempt."""
        return timedelta(seconds=2 * self.pass_budget_seconds + 10)

    def park_seconds(
        self, parkings: int, *, retry_after: float | None, rand: Callable[[], float]
    ) -> float:
        """Seconds a message parked for the `parkings`-th time waits: the growing back-off, or
        the pause the receiver asked for if that is longer (but never beyond `park_max`)."""
        longest = self.park_max.total_seconds()
        delay = park_delay(
            parkings,
            initial=self.park_initial.total_seconds(),
            maximum=longest,
            jitter=self.park_jitter,
            rand=rand,
        )
        if retry_after is not None:
            delay = max(delay, min(retry_after, longest))
        return delay

    def pause_fits_in_place(self, retry_after: float | None) -> bool:
        """Whether a receiver's asked-for pause may be waited out in place; a receiver asking
        for a longer one gets it by parking."""
        return retry_after is None or retry_after <= self.in_place_max_seconds

    @classmethod
    def from_settings(cls, section: DeliverySection) -> DeliveryPolicy:
        return cls(
            attempts_in_place=section.attempts_in_place,
            park_initial=timedelta(seconds=section.park_initial_seconds),
            park_max=timedelta(seconds=max(section.park_max_seconds, section.park_initial_seconds)),
            circuit_failures=section.circuit_failures,
            circuit_first_open=timedelta(
                seconds=min(section.circuit_first_open_seconds, section.circuit_open_seconds)
            ),
            circuit_open=timedelta(seconds=section.circuit_open_seconds),
            fallback_grace=timedelta(seconds=section.fallback_grace_seconds),
        )


def park_delay(
    parkings: int,
    *,
    initial: float,
    maximum: float,
    jitter: float = 0.0,
    rand: Callable[[], float] = lambda: 0.0,
) -> float:
    """Seconds until a message parked for the `parkings`-th time (1, 2, …) is tried again.

    `initial * 2**(parkings - 1)`, plus up to `jitter` of itself at random, never above `maximum`.
    """
    base = initial * 2.0 ** min(max(parkings - 1, 0), 62)
    return min(maximum, base * (1.0 + jitter * rand()))
