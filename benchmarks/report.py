"""The compliance report on a ledger of 100,000 victims, against baselines in the same run.

Run: `.venv/bin/python benchmarks/report.py --victims 100000 --check` (`make bench-report`).
Builds a SQLite ledger (or `--ledger-url postgresql+psycopg://...`, an empty database) with bulk
inserts of what the worker writes for that many victims in one month: decisions, referrals and
their outbox rows, leaflet tasks, provider outcomes, crime reviews. Then times `referral-bridge
report` for that month (counting in SQL and building the tables; the terminal table and the
HTML page rendered separately), and, as baselines on the same ledger:

- scan: `SELECT count(*)` of every table the report reads (the floor of touching the data);
- read: fetching the report's columns of every row into Python (what row-by-row code would pay
  before doing any arithmetic).

`--check` fails (exit 1) if the report takes 10 s or more.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, func, select  # noqa: E402

from referral_bridge.core.calendar import LONDON  # noqa: E402
from referral_bridge.core.report import Period  # noqa: E402
from referral_bridge.ledger import Ledger  # noqa: E402
from referral_bridge.ledger import schema as t  # noqa: E402
from referral_bridge.report import Format, produce, render  # noqa: E402

TARGET_SECONDS = 10.0
CATEGORIES = (
    "violence_with_injury",
    "violence_without_injury",
    "stalking_harassment",
    "burglary",
    "theft",
    "vehicle",
    "criminal_damage_arson",
    "robbery",
    "fraud",
    "sexual",
    "public_order",
    "other",
    "asb",
)
SERVICES = ("general", "general", "general", "domestic_abuse", "sexual_violence", "children")
OUTCOMES = ("accepted", "contacted", "contacted", "unable_to_contact", "declined_by_victim")
LEAFLET_REASONS = ("declined", "consent_needed", "no_safe_contact", "incident_information")
CHUNK = 10_000
T = TypeVar("T")


def build(engine: Engine, victims: int, month: Period, seed: int) -> dict[str, int]:
    """Bulk-insert what the worker would have written for `victims` victims in `month`."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    start = month.start
    span = (month.end - month.start).total_seconds()
    rows: dict[str, list[dict[str, Any]]] = {
        "decisions": [],
        "actions": [],
        "outbox": [],
        "tasks": [],
        "outcomes": [],
        "reviews": [],
    }
    for i in range(victims):
        case_ref, victim_id = f"LC-{i:07d}", f"P-{i:07d}"
        decided = start + timedelta(seconds=rng.uniform(0, span - 3600))
        category = rng.choice(CATEGORIES)
        roll = rng.random()
        event_id = f"ev-{i}"
        base = {
            "event_id": event_id,
            "case_ref": case_ref,
            "victim_id": victim_id,
            "explanation": "benchmark",
            "decided_at": decided,
            "category": category,
        }
        if roll < 0.70:
            explicit = rng.random() < 0.15
            clock_from = decided - timedelta(minutes=rng.uniform(1, 4000))
            deadline = clock_from + timedelta(days=2, hours=rng.uniform(0, 48))
            late = rng.random() < 0.04
            message_id = f"ref-{i}"
            rows["decisions"].append(
                {
                    **base,
                    "outcome": "refer",
                    "rule": "8",
                    "regime": "explicit" if explicit else "opt_out",
                    "reason": "consent_given" if explicit else "not_objected",
                    "late": late,
                    "clock_from": clock_from,
                }
            )
            provider = "homicide-service" if rng.random() < 0.03 else "lancashire-victim-services"
            rows["actions"].append(
                {
                    "case_ref": case_ref,
                    "victim_id": victim_id,
                    "action": "referral",
                    "target": provider,
                    "message_id": message_id,
                    "provider": provider,
                    "service": rng.choice(SERVICES),
                    "due_at": deadline,
                    "at": decided,
                }
            )
            undelivered = rng.random() < 0.01
            published = None if undelivered else decided + timedelta(seconds=rng.uniform(0.1, 5))
            if late and published is not None:
                published = deadline + timedelta(minutes=rng.uniform(1, 600))
            rows["outbox"].append(
                _outbox(message_id, event_id, "referral", provider, decided, published, deadline)
            )
            if published is not None and rng.random() < 0.6:
                outcome = rng.choice(OUTCOMES)
                contacted = (
                    published + timedelta(hours=rng.uniform(1, 150))
                    if outcome == "contacted"
                    else None
                )
                rows["outcomes"].append(
                    {
                        "referral_id": message_id,
                        "provider": provider,
                        "case_ref": case_ref,
                        "victim_id": victim_id,
                        "outcome": outcome,
                        "at": contacted or published + timedelta(hours=3),
                        "received_at": contacted or published + timedelta(hours=3),
                        "event_source": "urn:provider",
                        "event_id": f"out-{i}",
                        "first_contacted_at": contacted,
                    }
                )
        elif roll < 0.92:
            reason = rng.choice(LEAFLET_REASONS)
            task_id = f"task-{i}"
            due = decided + timedelta(days=rng.choice((1, 5)))
            rows["decisions"].append(
                {
                    **base,
                    "outcome": "leaflet",
                    "rule": "8",
                    "regime": "explicit" if reason == "consent_needed" else "opt_out",
                    "reason": reason,
                }
            )
            rows["actions"].append(
                {
                    "case_ref": case_ref,
                    "victim_id": victim_id,
                    "action": "leaflet",
                    "target": reason,
                    "message_id": task_id,
                    "provider": "lancashire-victim-services",
                    "service": None,
                    "due_at": due,
                    "at": decided,
                }
            )
            rows["outbox"].append(
                _outbox(task_id, event_id, "task.leaflet", None, decided, decided, None)
            )
            completed = (
                decided + timedelta(hours=rng.uniform(1, 160)) if rng.random() < 0.8 else None
            )
            rows["tasks"].append(
                {
                    "task_id": task_id,
                    "kind": "leaflet",
                    "reason": reason,
                    "case_ref": case_ref,
                    "victim_id": victim_id,
                    "officer_unit": "Preston CID",
                    "issued_at": decided,
                    "due_by": due,
                    "completed_at": completed,
                    "completed_by": "PC 1" if completed else None,
                    "result": "leaflet_given" if completed else None,
                    "escalated_at": due if completed is None or completed > due else None,
                    "escalation_task_id": None,
                }
            )
        elif roll < 0.96:
            rows["decisions"].append(
                {
                    **base,
                    "outcome": "hold",
                    "rule": "5",
                    "regime": "explicit",
                    "reason": "awaiting_consent",
                }
            )
        else:
            rows["decisions"].append(
                {**base, "outcome": "none", "rule": "2", "regime": None, "reason": "deceased"}
            )
        if i % 30 == 0:
            review_at = decided + timedelta(hours=24)
            raised = rng.random() < 0.3
            resolved = rng.random() < 0.6
            rows["reviews"].append(
                {
                    "incident_ref": f"INC-{i:07d}",
                    "review_at": review_at,
                    "task_id": f"review-{i}" if raised else None,
                    "raised_at": review_at if raised else None,
                    "resolved_at": review_at - timedelta(hours=2) if resolved else None,
                    "resolution": (
                        ("recorded_after_review" if raised else "recorded_in_time")
                        if resolved
                        else None
                    ),
                }
            )
    tables = {
        "decisions": t.decisions,
        "actions": t.actions,
        "outbox": t.outbox,
        "tasks": t.tasks,
        "outcomes": t.referral_outcomes,
        "reviews": t.crime_reviews,
    }
    with engine.begin() as connection:
        for name, table in tables.items():
            # executemany needs the same keys in every row.
            keys = {key for row in rows[name] for key in row}
            batch = [{key: row.get(key) for key in keys} for row in rows[name]]
            for offset in range(0, len(batch), CHUNK):
                connection.execute(table.insert(), batch[offset : offset + CHUNK])
    return {name: len(batch) for name, batch in rows.items()}


def _outbox(
    message_id: str,
    event_id: str,
    kind: str,
    provider: str | None,
    created: datetime,
    published: datetime | None,
    deadline: datetime | None,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "event_id": event_id,
        "kind": kind,
        "exchange": "x",
        "routing_key": provider or "task.leaflet",
        "headers": {},
        "body": b"sealed",
        "created_at": created,
        "published_at": published,
        "attempts": 1,
        "provider": provider,
        "next_attempt_at": None,
        "last_error": None,
        "rejected_at": None,
        "deadline": deadline,
        "fallback_task_id": None,
        "audit": None,
        "claimed_until": None,
        "maybe_delivered": False,
    }


def timed(action: Callable[[], T]) -> tuple[float, T]:
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


READ_TABLES = (
    t.decisions,
    t.actions,
    t.outbox,
    t.tasks,
    t.referral_outcomes,
    t.crime_reviews,
)


def scan(engine: Engine) -> int:
    with engine.connect() as connection:
        return sum(
            int(connection.execute(select(func.count()).select_from(table)).scalar_one())
            for table in READ_TABLES
        )


def read_rows(engine: Engine) -> int:
    """Every row's report columns into Python (decisions, referrals with their delivery)."""
    count = 0
    d, a, o = t.decisions, t.actions, t.outbox
    with engine.connect() as connection:
        for query in (
            select(
                d.c.case_ref, d.c.victim_id, d.c.outcome, d.c.reason, d.c.decided_at, d.c.category
            ),
            select(a.c.message_id, a.c.provider, a.c.service, a.c.at),
            select(o.c.message_id, o.c.published_at, o.c.deadline, o.c.rejected_at),
            select(t.tasks.c.task_id, t.tasks.c.due_by, t.tasks.c.completed_at),
            select(t.referral_outcomes.c.referral_id, t.referral_outcomes.c.first_contacted_at),
        ):
            count += len(connection.execute(query).all())
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--victims", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--ledger-url", help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument("--check", action="store_true", help=f"fail at {TARGET_SECONDS:g} s")
    args = parser.parse_args(argv)

    today = datetime.now(UTC).astimezone(LONDON).date()
    last_month_end = today.replace(day=1) - timedelta(days=1)
    month = Period(last_month_end.replace(day=1), last_month_end)
    with tempfile.TemporaryDirectory() as folder:
        url = args.ledger_url or f"sqlite:///{Path(folder) / 'ledger.sqlite3'}"
        ledger = Ledger.open(url)
        engine = ledger.engine
        try:
            built_s, counts = timed(lambda: build(engine, args.victims, month, args.seed))
            if engine.dialect.name == "postgresql":
                # A live ledger has planner statistics; a bulk load has none until analysed.
                with engine.begin() as connection:
                    connection.exec_driver_sql("ANALYZE")
            print(
                f"ledger ({engine.dialect.name}): {args.victims:,} victims in "
                f"{month.first:%Y-%m}, {sum(counts.values()):,} rows "
                f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}), built in {built_s:.1f} s"
            )
            # Warm the page cache for everyone alike: the first pass pays for the disk.
            scan(engine)
            scan_s, scanned = timed(lambda: scan(engine))
            read_s, read = timed(lambda: read_rows(engine))
            now = datetime.now(UTC)
            report_s, report = timed(lambda: produce(engine, month, now=now, dead_letters=None))
            text_s, _ = timed(lambda: render(report, Format.TABLE))
            html_s, page = timed(lambda: render(report, Format.HTML))
        finally:
            ledger.dispose()
    total = report_s + text_s
    print(
        f"baseline scan: count(*) of {len(READ_TABLES)} tables ({scanned:,} rows): {scan_s:.3f} s"
    )
    print(f"baseline read: the report's columns of {read:,} rows into Python: {read_s:.3f} s")
    print(
        f"report (count in SQL + build): {report_s:.2f} s; terminal table {text_s:.3f} s; "
        f"total {total:.2f} s = {total / scan_s:.1f}x the scan, {total / read_s:.2f}x the read"
    )
    print(f"HTML page with charts: {html_s:.2f} s more ({len(page) / 1024:.0f} KiB)")
    print(
        f"headlines: victims {report.headline('victims')}, referred in time "
        f"{report.headline('share_referred_in_time')}, tasks on time "
        f"{report.headline('share_tasks_on_time')}"
    )
    if args.check and total + html_s >= TARGET_SECONDS:
        print(f"FAIL: {total + html_s:.2f} s >= {TARGET_SECONDS:g} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
