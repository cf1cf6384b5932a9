# mypy: disallow-untyped-calls=False
# (kombu ships type markers but leaves most functions unannotated.)
"""What users feel: backlog drain, scale-out, latency and resources, each beside its baseline.

Every figure is measured in the same run as its baseline on this machine (shared, so only the
ratios travel). `make bench` runs the short version (`--short`), `make bench-long` the rest.

- drain: N mixed events (crimes, incidents, consent changes, ~2% invalid) preloaded on the work
  queue, drained by one `referral-bridge run` on RabbitMQ + SQLite (synchronous=FULL), timed from
  the first event recorded to the last (start-up excluded, reported apart); beside
  - the null bridge, per-message confirms: a kombu relay that republishes each message with a
    publisher confirm, then acks it (what a bridge doing no work of its own would reach);
  - the null bridge, windowed confirms: the same relay publishing what prefetch delivered (up to
    32) before waiting for all confirms, then one multiple ack;
  - optionally (`--baseline-repo DIR`) the worker of another checkout (e.g. main), same queue;
- PostgreSQL (`--long`): the same drain on a fresh PostgreSQL ledger with 1, 2 and 4 workers;
- latency: opt-out burglaries (one referral each) published at a steady 100 events/s to an idle
  worker; from just before each publish to the referral arriving on the provider's queue;
- resources (`--long`): worker RSS and open descriptors after 10,000 and after 100,000 events.

`--check` exits 1 on a missed target of issue 11 and prints the gap.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kombu.connection import Connection  # noqa: E402
from kombu.entity import Queue  # noqa: E402

from referral_bridge.core import ids  # noqa: E402
from referral_bridge.devtools.simulate import Simulator  # noqa: E402
from referral_bridge.resources import DEFAULT_POLICY  # noqa: E402
from referral_bridge.sealing import generate_key_pair  # noqa: E402
from referral_bridge.transport.publisher import Outgoing, Publisher  # noqa: E402
from referral_bridge.transport.topology import Topology  # noqa: E402

PROVIDERS = ("lancashire-victim-services", "homicide-service")
LANCASHIRE = PROVIDERS[0]
NULL_WINDOW = 32
PREFETCH = 64

#: Targets of issue 11 (checked by --check).
MIN_RATIO_TO_NULL = 0.7
MIN_EVENTS_PER_S = 1000.0
MIN_PG_RATIO_TO_NULL = 0.5
MIN_PG_SCALE_2_WORKERS = 1.3
MAX_P99_MS = 100.0
MAX_RESOURCE_GROWTH = 1.1


# --- workload ------------------------------------------------------------------------------------


def mixed_events(count: int, seed: int) -> tuple[list[tuple[str, bytes]], int]:
    """`count` messages: simulated cases with about 2% invalid ones; (messages, invalid)."""
    simulator = Simulator(seed=seed, now=datetime.now(UTC), max_age=timedelta(hours=6))
    bad = [b for b in simulator.bad_messages(20) if len(b.body) < 4096]
    invalid = count // 50
    valid = [(e.routing_key, e.body) for e in itertools.islice(simulator.cases(count), count)]
    valid = valid[: count - invalid]
    items = list(valid)
    for n in range(invalid):
        message = bad[n % len(bad)]
        items.insert((n + 1) * len(items) // (invalid + 1), (message.routing_key, message.body))
    return items, invalid


def burglary(crime_ref: str, victim_id: str) -> bytes:
    """An opt-out burglary (one referral to LANCASHIRE, id known in advance)."""
    sample = (REPO / "referral_bridge/resources/samples/crime-recorded-burglary.json").read_text()
    event = json.loads(sample)
    reported = datetime.now(UTC) - timedelta(minutes=10)
    event["id"] = str(uuid.uuid4())
    event["time"] = (reported + timedelta(minutes=5)).isoformat()
    data = event["data"]
    data.update(
        crime_ref=crime_ref,
        version=1,
        reported_at=reported.isoformat(),
        recorded_at=(reported + timedelta(minutes=4)).isoformat(),
        status="recorded",
        linked_incident_refs=[],
    )
    victim = data["victims"][0]
    victim["victim_id"] = victim_id
    victim["consent"] = {"referral": "not_asked", "recorded_at": None, "recorded_by": None}
    return json.dumps(event).encode()


# --- a bridge environment -----------------------------------------------------------------------


@dataclass
class Env:
    """A unique topology, keys and a config file for workers on one broker and ledger."""

    url: str
    work: Path
    names: dict[str, str]
    config: Path
    ledger_url: str

    @property
    def topology(self) -> Topology:
        n = self.names
        return Topology(
            inbound_exchange=n["in"],
            work_queue=n["work"],
            referrals_exchange=n["ref"],
            tasks_exchange=n["tasks"],
            outcomes_exchange=n["out"],
            dead_letter_queue=n["dlq"],
            retry_queue=n["work"] + ".retry",
        )


@contextmanager
def bridge_env(url: str, ledger_url: str | None = None, extra: str = "") -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kid in ("bridge", *PROVIDERS):
            generate_key_pair(kid, work / "keys")
        names = {
            k: f"bench-{k}-{suffix}" for k in ("in", "work", "ref", "out", "tasks", "dlq", "sink")
        }
        ledger = ledger_url or f"sqlite:///{work / 'data' / 'ledger.sqlite3'}"
        config = work / "rb.toml"
        config.write_text(
            '[bridge]\ndata_dir = "data"\n'
            f"policy_file = {json.dumps(str(DEFAULT_POLICY))}\n"
            f"[broker]\nurl = {json.dumps(url)}\nprefetch = {PREFETCH}\n{extra}"
            f'[broker.topology]\ninbound_exchange = "{names["in"]}"\n'
            f'work_queue = "{names["work"]}"\n'
            f'referrals_exchange = "{names["ref"]}"\ntasks_exchange = "{names["tasks"]}"\n'
            f'outcomes_exchange = "{names["out"]}"\n'
            f'dead_letter_queue = "{names["dlq"]}"\n'
            f"[ledger]\nurl = {json.dumps(ledger)}\n"
            '[metrics]\nlisten = ""\n'
            '[keys]\nsigning_key = "keys/bridge.private.jwk"\n'
            + "".join(f'[providers.{p}]\npublic_keys = "keys/{p}.public.jwk"\n' for p in PROVIDERS)
        )
        env = Env(url=url, work=work, names=names, config=config, ledger_url=ledger)
        from referral_bridge.transport.topology import declare

        with Connection(url) as connection:
            channel = connection.default_channel
            declare(channel, env.topology)
            # The providers' and officers' queue: deliveries must be routable.
            channel.queue_declare(names["sink"], durable=True)
            for key in ("ref", "tasks"):
                channel.queue_bind(names["sink"], exchange=names[key], routing_key="#")
        try:
            yield env
        finally:
            with Connection(url) as connection:
                channel = connection.default_channel
                for key in ("work", "dlq", "sink"):
                    channel.queue_delete(names[key])
                channel.queue_delete(names["work"] + ".retry")
                for key in ("in", "ref", "out", "tasks"):
                    channel.exchange_delete(names[key])


def preload(url: str, topology: Topology, items: list[tuple[str, bytes]]) -> None:
    """Publish the messages to the inbound exchange, 500 to a window of confirms."""
    publisher = Publisher(_spec(url), topology, declare_topology=False, confirm_timeout=120.0)
    with publisher:
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            errors = publisher.publish_window(
                [
                    Outgoing(
                        exchange=topology.inbound_exchange,
                        routing_key=key,
                        body=body,
                        headers={},
                        message_id=str(uuid.uuid4()),
                        mandatory=True,
                    )
                    for key, body in chunk
                ]
            )
            failed = [e for e in errors if e is not None]
            if failed:
                raise RuntimeError(f"preload: {len(failed)} messages not confirmed: {failed[0]}")


def _spec(url: str) -> Any:
    from referral_bridge.transport.embedded import broker_spec

    return broker_spec(url, Path(tempfile.gettempdir()))


def queue_depth(url: str, queue: str) -> int:
    with Connection(url) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True).message_count)


def start_worker(env: Env, repo: Path = REPO, log: Path | None = None) -> subprocess.Popen[bytes]:
    output = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "referral_bridge",
            "--log-level",
            "WARNING",
            "run",
            "--config",
            str(env.config),
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=output,
        stderr=output,
    )


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def processed(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT count(*) FROM rb_processed_events")).scalar_one()
        )


def unpublished(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM rb_outbox"
                    " WHERE published_at IS NULL AND rejected_at IS NULL"
                )
            ).scalar_one()
        )


# --- baselines: the null bridges -----------------------------------------------------------------


def null_bridge(url: str, count: int, *, windowed: bool, seed: int) -> dict[str, float]:
    """Relay `count` messages from a queue to an exchange: confirm, then ack."""
    items, _ = mixed_events(count, seed)
    suffix = uuid.uuid4().hex[:8]
    source, sink_exchange, sink = (f"null-{k}-{suffix}" for k in ("in", "out", "sink"))
    topology = Topology(
        inbound_exchange="",
        work_queue=source,
        referrals_exchange=sink_exchange,
        tasks_exchange=sink_exchange,
        outcomes_exchange=sink_exchange,
        dead_letter_queue=sink,
        retry_queue=sink,
    )
    with Connection(url) as connection:
        channel = connection.default_channel
        channel.queue_declare(source, durable=True, auto_delete=False)
        channel.exchange_declare(sink_exchange, "topic", durable=True)
        channel.queue_declare(sink, durable=True, auto_delete=False)
        channel.queue_bind(sink, exchange=sink_exchange, routing_key="#")
    preload(url, topology, [(source, body) for _, body in items])
    publisher = Publisher(_spec(url), topology, declare_topology=False)
    relayed = 0
    pending: list[Any] = []

    def relay(messages: list[Any]) -> None:
        nonlocal relayed
        if windowed:
            errors = publisher.publish_window(
                [
                    Outgoing(
                        exchange=sink_exchange,
                        routing_key="x",
                        body=m.body,
                        headers={},
                        message_id=str(relayed + n),
                        mandatory=True,
                    )
                    for n, m in enumerate(messages)
                ]
            )
            assert all(e is None for e in errors)
            messages[-1].ack(multiple=True)
        else:
            for message in messages:
                publisher.publish(
                    exchange=sink_exchange,
                    routing_key="x",
                    body=message.body,
                    headers={},
                    message_id=str(relayed),
                    mandatory=True,
                )
                message.ack()
        relayed += len(messages)

    with Connection(url) as connection, publisher:
        channel = connection.channel()
        channel.auto_decode = False
        queue = Queue(source, durable=True, auto_delete=False, no_declare=True)
        with connection.Consumer(
            queue, channel=channel, on_message=pending.append, prefetch_count=PREFETCH
        ):
            start = time.perf_counter()
            while relayed < count:
                connection.drain_events(timeout=30)
                while windowed and len(pending) < NULL_WINDOW:
                    try:
                        connection.drain_events(timeout=0)
                    except TimeoutError:
                        break
                batch, pending[:] = list(pending), []
                relay(batch)
            seconds = time.perf_counter() - start
    with Connection(url) as connection:
        channel = connection.default_channel
        channel.queue_delete(source)
        channel.queue_delete(sink)
        channel.exchange_delete(sink_exchange)
    return {"events": count, "seconds": seconds, "per_s": count / seconds}


# --- the worker ----------------------------------------------------------------------------------


def drain(
    url: str,
    count: int,
    *,
    seed: int,
    workers: int = 1,
    ledger_url: str | None = None,
    repo: Path = REPO,
    extra: str = "",
    profile: Path | None = None,
) -> dict[str, float]:
    """Preload `count` mixed events, then time `workers` workers draining them."""
    from sqlalchemy import create_engine

    items, invalid = mixed_events(count, seed)
    with bridge_env(url, ledger_url, extra) as env:
        # Migrate (and create the SQLite file) before the clock starts.
        from referral_bridge.ledger import Ledger

        Ledger.open(env.ledger_url).dispose()
        preload(url, env.topology, items)
        valid_ids = len({json.loads(b)["id"] for _, b in items if _valid_id(b)})
        invalid = len(items) - sum(1 for _, b in items if _valid_id(b))
        engine = create_engine(env.ledger_url)
        started = time.perf_counter()
        procs = [start_worker(env, repo, env.work / f"worker-{n}.log") for n in range(workers)]
        profiler = _profile(procs[0], profile) if profile else None
        first = None
        try:
            while True:
                done = processed(engine)
                if first is None and done:
                    first = (time.perf_counter(), done)
                dead = queue_depth(url, env.names["dlq"])
                if done >= valid_ids and dead >= invalid and unpublished(engine) == 0:
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited; see {env.work}")
                time.sleep(0.05)
            ended = time.perf_counter()
        finally:
            if profiler is not None:
                profiler.wait()
            stop(procs)
            engine.dispose()
        assert first is not None
        first_at, first_done = first
        delivered = queue_depth(url, env.names["sink"])
    drain_s = ended - first_at
    return {
        "events": count,
        "invalid": invalid,
        "workers": workers,
        "start_up_s": first_at - started,
        "drain_s": drain_s,
        "per_s": (count - first_done) / drain_s,
        "delivered": delivered,
    }


def _valid_id(body: bytes) -> bool:
    """Whether the bridge accepts the message (it is recorded, not dead-lettered)."""
    from referral_bridge.core.parsing import InvalidMessage, parse_inbound

    try:
        parse_inbound(body)
    except InvalidMessage:
        return False
    return True


def _profile(worker: subprocess.Popen[bytes], out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the worker for 15 s, collapsed stacks (see `summarise_profile`)."""
    return subprocess.Popen(  # noqa: S603
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(worker.pid),
            "--duration",
            "15",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def latency(url: str, seconds: float, rate: float = 100.0) -> dict[str, float]:
    """Publish opt-out burglaries at `rate`/s to an idle worker; publish -> referral arrival."""
    with bridge_env(url) as env:
        worker = start_worker(env, log=env.work / "worker.log")
        try:
            arrived: dict[str, float] = {}
            sent: dict[str, float] = {}
            ready = threading.Event()
            finished = threading.Event()

            def collect() -> None:
                with Connection(url) as connection:
                    queue = Queue(env.names["sink"], no_declare=True)

                    def on_message(message: Any) -> None:
                        arrived[str(message.properties.get("message_id"))] = time.perf_counter()
                        message.ack()

                    with connection.Consumer(queue, on_message=on_message, prefetch_count=100):
                        ready.set()
                        while not finished.is_set():
                            try:
                                connection.drain_events(timeout=0.2)
                            except TimeoutError:
                                continue

            collector = threading.Thread(target=collect, daemon=True)
            collector.start()
            ready.wait(30)
            tag = uuid.uuid4().hex[:6].upper()
            publisher = Publisher(_spec(url), env.topology, declare_topology=False)
            # Warm-up: the worker is consuming once its first referral arrives.
            warm = ids.referral_id(LANCASHIRE, f"W{tag}", f"W{tag}")
            publisher.publish_inbound(burglary(f"W{tag}", f"W{tag}"), "crime.recorded")
            _wait(lambda: warm in arrived, 120)
            count = int(seconds * rate)
            start = time.perf_counter()
            for n in range(count):
                due = start + n / rate
                while (now := time.perf_counter()) < due:
                    time.sleep(min(due - now, 0.005))
                crime_ref, victim_id = f"L{tag}-{n:06d}", f"V{tag}-{n:06d}"
                body = burglary(crime_ref, victim_id)
                sent[ids.referral_id(LANCASHIRE, crime_ref, victim_id)] = time.perf_counter()
                publisher.publish_inbound(body, "crime.recorded")
            publisher.close()
            _wait(lambda: all(k in arrived for k in sent), 120)
            finished.set()
            collector.join(10)
        finally:
            stop([worker])
    delays = sorted((arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived)
    return {
        "events": len(sent),
        "rate_per_s": rate,
        "received": len(delays),
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[int(0.99 * (len(delays) - 1))],
        "max_ms": delays[-1],
    }


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.01)


def resources(url: str, count: int, seed: int) -> dict[str, float]:
    """Worker RSS and open fds after 10,000 events and at the end of `count` events."""
    from sqlalchemy import create_engine

    with bridge_env(url) as env:
        from referral_bridge.ledger import Ledger

        Ledger.open(env.ledger_url).dispose()
        engine = create_engine(env.ledger_url)
        worker = start_worker(env, log=env.work / "worker.log")
        samples: dict[str, tuple[int, int]] = {}
        expected: set[str] = set()  # distinct valid event ids (the simulator repeats some)
        try:
            chunk = 5000
            for start in range(0, count, chunk):
                items, _ = mixed_events(chunk, seed + start)
                items = [(k, b) for k, b in items if _valid_id(b)]  # dead letters pile up
                preload(url, env.topology, items)
                expected.update(json.loads(b)["id"] for _, b in items)
                # Keep the backlog short so the broker's memory is not what is measured.
                target = len(expected) - chunk // 2
                _wait(lambda t=target: processed(engine) >= t, 900)  # type: ignore[misc]
                if "10k" not in samples and processed(engine) >= 10_000:
                    samples["10k"] = _usage(worker.pid)
            _wait(lambda: processed(engine) >= len(expected) and unpublished(engine) == 0, 900)
            samples["end"] = _usage(worker.pid)
            published = processed(engine)
        finally:
            stop([worker])
            engine.dispose()
    (rss_10k, fds_10k), (rss_end, fds_end) = samples["10k"], samples["end"]
    return {
        "events": published,
        "rss_mib_10k": rss_10k / 1024,
        "rss_mib_end": rss_end / 1024,
        "fds_10k": fds_10k,
        "fds_end": fds_end,
        "rss_ratio": rss_end / rss_10k,
        "fds_ratio": fds_end / fds_10k,
    }


def _usage(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return rss_kib, len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"rb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- the report ----------------------------------------------------------------------------------


def summarise_profile(raw: Path, top: int = 15) -> list[tuple[str, float]]:
    """Inclusive share of samples per function (file:function) from py-spy's raw output."""
    totals: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        seen = set()
        for frame in stack.split(";"):
            name = (
                frame.split(" (")[0]
                + " ("
                + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                + ")"
                if " (" in frame
                else frame
            )
            if name not in seen:
                seen.add(name)
                totals[name] = totals.get(name, 0) + count
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [(name, count / samples) for name, count in ranked] if samples else []


def missed_targets(results: dict[str, Any]) -> list[str]:
    missed = []
    null = results["null_per_message"]["per_s"]
    sqlite = results["drain_sqlite"]["per_s"]
    if sqlite < MIN_RATIO_TO_NULL * null:
        missed.append(
            f"SQLite drain {sqlite:.0f}/s is {sqlite / null:.2f}x the per-message null bridge "
            f"({null:.0f}/s); target {MIN_RATIO_TO_NULL}x: "
            f"{MIN_RATIO_TO_NULL * null - sqlite:.0f}/s short"
        )
    if sqlite < MIN_EVENTS_PER_S:
        missed.append(
            f"SQLite drain {sqlite:.0f}/s < {MIN_EVENTS_PER_S:.0f}/s: "
            f"{MIN_EVENTS_PER_S - sqlite:.0f}/s short"
        )
    p99 = results["latency"]["p99_ms"]
    if p99 >= MAX_P99_MS:
        missed.append(f"latency p99 {p99:.0f} ms >= {MAX_P99_MS:.0f} ms")
    pg = results.get("drain_postgres")
    if pg:
        one, two = pg["1"]["per_s"], pg["2"]["per_s"]
        if one < MIN_PG_RATIO_TO_NULL * null:
            missed.append(
                f"PostgreSQL, 1 worker {one:.0f}/s is {one / null:.2f}x the null bridge; "
                f"target {MIN_PG_RATIO_TO_NULL}x"
            )
        if two < MIN_PG_SCALE_2_WORKERS * one:
            missed.append(
                f"PostgreSQL, 2 workers {two:.0f}/s is {two / one:.2f}x 1 worker; "
                f"target {MIN_PG_SCALE_2_WORKERS}x"
            )
    res = results.get("resources")
    if res:
        for key in ("rss_ratio", "fds_ratio"):
            if res[key] > MAX_RESOURCE_GROWTH:
                missed.append(f"{key} {res[key]:.2f} > {MAX_RESOURCE_GROWTH}")
    return missed


def main() -> None:  # noqa: C901 (one branch per measurement the command line selects)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--events", type=int, default=20_000, help="backlog of the drains")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--long", action="store_true", help="PostgreSQL workers and 100,000 events")
    parser.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--resource-events", type=int, default=100_000)
    parser.add_argument("--baseline-repo", type=Path, help="also drain with this checkout's worker")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the SQLite drain's worker into this file"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--only", help="comma-separated: null,drain,baseline,latency,postgres,resources"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "load": os.getloadavg()}}
    url = args.amqp
    if wanted("null"):
        results["null_per_message"] = null_bridge(url, args.events, windowed=False, seed=args.seed)
        results["null_windowed"] = null_bridge(url, args.events, windowed=True, seed=args.seed)
        _progress(results)
    if wanted("drain"):
        results["drain_sqlite"] = drain(url, args.events, seed=args.seed, profile=args.profile)
        _progress(results)
    if args.baseline_repo and wanted("baseline"):
        results["drain_sqlite_baseline_repo"] = drain(
            url, args.events, seed=args.seed, repo=args.baseline_repo
        )
        _progress(results)
    if wanted("latency"):
        results["latency"] = latency(url, args.latency_seconds)
        _progress(results)
    if args.long and wanted("postgres"):
        pg: dict[str, Any] = {}
        for workers in (1, 2, 4):
            with postgres_database(args.postgres) as ledger_url:
                pg[str(workers)] = drain(
                    url, args.events, seed=args.seed, workers=workers, ledger_url=ledger_url
                )
        results["drain_postgres"] = pg
        _progress(results)
    if args.long and wanted("resources"):
        results["resources"] = resources(url, args.resource_events, args.seed)
    results["ratios"] = ratios(results)
    if args.profile and args.profile.exists():
        results["profile"] = [(n, round(s, 3)) for n, s in summarise_profile(args.profile)]
    print(json.dumps(results, indent=2))
    if args.check:
        missed = missed_targets(results) if "null_per_message" in results else []
        for line in missed:
            print(f"target missed: {line}", file=sys.stderr)
        sys.exit(1 if missed else 0)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    null = results.get("null_per_message", {}).get("per_s")
    if not null:
        return out
    for key in ("null_windowed", "drain_sqlite", "drain_sqlite_baseline_repo"):
        if key in results:
            out[f"{key}_to_null_per_message"] = round(results[key]["per_s"] / null, 3)
    for workers, figures in results.get("drain_postgres", {}).items():
        out[f"postgres_{workers}_to_null_per_message"] = round(figures["per_s"] / null, 3)
    pg = results.get("drain_postgres", {})
    if "1" in pg:
        for workers in ("2", "4"):
            if workers in pg:
                out[f"postgres_{workers}_to_1_worker"] = round(
                    pg[workers]["per_s"] / pg["1"]["per_s"], 3
                )
    return out


def _progress(results: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}), file=sys.stderr)


if __name__ == "__main__":
    main()
