"""`make demo`: the bridge on the embedded broker, fed samples and synthetic cases, then a summary.

The worker runs as a real subprocess (`referral-bridge run`), exactly as it would under systemd;
this module only prepares a data directory, feeds events, waits, and reports from the ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from referral_bridge.bootstrap import broker_of, topology_of
from referral_bridge.devtools.simulate import (
    SimulatedEvent,
    Simulator,
    publish_all,
    respond,
    sample_events,
)
from referral_bridge.errors import BridgeError
from referral_bridge.files import private_dir
from referral_bridge.ledger import Ledger
from referral_bridge.resources import DEFAULT_POLICY, SAMPLES
from referral_bridge.sealing import generate_key_pair, load_key_set, open_event
from referral_bridge.settings import Settings, load_settings
from referral_bridge.transport.publisher import Publisher

PROVIDERS = ("lancashire-victim-services", "homicide-service")
#: Personal fields shown masked when the demo opens a referral.
PERSONAL = frozenset({"name", "date_of_birth", "contact"})
WAIT_SECONDS = 180.0


def prepare(data_dir: Path) -> Path:
    """Keys (kept between runs) and a config file; the ledger and queues start empty each run."""
    private_dir(data_dir)
    for stale in (
        "broker",
        "ledger.sqlite3",
        "ledger.sqlite3-wal",
        "ledger.sqlite3-shm",
        "bridge.log",
        "report.html",
    ):
        path = data_dir / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    keys = data_dir / "keys"
    for kid in ("bridge-demo", *(f"{p}-demo" for p in PROVIDERS)):
        if not (keys / f"{kid}.private.jwk").exists():
            generate_key_pair(kid, keys)
    providers = "\n".join(
        f'[providers.{p}]\npublic_keys = "keys/{p}-demo.public.jwk"\n' for p in PROVIDERS
    )
    config = data_dir / "referral-bridge.toml"
    config.write_text(
        "# Written by `referral-bridge demo`: embedded broker, SQLite ledger, generated keys.\n"
        "[bridge]\n"
        'source = "urn:referral-bridge:demo"\n'
        'data_dir = "."\n'
        f"policy_file = {json.dumps(str(DEFAULT_POLICY))}\n"
        "scheduler_interval_seconds = 1.0\n\n"
        # The demo's worker stops at the end: no metrics endpoint competing for a port.
        '[metrics]\nlisten = ""\n\n'
        '[keys]\nsigning_key = "keys/bridge-demo.private.jwk"\n\n' + providers,
        encoding="utf-8",
    )
    return config


def start_worker(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("REFERRAL_BRIDGE_BROKER_URL", None)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "referral_bridge", "--log-json", "run", "--config", str(config)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_until_processed(
    settings: Settings,
    ledger: Ledger,
    expected_ids: int,
    expected_dead: int,
    worker: subprocess.Popen[bytes],
    out: TextIO,
) -> bool:
    """Poll until every distinct event is in the ledger and every bad one is dead-lettered."""
    from referral_bridge.transport.topology import queue_depth

    broker, topology = broker_of(settings), topology_of(settings)
    deadline = time.monotonic() + WAIT_SECONDS
    next_report = 0.0
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            return False
        processed = ledger.counts()["totals"]["processed"]
        dead = queue_depth(broker, topology.dead_letter_queue)
        if time.monotonic() >= next_report:
            print(f"  processed {processed}/{expected_ids} events, {dead} dead letters", file=out)
            next_report = time.monotonic() + 2.0
        waiting = queue_depth(broker, topology.work_queue)
        if processed >= expected_ids and dead >= expected_dead and waiting == 0:
            print(f"  processed {processed}/{expected_ids} events, {dead} dead letters", file=out)
            return True
        time.sleep(0.5)
    return False


def decisions_from_log(log_path: Path, limit: int) -> list[str]:
    """A few decisions as the worker logged them: ids, outcome, rule and reason only."""
    lines = []
    for raw in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("event") != "victim.decided":
            continue
        target = f" -> {entry['provider']}" if entry.get("provider") else ""
        lines.append(
            f"  {entry.get('case_ref', '?'):<24} victim {entry.get('victim_id', '?'):<14} "
            f"{str(entry.get('outcome', '?')).upper():<8} rule {entry.get('rule')} "
            f"({entry.get('reason')}){target}"
        )
        if len(lines) >= limit:
            break
    return lines


def dead_letter_reasons(settings: Settings) -> Counter[str]:
    """Dead letters by reason; browsing leaves every one in place."""
    from referral_bridge.operator.deadletters import DeadLetterQueue, counts_by_reason

    letters = DeadLetterQueue(broker_of(settings), topology_of(settings)).browse()
    return Counter(counts_by_reason(letters))


def open_one_referral(ledger: Ledger, data_dir: Path) -> dict[str, Any] | None:
    from sqlalchemy import select

    from referral_bridge.ledger.schema import outbox

    with ledger.engine.connect() as connection:
        row = connection.execute(
            select(outbox.c.routing_key, outbox.c.body)
            .where(outbox.c.kind == "referral")
            .order_by(outbox.c.created_at)
            .limit(1)
        ).first()
    if row is None:
        return None
    keys = data_dir / "keys"
    envelope, payload = open_event(
        row.body,
        decryption_keys=load_key_set(keys / f"{row.routing_key}-demo.private.jwk"),
        verification_keys=load_key_set(keys / "bridge-demo.public.jwk"),
    )
    return {"envelope": envelope, "payload": payload}


def _masked(payload: dict[str, Any]) -> dict[str, Any]:
    victim = dict(payload.get("victim", {}))
    for key in PERSONAL & victim.keys():
        victim[key] = "[personal data: present, not shown]"
    return {**payload, "victim": victim}


def run_demo(*, data_dir: Path, cases: int, seed: int, marker: str | None, out: TextIO) -> int:
    config = prepare(data_dir)
    settings = load_settings(config, env={})
    # Package data (referral_bridge/resources): an install without them is broken, not quieter.
    events: list[SimulatedEvent] = sample_events(SAMPLES)
    if not events:
        raise BridgeError(f"no sample events in {SAMPLES}: reinstall referral-bridge")
    samples = len(events)
    simulator = Simulator(seed=seed, now=datetime.now(UTC), marker=marker)
    events += list(simulator.cases(cases))
    bad = list(simulator.bad_messages(12))
    valid_ids = {json.loads(e.body)["id"] for e in events}

    print(f"referral-bridge demo: data in {data_dir}/ (embedded broker, SQLite ledger)", file=out)
    worker = start_worker(config, data_dir / "bridge.log")
    try:
        with Publisher(broker_of(settings), topology_of(settings)) as publisher:
            publish_all(publisher, [*events, *bad])
        print(
            f"fed {len(events) + len(bad)} messages: {len(events)} events "
            f"({samples} contract samples; {len(valid_ids)} distinct ids, the rest repeats), "
            f"{len(bad)} invalid on purpose",
            file=out,
        )
        ledger = Ledger.open(settings.ledger_url)
        finished = wait_until_processed(settings, ledger, len(valid_ids), len(bad), worker, out)
        if finished:
            finished = close_the_loop(settings, ledger, seed, worker, out, dead=len(bad))
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    if not finished:
        print(
            f"the worker did not finish in time (exit {worker.returncode}); "
            f"see {data_dir}/bridge.log",
            file=out,
        )
        return 1
    print(f"worker stopped on SIGTERM with exit code {code}", file=out)
    _summary(ledger, settings, data_dir, out)
    ledger.dispose()
    report = write_html_report(settings, data_dir)
    print(f"\nthe compliance report for this run (open it in a browser): {report}", file=out)
    return 0 if code == 0 else 1


def write_html_report(settings: Settings, data_dir: Path) -> Path:
    """`referral-bridge report --format html` for this month to date: the run's decisions."""
    from referral_bridge.cli.report import write_report
    from referral_bridge.core.calendar import LONDON
    from referral_bridge.core.report import Period
    from referral_bridge.operator.session import OperatorSession

    now = datetime.now(UTC)
    today = now.astimezone(LONDON).date()
    with OperatorSession(settings) as session:
        text = write_report(session, Period(today.replace(day=1), today), form="html", now=now)
    path = (data_dir / "report.html").resolve()
    path.write_text(text, encoding="utf-8")
    return path


def close_the_loop(
    settings: Settings,
    ledger: Ledger,
    seed: int,
    worker: subprocess.Popen[bytes],
    out: TextIO,
    *,
    dead: int,
) -> bool:
    """Providers report outcomes and officers complete tasks (one unknown referral and one
    unknown task among them, on purpose); wait until the worker has taken them all."""
    events = respond(ledger, seed=seed, now=datetime.now(UTC), unknown=True)
    unknown = 2
    # Counted before publishing: the worker takes the new events as soon as they arrive.
    already = ledger.counts()["totals"]["processed"]
    with Publisher(broker_of(settings), topology_of(settings)) as publisher:
        publish_all(publisher, events)
    outcomes = sum(1 for event in events if event.from_provider) - 1
    print(
        f"providers and officers answered: {outcomes} outcomes and "
        f"{len(events) - outcomes - unknown} task completions (repeats and late ones among "
        "them), and one outcome and one completion for nothing the bridge sent",
        file=out,
    )
    distinct = {json.loads(event.body)["id"] for event in events[:-unknown]}
    expected = already + len(distinct)
    return wait_until_processed(settings, ledger, expected, dead + unknown, worker, out)


def loop_counts(ledger: Ledger) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Outcomes recorded, and officer tasks by kind and state, for the summary."""
    from sqlalchemy import case, func, select

    from referral_bridge.ledger.schema import referral_outcomes, tasks

    state = case(
        (tasks.c.escalated_at.is_not(None) & tasks.c.completed_at.is_not(None), "escalated, done"),
        (tasks.c.escalated_at.is_not(None), "escalated, open"),
        (tasks.c.completed_at.is_not(None), "completed"),
        else_="open",
    )
    with ledger.engine.connect() as connection:
        outcomes = connection.execute(
            select(referral_outcomes.c.outcome, func.count()).group_by(referral_outcomes.c.outcome)
        ).all()
        by_task = connection.execute(
            select(tasks.c.kind, state, func.count()).group_by(tasks.c.kind, state)
        ).all()
    return (
        sorted((str(row[0]), int(row[1])) for row in outcomes),
        sorted((f"{row[0]}: {row[1]}", int(row[2])) for row in by_task),
    )


def _summary(ledger: Ledger, settings: Settings, data_dir: Path, out: TextIO) -> None:
    counts = ledger.counts()
    totals, actions = counts["totals"], counts["actions"]

    def section(title: str, rows: Iterable[tuple[str, int]]) -> None:
        rows = list(rows)
        print(f"\n{title}", file=out)
        for label, value in rows or [("(none)", 0)]:
            print(f"  {label:<58} {value:>5}", file=out)

    print("\nthe first decisions, as the worker logged them:", file=out)
    for line in decisions_from_log(data_dir / "bridge.log", 12):
        print(line, file=out)
    print(f"\nevents processed (distinct ids): {totals['processed']}", file=out)
    section(
        "referrals sent, by provider/service",
        sorted(
            (k.removeprefix("referral "), v)
            for k, v in actions.items()
            if k.startswith("referral ")
        ),
    )
    section(
        "leaflet tasks for officers, by reason",
        sorted(
            (k.removeprefix("leaflet "), v) for k, v in actions.items() if k.startswith("leaflet ")
        ),
    )
    section(
        "withdrawals sent, by provider",
        sorted(
            (k.removeprefix("withdrawal "), v)
            for k, v in actions.items()
            if k.startswith("withdrawal ")
        ),
    )
    section("holds open (waiting for explicit consent)", [("open holds", totals["open_holds"])])
    outcomes, task_states = loop_counts(ledger)
    section("provider outcomes (the latest per referral)", outcomes)
    section("officer tasks, by kind and state (escalated: still open at its due time)", task_states)
    section("dead letters, by reason", sorted(dead_letter_reasons(settings).items()))
    print(f"\noutbox rows not yet published: {totals['unsent']}", file=out)
    opened = open_one_referral(ledger, data_dir)
    if opened:
        print(
            "\none referral, opened with the provider's private key and verified with the bridge's "
            "public key (personal fields masked here):",
            file=out,
        )
        print(
            json.dumps(
                {"envelope": opened["envelope"], "payload": _masked(opened["payload"])}, indent=2
            ),
            file=out,
        )
    print(f"\nthe worker's log (JSON lines, no personal data): {data_dir}/bridge.log", file=out)
