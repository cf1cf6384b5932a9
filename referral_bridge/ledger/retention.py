"""Carrying out the retention policy (core/retention.py) on the ledger.

`gather` reads, per ref, when anything last happened and what personal data is still held;
`erase` erases one due matter in its own transaction, under the matter's locks, after checking
again that it is still idle (an event may have arrived since the sweep read it). Each erasure is
recorded in the audit trail. `claim_sweep` lets one worker among many run the daily sweep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, func, select, true, update
from sqlalchemy.exc import IntegrityError

from referral_bridge.core.retention import DueMatter, RefActivity, due_for_erasure
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import append_audit
from referral_bridge.ledger.records import AuditRecord
from referral_bridge.ledger.store import Ledger

#: What `recorded_by` of an erased consent record says.
ERASED = "(erased)"
#: The audit action of an erasure.
PERSONAL_DATA_ERASED = "personal_data_erased"
#: The rb_jobs row of the retention sweep.
SWEEP_JOB = "retention"


@dataclass
class _Facts:
    dates: list[datetime] = field(default_factory=list)
    busy: bool = False
    records: int = 0
    bodies: int = 0
    consents: int = 0


def gather(  # noqa: C901 (one pass over every table that dates a case)
    connection: Connection, refs: Collection[str] | None = None
) -> tuple[dict[str, RefActivity], list[tuple[str, str]]]:
    """Per ref: last activity, whether anything is under way, personal data held; and links."""
    facts: dict[str, _Facts] = defaultdict(_Facts)

    def only(column: Any) -> Any:
        return column.in_(refs) if refs is not None else true()

    r, a, d, c, h = t.records, t.actions, t.decisions, t.consents, t.holds
    for ref, updated_at, erased_at in connection.execute(
        select(r.c.record_ref, r.c.updated_at, r.c.erased_at).where(only(r.c.record_ref))
    ):
        facts[ref].dates.append(updated_at)
        facts[ref].records += erased_at is None
    p, tk, ro = t.processed_events, t.tasks, t.referral_outcomes
    dated: tuple[tuple[Any, Any], ...] = (
        (p.c.record_ref, p.c.processed_at),
        (a.c.case_ref, a.c.at),
        (d.c.case_ref, d.c.decided_at),
        (c.c.case_ref, c.c.recorded_at),
        (tk.c.case_ref, func.coalesce(tk.c.completed_at, tk.c.issued_at)),
        (ro.c.case_ref, ro.c.received_at),
    )
    for column, latest in dated:
        for ref, at in connection.execute(
            select(column, func.max(latest)).where(only(column)).group_by(column)
        ):
            if at is not None:
                facts[ref].dates.append(_aware(at))
    # A task still to be escalated names its officer from the snapshot (or its own message).
    for (ref,) in connection.execute(
        select(tk.c.case_ref).where(
            only(tk.c.case_ref),
            tk.c.completed_at.is_(None),
            tk.c.escalated_at.is_(None),
            tk.c.due_by.is_not(None),
        )
    ):
        facts[ref].busy = True
    for ref, held in connection.execute(
        select(c.c.case_ref, func.count())
        .where(only(c.c.case_ref), c.c.recorded_by != ERASED)
        .group_by(c.c.case_ref)
    ):
        facts[ref].consents += int(held)
    for (ref,) in connection.execute(select(h.c.case_ref).where(only(h.c.case_ref), h.c.open)):
        facts[ref].busy = True
    cr = t.crime_reviews
    for (ref,) in connection.execute(
        select(cr.c.incident_ref).where(
            only(cr.c.incident_ref), cr.c.raised_at.is_(None), cr.c.resolved_at.is_(None)
        )
    ):
        facts[ref].busy = True
    o = t.outbox
    done = o.c.published_at.is_not(None) | o.c.rejected_at.is_not(None)
    for ref, undone, bodies, latest in connection.execute(
        select(
            a.c.case_ref,
            func.sum(case((done, 0), else_=1)),
            func.sum(case((done & (func.length(o.c.body) > 0), 1), else_=0)),
            func.max(func.coalesce(o.c.published_at, o.c.rejected_at, o.c.created_at)),
        )
        .join(o, o.c.message_id == a.c.message_id)
        .where(only(a.c.case_ref))
        .group_by(a.c.case_ref)
    ):
        facts[ref].busy |= bool(undone)
        facts[ref].bodies += int(bodies or 0)
        if latest is not None:
            facts[ref].dates.append(_aware(latest))
    links = [
        (row.incident_ref, row.crime_ref)
        for row in connection.execute(
            select(t.links).where(only(t.links.c.incident_ref) | only(t.links.c.crime_ref))
        )
    ]
    activity = {
        ref: RefActivity(
            ref=ref,
            last_activity=max(f.dates) if f.dates else None,
            busy=f.busy,
            records=f.records,
            bodies=f.bodies,
            consents=f.consents,
        )
        for ref, f in facts.items()
    }
    return activity, links


def _aware(value: datetime) -> datetime:
    """An aggregate bypasses the column type: SQLite hands back naive UTC (or text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def due(ledger: Ledger, *, now: datetime, erase_after: timedelta) -> list[DueMatter]:
    """The matters due for erasure now (read only: the dry run's answer)."""
    with ledger.engine.connect() as connection:
        activity, links = gather(connection)
    return due_for_erasure(activity, links, now=now, erase_after=erase_after)


def erase(
    ledger: Ledger, matter: DueMatter, *, now: datetime, erase_after: timedelta, actor: str
) -> DueMatter | None:
    """Erase one matter's personal data if it is still due; returns what was erased, or None."""
    with ledger.transaction() as tx:
        connection = tx.connection
        tx.lock(matter.refs)
        if tx.matter(matter.refs) != matter.refs:
            return None  # linked to more since the sweep looked: the next sweep decides
        activity, links = gather(connection, matter.refs)
        again = due_for_erasure(activity, links, now=now, erase_after=erase_after)
        if not again:
            return None
        [current] = again
        refs = sorted(current.refs)
        connection.execute(
            update(t.records)
            .where(t.records.c.record_ref.in_(refs), t.records.c.erased_at.is_(None))
            .values(snapshot={}, erased_at=now)
        )
        messages = select(t.actions.c.message_id).where(t.actions.c.case_ref.in_(refs))
        connection.execute(
            update(t.outbox)
            .where(
                t.outbox.c.message_id.in_(messages),
                t.outbox.c.published_at.is_not(None) | t.outbox.c.rejected_at.is_not(None),
            )
            .values(body=b"")
        )
        connection.execute(
            update(t.consents)
            .where(t.consents.c.case_ref.in_(refs), t.consents.c.recorded_by != ERASED)
            .values(recorded_by=ERASED)
        )
        days = erase_after / timedelta(days=1)
        append_audit(
            connection,
            [
                AuditRecord(
                    at=now,
                    action=PERSONAL_DATA_ERASED,
                    actor=actor,
                    case_ref=refs[0],
                    detail=(
                        f"retention: erased {current.records} snapshots, {current.bodies} "
                        f"message bodies, {current.consents} consent recorders; no activity "
                        f"since {current.last_activity.isoformat()} (policy: {days:g} days); "
                        f"refs {' '.join(refs)}"
                    ),
                )
            ],
        )
        return current


def claim_sweep(ledger: Ledger, *, now: datetime, every: timedelta) -> bool:
    """Whether this worker runs the sweep now: True for one worker per `every`, among many."""
    jobs = t.jobs
    with ledger.engine.begin() as connection:
        claimed = connection.execute(
            update(jobs)
            .where(jobs.c.name == SWEEP_JOB, jobs.c.last_run_at <= now - every)
            .values(last_run_at=now)
        ).rowcount
        if claimed:
            return True
        exists = connection.execute(select(jobs.c.name).where(jobs.c.name == SWEEP_JOB)).first()
    if exists is not None:
        return False
    try:
        with ledger.engine.begin() as connection:
            connection.execute(jobs.insert().values(name=SWEEP_JOB, last_run_at=now))
    except IntegrityError:
        return False  # another worker inserted it first, and runs the sweep
    return True


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one sweep did (or, for a dry run, would do): counts only, never refs or data."""

    matters: int
    records: int
    bodies: int
    consents: int


def sweep(
    ledger: Ledger,
    *,
    now: datetime,
    erase_after: timedelta,
    actor: str,
    dry_run: bool = False,
    limit: int | None = None,
) -> SweepReport:
    """Erase every due matter (each in its own transaction), or only count them.

    `limit`: at most this many matters, the longest idle first (the scheduled sweep runs on the
    consumer's thread, which must keep feeding the watchdog; it comes back for the rest).
    """
    if not dry_run:
        ledger.forget_redeliveries(now)  # housekeeping, no personal data: rides on the sweep
    found = sorted(due(ledger, now=now, erase_after=erase_after), key=lambda m: m.last_activity)
    if limit is not None:
        found = found[:limit]
    done = (
        found
        if dry_run
        else [
            m
            for m in (
                erase(ledger, m, now=now, erase_after=erase_after, actor=actor) for m in found
            )
            if m is not None
        ]
    )
    return SweepReport(
        matters=len(done),
        records=sum(m.records for m in done),
        bodies=sum(m.bodies for m in done),
        consents=sum(m.consents for m in done),
    )


__all__ = [
    "ERASED",
    "PERSONAL_DATA_ERASED",
    "SweepReport",
    "claim_sweep",
    "due",
    "erase",
    "gather",
    "sweep",
]
