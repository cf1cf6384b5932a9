"""Throughput and memory of the bridge's per-event pipeline, as ratios to baselines in the same run.

Run: `.venv/bin/python benchmarks/pipeline.py --events 2000` (in-process, SQLite ledger, real
sealing, a publisher that records): one event per `handle` call, and in batches of 32 through
`handle_batch` (group commit). The worker on RabbitMQ is timed by benchmarks/throughput.py.

Baseline: parse, bytes -> validated InboundEvent only (the work no bridge can skip).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from referral_bridge.bootstrap import ProviderSealer, load_policy, service_layer, utc_now  # noqa: E402
from referral_bridge.core.calendar import WorkingDayCalendar  # noqa: E402
from referral_bridge.core.parsing import parse_inbound  # noqa: E402
from referral_bridge.core.verdicts import InboundMessage  # noqa: E402
from referral_bridge.delivery import AmqpRoute, DeliveryEngine  # noqa: E402
from referral_bridge.devtools.simulate import Simulator  # noqa: E402
from referral_bridge.ledger import Ledger  # noqa: E402
from referral_bridge.logging import configure_logging  # noqa: E402
from referral_bridge.metrics import BridgeMetrics  # noqa: E402
from referral_bridge.resources import DEFAULT_POLICY  # noqa: E402
from referral_bridge.sealing import generate_key_pair, load_key_set, load_private_key  # noqa: E402
from referral_bridge.service.handler import ReferralService  # noqa: E402
from referral_bridge.service.outbox import Routes  # noqa: E402

PROVIDERS = ("lancashire-victim-services", "homicide-service")
#: Events per `handle_batch` call in the batched figure (the worker's default batch_size).
BATCH = 32


class CountingPublisher:
    def __init__(self) -> None:
        self.count = 0

    def publish(self, **_message: Any) -> None:
        self.count += 1

    def publish_window(self, messages: Sequence[Any]) -> list[None]:
        """As the force broker's Publisher: the batched path claims and marks a window at once."""
        self.count += len(messages)
        return [None] * len(messages)


def events(count: int, seed: int) -> list[bytes]:
    simulator = Simulator(seed=seed, now=datetime.now(UTC), max_age=timedelta(hours=6))
    bodies = [e.body for e in simulator.cases(count * 2)]
    return bodies[:count]


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_service(workdir: Path) -> tuple[ReferralService, Ledger]:
    keys = workdir / "keys"
    for kid in ("bridge", *PROVIDERS):
        generate_key_pair(kid, keys)
    ledger = Ledger.open(f"sqlite:///{workdir / 'ledger.sqlite3'}")
    metrics = BridgeMetrics()
    layer = service_layer(
        ledger=ledger,
        policy=load_policy(DEFAULT_POLICY),
        calendar=WorkingDayCalendar(),
        sealer=ProviderSealer(
            load_private_key(keys / "bridge.private.jwk"),
            {p: load_key_set(keys / f"{p}.public.jwk") for p in PROVIDERS},
        ),
        routes=Routes(
            referrals_exchange="victim-services.referrals", tasks_exchange="officer.tasks"
        ),
        source="urn:referral-bridge:bench",
        clock=utc_now,
        metrics=metrics,
        delivery=lambda fallbacks: DeliveryEngine(
            ledger=ledger,
            default_route=AmqpRoute(CountingPublisher(), name="amqp-force"),
            clock=utc_now,
            metrics=metrics,
            fallbacks=fallbacks,
        ),
        max_message_bytes=1024 * 1024,
        max_processing_attempts=3,
    )
    return layer.service, ledger


def in_process(count: int, seed: int) -> dict[str, float]:
    bodies = events(count, seed)
    parse_s = timed(lambda: [parse_inbound(b) for b in bodies])
    with tempfile.TemporaryDirectory() as tmp:
        service, ledger = build_service(Path(tmp))

        def run() -> None:
            for body in bodies:
                service.handle(
                    InboundMessage(
                        body=body, headers={}, routing_key="x", redelivered=False, delivery_tag=None
                    )
                )

        pipeline_s = timed(run)
        ledger.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        service, ledger = build_service(Path(tmp))

        def run_batches() -> None:
            for start in range(0, len(bodies), BATCH):
                service.handle_batch(
                    [
                        InboundMessage(
                            body=body,
                            headers={},
                            routing_key="x",
                            redelivered=False,
                            delivery_tag=None,
                        )
                        for body in bodies[start : start + BATCH]
                    ]
                )

        batched_s = timed(run_batches)
        ledger.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        service, ledger = build_service(Path(tmp))
        tracemalloc.start()
        run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ledger.dispose()
    return {
        "events": count,
        "parse_s": parse_s,
        "pipeline_s": pipeline_s,
        "pipeline_events_per_s": count / pipeline_s,
        "ratio_pipeline_to_parse": pipeline_s / parse_s,
        "batched_s": batched_s,
        "batched_events_per_s": count / batched_s,
        "ratio_batched_to_parse": batched_s / parse_s,
        "speed_up_batched": pipeline_s / batched_s,
        "peak_traced_mib": peak / 2**20,
    }


def memory_growth(seed: int) -> dict[str, float]:
    """Memory kept after 500 and after 2,500 events of one run, and the peak of each stretch.

    Peaks depend on the largest transient (a batch, a query), so the leak check uses what stays
    allocated after a garbage collection: a pipeline without a per-event leak keeps the later
    2,000 events' growth close to nothing next to the first 500 events' (caches filling up).
    """
    bodies = events(2500, seed)
    with tempfile.TemporaryDirectory() as tmp:
        service, ledger = build_service(Path(tmp))

        def run(batch: list[bytes]) -> None:
            for body in batch:
                service.handle(
                    InboundMessage(
                        body=body, headers={}, routing_key="x", redelivered=False, delivery_tag=None
                    )
                )

        gc.collect()
        tracemalloc.start()
        run(bodies[:500])
        gc.collect()
        kept_500, peak_500 = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run(bodies[500:])
        gc.collect()
        kept_2500, peak_2500 = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ledger.dispose()
    return {
        "kept_kib_after_500": kept_500 / 1024,
        "kept_kib_after_2500": kept_2500 / 1024,
        "kept_bytes_per_event_after_500": (kept_2500 - kept_500) / 2000,
        "ratio_kept_2500_to_500": kept_2500 / kept_500,
        "peak_mib_first_500": peak_500 / 2**20,
        "peak_mib_next_2000": peak_2500 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING")
    results: dict[str, Any] = {
        "in_process": in_process(args.events, args.seed),
        "memory": memory_growth(args.seed),
    }
    print(json.dumps(results, indent=2))
    if args.check:
        missed = missed_targets(results)
        for line in missed:
            print(f"target missed: {line}", file=sys.stderr)
        sys.exit(1 if missed else 0)


#: Targets (docs/benchmarks.md). A large force records a few thousand crimes and incidents a day,
#: well under 1 event/s on average; 50/s per worker leaves room for bursts and replays.
MIN_EVENTS_PER_S = 50.0
#: Memory kept after 2,500 events at most this multiple of that kept after 500 (no per-event leak).
MAX_MEMORY_GROWTH = 1.5


def missed_targets(results: dict[str, Any]) -> list[str]:
    missed = []
    rate = results["in_process"]["pipeline_events_per_s"]
    if rate < MIN_EVENTS_PER_S:
        missed.append(f"in-process {rate:.0f} events/s < {MIN_EVENTS_PER_S:.0f}")
    growth = results["memory"]["ratio_kept_2500_to_500"]
    if growth > MAX_MEMORY_GROWTH:
        missed.append(
            f"memory kept grew {growth:.2f}x from 500 to 2,500 events (> {MAX_MEMORY_GROWTH})"
        )
    return missed


if __name__ == "__main__":
    main()
