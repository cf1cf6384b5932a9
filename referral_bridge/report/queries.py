"""The compliance report's counts, read from the ledger with set-based GROUP BY queries.

Each query groups by every dimension the report breaks a figure down by (month, category,
provider, service, ...) and by the state being counted, so what comes back is a few hundred
counted rows however many victims the ledger holds; core/report.py sums them per dimension.
Months are computed in SQL with a CASE over the period's Europe/London month boundaries (the
same on SQLite and PostgreSQL), inside a subquery that the outer query groups by, because
PostgreSQL cannot see that two copies of a bound parameter are one expression.

Nothing here reads `rb_records` (snapshots hold personal data): categories and the start of the
Victims' Code clock come from `rb_decisions` (schema 6).

Long on purpose: one query per table of the report, side by side, so the definitions they share
(the period, month buckets, what counts as in time) are read together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Subquery,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)

from referral_bridge.core.report import (
    ALL,
    CATEGORY,
    KIND,
    MONTH,
    OUTCOME,
    PROVIDER,
    REASON,
    SERVICE,
    ContactCheck,
    Counted,
    LedgerCounts,
    Medians,
    Period,
)
from referral_bridge.ledger import schema as t

#: Contacts within this many minutes of the hand-over are within 2 working days whatever the
#: calendar; after `_CONTACT_SURELY_LATE` they are not (no run of holidays is that long). Only
#: those in between are fetched and checked against the calendar in the core.
_CONTACT_SURELY_IN_TIME = 2 * 24 * 60
_CONTACT_SURELY_LATE = 14 * 24 * 60

#: Leaflet reasons that are fallbacks for a referral that could not be handed over.
FALLBACK_REASONS = ("provider_rejected", "provider_unreachable")


def _one(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


class ReportQueries:
    """Counts one period of the ledger; `as_of` is when "overdue" and "not yet due" are judged."""

    def __init__(self, connection: Connection, period: Period, as_of: datetime) -> None:
        self._c = connection
        self._period = period
        self._as_of = as_of
        self._sqlite = connection.dialect.name == "sqlite"

    # --- expressions -----------------------------------------------------------------------

    def _in_period(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self._period.start, column < self._period.end)

    def _month(self, column: Any) -> ColumnElement[Any]:
        whens = [
            (and_(column >= start, column < end), literal(label))
            for label, start, end in self._period.months()
        ]
        return case(*whens, else_=null())

    def _minutes(self, later: Any, earlier: Any) -> ColumnElement[Any]:
        """Minutes from `earlier` to `later` (both UTC; SQLite stores them as ISO text)."""
        if self._sqlite:
            return (func.julianday(later) - func.julianday(earlier)) * 1440.0
        return cast(extract("epoch", later - earlier), Float) / 60.0

    def _flags_by_month_and_category(
        self, dated: Subquery, total: str, flags: Sequence[str]
    ) -> list[Counted]:
        """Rows of `dated` (month, category, 0/1 flags) counted as `total` and each flag summed,
        per month and category."""
        query = select(
            dated.c.month,
            dated.c.category,
            func.count(),
            *(func.sum(dated.c[name]) for name in flags),
        ).group_by(dated.c.month, dated.c.category)
        found = []
        for row in self._c.execute(query):
            month, category, rows, *sums = tuple(row)
            counts = {total: int(rows)}
            counts.update({name: int(n or 0) for name, n in zip(flags, sums, strict=True)})
            found.append(Counted({MONTH: month, CATEGORY: category}, counts))
        return found

    def _counted(self, query: Any, dims: Sequence[str], measure: str = "n") -> list[Counted]:
        """Rows of `dims..., count` into Counted rows with `count` under `measure`."""
        found = []
        for row in self._c.execute(query):
            values = tuple(row)
            found.append(
                Counted(dict(zip(dims, values[: len(dims)], strict=True)), {measure: values[-1]})
            )
        return found

    # --- the sections ----------------------------------------------------------------------

    def victims(self) -> list[Counted]:
        d = t.decisions
        flags = {
            outcome: func.max(_one(d.c.outcome == outcome)).label(outcome)
            for outcome in ("refer", "leaflet", "hold", "withdraw", "update", "none")
        }
        per_victim = (
            select(
                func.min(d.c.decided_at).label("first_at"),
                func.max(d.c.category).label("category"),
                *flags.values(),
            )
            .where(self._in_period(d.c.decided_at))
            .group_by(d.c.case_ref, d.c.victim_id)
            .subquery()
        )
        dated = select(
            self._month(per_victim.c.first_at).label("month"),
            per_victim.c.category,
            *(per_victim.c[name] for name in flags),
        ).subquery()
        return self._flags_by_month_and_category(dated, "victims", list(flags))

    def reasons(self) -> list[Counted]:
        d = t.decisions
        per_victim = (
            select(d.c.outcome, d.c.reason)
            .where(self._in_period(d.c.decided_at))
            .group_by(d.c.case_ref, d.c.victim_id, d.c.outcome, d.c.reason)
            .subquery()
        )
        query = select(per_victim.c.outcome, per_victim.c.reason, func.count()).group_by(
            per_victim.c.outcome, per_victim.c.reason
        )
        return [
            Counted({OUTCOME: f"{outcome}: {reason}"}, {"victims": int(n)})
            for outcome, reason, n in self._c.execute(query)
        ]

    def referral_base(self) -> Subquery:
        """One row per referral made in the period, with its delivery state and facts."""
        a, o, d = t.actions, t.outbox, t.decisions
        delivered = o.c.published_at.is_not(None)
        status = case(
            (o.c.cancel_reason.is_not(None), "cancelled"),
            (
                and_(delivered, or_(o.c.deadline.is_(None), o.c.published_at <= o.c.deadline)),
                "in_time",
            ),
            (delivered, "late"),
            (o.c.rejected_at.is_not(None), "rejected"),
            (o.c.deadline < self._as_of, "overdue"),
            else_="pending",
        )
        decision = and_(
            d.c.event_id == o.c.event_id,
            d.c.case_ref == a.c.case_ref,
            d.c.victim_id == a.c.victim_id,
            d.c.outcome == "refer",
        )
        return (
            select(
                a.c.message_id.label("referral_id"),
                self._month(a.c.at).label("month"),
                d.c.category.label("category"),
                a.c.provider.label("provider"),
                a.c.service.label("service"),
                status.label("status"),
                o.c.published_at.label("handed_over_at"),
                self._minutes(o.c.published_at, d.c.clock_from).label("minutes"),
            )
            .select_from(a.join(o, o.c.message_id == a.c.message_id).outerjoin(d, decision))
            .where(a.c.action == "referral", self._in_period(a.c.at))
            .subquery()
        )

    def referrals(self, base: Subquery) -> list[Counted]:
        dims = (base.c.month, base.c.category, base.c.provider, base.c.service, base.c.status)
        found = []
        for month, category, provider, service, status, n in self._c.execute(
            select(*dims, func.count()).group_by(*dims)
        ):
            found.append(
                Counted(
                    {MONTH: month, CATEGORY: category, PROVIDER: provider, SERVICE: service},
                    {"referrals": int(n), status: int(n)},
                )
            )
        return found

    def medians(self, base: Subquery) -> Medians:
        """Exact medians per dimension value, with window functions (SQLite 3.25+, PostgreSQL),
        in one query over the timed referrals, which both databases compute once (a CTE used
        several times is materialised)."""
        timed = (
            select(base.c.month, base.c.category, base.c.provider, base.c.service, base.c.minutes)
            .where(base.c.minutes.is_not(None))
            .cte("timed")
        )
        parts = []
        for dimension, column in (
            (ALL, literal(ALL)),
            (MONTH, timed.c.month),
            (CATEGORY, timed.c.category),
            (PROVIDER, timed.c.provider),
            (SERVICE, timed.c.service),
        ):
            ranked = select(
                literal(dimension).label("dimension"),
                column.label("key"),
                timed.c.minutes,
                func.row_number().over(partition_by=column, order_by=timed.c.minutes).label("rn"),
                func.count().over(partition_by=column).label("n"),
            ).subquery()
            middle = or_(ranked.c.rn == (ranked.c.n + 1) / 2, ranked.c.rn == (ranked.c.n + 2) / 2)
            parts.append(
                select(ranked.c.dimension, ranked.c.key, func.avg(ranked.c.minutes))
                .where(middle)
                .group_by(ranked.c.dimension, ranked.c.key)
            )
        minutes: dict[tuple[str, str], float] = {}
        for dimension, key, value in self._c.execute(union_all(*parts)):
            minutes[(dimension, key or "unknown")] = round(float(value), 1)
        return Medians(minutes)

    def consent(self) -> list[Counted]:
        d = t.decisions
        per_victim = (
            select(
                func.min(d.c.decided_at).label("first_at"),
                func.max(d.c.category).label("category"),
                func.max(_one(d.c.outcome == "refer")).label("given"),
                func.max(_one(d.c.reason == "declined")).label("declined"),
                func.max(_one(d.c.reason == "consent_not_obtained")).label("not_obtained"),
                func.max(_one(d.c.reason == "consent_needed")).label("task"),
            )
            .where(self._in_period(d.c.decided_at), d.c.regime == "explicit")
            .group_by(d.c.case_ref, d.c.victim_id)
            .subquery()
        )
        v = per_victim.c
        dated = select(
            self._month(v.first_at).label("month"),
            v.category,
            _one(v.given + v.declined + v.task > 0).label("asked"),
            v.given,
            _one(and_(v.given == 0, v.declined == 1)).label("declined"),
            _one(and_(v.given == 0, v.declined == 0, v.not_obtained == 1)).label("not_obtained"),
            _one(and_(v.given == 0, v.declined == 0, v.not_obtained == 0)).label("awaiting"),
        ).subquery()
        names = ("asked", "given", "declined", "not_obtained", "awaiting")
        return self._flags_by_month_and_category(dated, "needing", names)

    def tasks(self) -> list[Counted]:
        tk, a, d = t.tasks, t.actions, t.decisions
        leaflet_category = (
            select(
                d.c.case_ref,
                d.c.victim_id,
                d.c.reason,
                func.max(d.c.category).label("category"),
            )
            .where(d.c.outcome == "leaflet")
            .group_by(d.c.case_ref, d.c.victim_id, d.c.reason)
            .subquery()
        )
        done = tk.c.completed_at.is_not(None)
        state = case(
            (
                and_(done, or_(tk.c.due_by.is_(None), tk.c.completed_at <= tk.c.due_by)),
                "completed_on_time",
            ),
            (done, "completed_late"),
            (tk.c.due_by < self._as_of, "overdue"),
            else_="open",
        )
        base = (
            select(
                self._month(tk.c.issued_at).label("month"),
                tk.c.kind,
                tk.c.reason,
                leaflet_category.c.category,
                a.c.provider,
                state.label("state"),
                _one(tk.c.escalated_at.is_not(None)).label("escalated"),
            )
            .select_from(
                tk.outerjoin(
                    a, and_(a.c.message_id == tk.c.task_id, a.c.action == "leaflet")
                ).outerjoin(
                    leaflet_category,
                    and_(
                        leaflet_category.c.case_ref == tk.c.case_ref,
                        leaflet_category.c.victim_id == tk.c.victim_id,
                        leaflet_category.c.reason == tk.c.reason,
                    ),
                )
            )
            .where(tk.c.kind != "escalation", self._in_period(tk.c.issued_at))
            .subquery()
        )
        dims = (
            base.c.month,
            base.c.kind,
            base.c.reason,
            base.c.category,
            base.c.provider,
            base.c.state,
        )
        query = select(*dims, func.count(), func.sum(base.c.escalated)).group_by(*dims)
        found = []
        for month, kind, reason, category, provider, state_, n, escalated in self._c.execute(query):
            found.append(
                Counted(
                    {
                        MONTH: month,
                        KIND: kind,
                        REASON: f"{kind}: {reason}",
                        # A crime review is about an incident, not a victim's offence.
                        CATEGORY: category or ("incident" if kind == "crime_review" else None),
                        PROVIDER: provider or ("none" if kind == "crime_review" else None),
                    },
                    {"issued": int(n), state_: int(n), "escalated": int(escalated or 0)},
                )
            )
        return found

    def outcomes(self, base: Subquery) -> tuple[list[Counted], list[ContactCheck]]:
        ro = t.referral_outcomes
        minutes = self._minutes(ro.c.first_contacted_at, base.c.handed_over_at)
        contact = case(
            (ro.c.first_contacted_at.is_(None), "none"),
            (minutes <= _CONTACT_SURELY_IN_TIME, "yes"),
            (minutes > _CONTACT_SURELY_LATE, "no"),
            else_="check",
        )
        joined = (
            select(
                base.c.month,
                base.c.category,
                base.c.provider,
                base.c.service,
                func.coalesce(ro.c.outcome, "no_outcome").label("outcome"),
                contact.label("contact"),
                base.c.handed_over_at,
                ro.c.first_contacted_at,
            )
            .select_from(base.outerjoin(ro, ro.c.referral_id == base.c.referral_id))
            .where(base.c.handed_over_at.is_not(None))
            .subquery()
        )
        j = joined.c
        dims = (j.month, j.category, j.provider, j.service, j.outcome, j.contact)
        found = []
        for month, category, provider, service, outcome, contacted, n in self._c.execute(
            select(*dims, func.count()).group_by(*dims)
        ):
            counts = {"delivered": int(n), outcome: int(n)}
            if contacted == "yes":
                counts["contacted_within_2wd"] = int(n)
            found.append(
                Counted(
                    {MONTH: month, CATEGORY: category, PROVIDER: provider, SERVICE: service},
                    counts,
                )
            )
        borderline = select(
            j.month, j.category, j.provider, j.service, j.handed_over_at, j.first_contacted_at
        ).where(j.contact == "check")
        checks = [
            ContactCheck(
                {MONTH: row[0], CATEGORY: row[1], PROVIDER: row[2], SERVICE: row[3]},
                _utc(row[4]),
                _utc(row[5]),
            )
            for row in self._c.execute(borderline)
        ]
        return found, checks

    def crime_data(self) -> list[Counted]:
        cr, tk = t.crime_reviews, t.tasks
        resolved = cr.c.resolved_at.is_not(None)
        base = (
            select(
                self._month(cr.c.review_at).label("month"),
                _one(or_(resolved, cr.c.review_at <= self._as_of)).label("settled"),
                _one(cr.c.resolution == "recorded_in_time").label("in_time"),
                _one(cr.c.resolution == "recorded_after_review").label("after"),
                _one(cr.c.raised_at.is_not(None)).label("raised"),
                _one(
                    and_(cr.c.raised_at.is_not(None), ~resolved, tk.c.completed_at.is_(None))
                ).label("open"),
                _one(and_(~resolved, cr.c.review_at > self._as_of)).label("not_yet_due"),
            )
            .select_from(cr.outerjoin(tk, tk.c.task_id == cr.c.task_id))
            .where(self._in_period(cr.c.review_at))
            .subquery()
        )
        names = ("settled", "in_time", "after", "raised", "open", "not_yet_due")
        query = select(
            base.c.month, func.count(), *(func.sum(base.c[name]) for name in names)
        ).group_by(base.c.month)
        measures = (
            "settled",
            "recorded_within_24h",
            "recorded_after_review",
            "reviews_raised",
            "reviews_open",
            "not_yet_due",
        )
        found = []
        for month, disclosed, *values in self._c.execute(query):
            counts = {"disclosed": int(disclosed)}
            counts.update({m: int(n or 0) for m, n in zip(measures, values, strict=True)})
            found.append(Counted({MONTH: month}, counts))
        return found

    def fallbacks(self) -> list[Counted]:
        a = t.actions
        query = (
            select(a.c.provider, a.c.target, func.count())
            .where(
                a.c.action == "leaflet",
                a.c.target.in_(FALLBACK_REASONS),
                self._in_period(a.c.at),
            )
            .group_by(a.c.provider, a.c.target)
        )
        return self._counted(query, (PROVIDER, REASON), "fallbacks")


def _utc(value: Any) -> datetime:
    """Columns typed UtcDateTime come back aware; this only makes mypy and a bug sure of it."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError("the ledger returned a time without a timezone")
    return value


def count_ledger(
    engine: Engine,
    period: Period,
    as_of: datetime,
    *,
    dead_letters: Sequence[Counted] | None = (),
) -> LedgerCounts:
    """Everything the report needs from the ledger, in one read-only transaction."""
    with engine.connect() as connection:
        queries = ReportQueries(connection, period, as_of)
        base = queries.referral_base()
        outcomes, checks = queries.outcomes(base)
        counts = LedgerCounts(
            victims=queries.victims(),
            reasons=queries.reasons(),
            referrals=queries.referrals(base),
            medians=queries.medians(base),
            consent=queries.consent(),
            tasks=queries.tasks(),
            outcomes=outcomes,
            contact_checks=checks,
            crime_data=queries.crime_data(),
            fallbacks=queries.fallbacks(),
            dead_letters=dead_letters,
        )
        connection.rollback()
    return counts


__all__ = ["FALLBACK_REASONS", "ReportQueries", "count_ledger"]
