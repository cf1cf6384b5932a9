# mypy: disallow-untyped-calls=False
# (kombu ships type markers but leaves most functions unannotated.)
"""Throughput and memory of the bridge's per-event pipeline, as ratios to baselines in the same run.

Run: `.venv/bin/python benchmarks/pipeline.py --events 2000` (in-process, SQLite ledger, real
sealing, a publisher that records), or add `--amqp URL` to also time the real worker draining a
RabbitMQ queue against a bare kombu consumer that only acks (the transport's floor).

Baselines:
- parse: bytes -> validated InboundEvent only (the work no bridge can skip);
- ack-only consumer: the same messages drained by kombu with an immediate ack.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from referral_bridge.bootstrap import ProviderSealer, load_policy  # noqa: E402
from referral_bridge.core.calendar import WorkingDayCalendar  # noqa: E402
from referral_bridge.core.parsing import parse_inbound  # noqa: E402
from referral_bridge.ledger import Ledger  # noqa: E402
from referral_bridge.logging import configure_logging  # noqa: E402
from referral_bridge.resources import DEFAULT_POLICY  # noqa: E402
from referral_bridge.sealing import generate_key_pair, load_key_set, load_private_key  # noqa: E402
from referral_bridge.service import ReferralService, Routes  # noqa: E402
from referral_bridge.simulate import Simulator  # noqa: E402
from referral_bridge.verdicts import InboundMessage  # noqa: E402

PROVIDERS = ("lancashire-victim-services", "homicide-service")


class CountingPublisher:
    def __init__(self) -> None:
        self.count = 0

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str,
        content_type: str,
        mandatory: bool = False,
    ) -> None:
        self.count += 1


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
    service = ReferralService(
        ledger=ledger,
        policy=load_policy(DEFAULT_POLICY),
        calendar=WorkingDayCalendar(),
        sealer=ProviderSealer(
            load_private_key(keys / "bridge.private.jwk"),
            {p: load_key_set(keys / f"{p}.public.jwk") for p in PROVIDERS},
        ),
        publisher=CountingPublisher(),
        routes=Routes(
            referrals_exchange="victim-services.referrals", tasks_exchange="officer.tasks"
        ),
        source="urn:referral-bridge:bench",
        clock=lambda: datetime.now(UTC),
        max_message_bytes=1024 * 1024,
        max_processing_attempts=3,
    )
    return service, ledger


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


def amqp(count: int, seed: int, url: str) -> dict[str, float]:
    """Drain time of the real worker vs an ack-only kombu consumer on the same broker."""
    from kombu.connection import Connection
    from kombu.entity import Queue

    bodies = events(count, seed)
    suffix = uuid.uuid4().hex[:8]
    with Connection(url) as connection:
        baseline_queue = Queue(f"bench-baseline-{suffix}", durable=False, auto_delete=False)
        producer = connection.Producer()
        baseline_queue(connection.default_channel).declare()
        for body in bodies:
            producer.publish(
                body,
                routing_key=baseline_queue.name,
                content_type="application/cloudevents+json",
                content_encoding="utf-8",
                delivery_mode=2,
            )
        received = 0

        def on_message(message: Any) -> None:
            nonlocal received
            message.ack()
            received += 1

        start = time.perf_counter()
        with connection.Consumer(baseline_queue, on_message=on_message, prefetch_count=16):
            while received < count:
                connection.drain_events(timeout=10)
        baseline_s = time.perf_counter() - start
        baseline_queue(connection.default_channel).delete()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kid in ("bridge", *PROVIDERS):
            generate_key_pair(kid, work / "keys")
        names = {
            k: f"bench-{k}-{suffix}" for k in ("in", "work", "ref", "out", "tasks", "dlq", "sink")
        }
        config = work / "rb.toml"
        config.write_text(
            '[bridge]\ndata_dir = "data"\n'
            f"policy_file = {json.dumps(str(DEFAULT_POLICY))}\n"
            f"[broker]\nurl = {json.dumps(url)}\n"
            f'[broker.topology]\ninbound_exchange = "{names["in"]}"\n'
            f'work_queue = "{names["work"]}"\n'
            f'referrals_exchange = "{names["ref"]}"\ntasks_exchange = "{names["tasks"]}"\n'
            f'outcomes_exchange = "{names["out"]}"\n'
            f'dead_letter_queue = "{names["dlq"]}"\n'
            '[keys]\nsigning_key = "keys/bridge.private.jwk"\n'
            + "".join(f'[providers.{p}]\npublic_keys = "keys/{p}.public.jwk"\n' for p in PROVIDERS)
        )
        from referral_bridge.bootstrap import broker_of, topology_of
        from referral_bridge.settings import load_settings
        from referral_bridge.transport.publisher import Publisher
        from referral_bridge.transport.topology import declare

        settings = load_settings(config, env={})
        with Connection(url) as connection:
            channel = connection.default_channel
            declare(channel, topology_of(settings))
            # Stand-ins for the providers' and officers' queues, so deliveries are routable.
            channel.queue_declare(names["sink"], durable=True)
            for key in ("ref", "tasks"):
                channel.queue_bind(names["sink"], exchange=names[key], routing_key="#")
        with Publisher(broker_of(settings), topology_of(settings)) as publisher:
            for body in bodies:
                publisher.publish_inbound(body, json.loads(body)["type"])
        ledger = Ledger.open(settings.ledger_url)
        start = time.perf_counter()
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "referral_bridge",
                "--log-level",
                "WARNING",
                "run",
                "--config",
                str(config),
            ],
            cwd=REPO,
            env={**os.environ},
        )
        while ledger.counts()["totals"]["processed"] < len({json.loads(b)["id"] for b in bodies}):
            time.sleep(0.05)
        worker_s = time.perf_counter() - start
        worker.terminate()
        worker.wait(timeout=60)
        ledger.dispose()
        with Connection(url) as connection:
            channel = connection.default_channel
            for key in ("work", "dlq", "sink"):
                channel.queue_delete(names[key])
            for key in ("in", "ref", "out", "tasks"):
                channel.exchange_delete(names[key])
    return {
        "events": count,
        "ack_only_s": baseline_s,
        "worker_s": worker_s,
        "worker_events_per_s": count / worker_s,
        "ratio_worker_to_ack_only": worker_s / baseline_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--amqp", help="RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    configure_logging(json=True, level="WARNING")
    results: dict[str, Any] = {
        "in_process": in_process(args.events, args.seed),
        "memory": memory_growth(args.seed),
    }
    if args.amqp:
        results["amqp"] = amqp(args.events, args.seed, args.amqp)
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
    if "amqp" in results and results["amqp"]["worker_events_per_s"] < MIN_EVENTS_PER_S:
        missed.append(
            f"worker {results['amqp']['worker_events_per_s']:.0f} events/s < {MIN_EVENTS_PER_S:.0f}"
        )
    growth = results["memory"]["ratio_kept_2500_to_500"]
    if growth > MAX_MEMORY_GROWTH:
        missed.append(
            f"memory kept grew {growth:.2f}x from 500 to 2,500 events (> {MAX_MEMORY_GROWTH})"
        )
    return missed


if __name__ == "__main__":
    main()
