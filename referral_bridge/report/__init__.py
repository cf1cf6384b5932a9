"""The compliance report (issue 8): figures from the ledger for a period, in four formats.

`produce` counts (queries.py, SQL) and builds (core/report.py, pure); `render` lays the result
out as a terminal table, CSV, JSON or one self-contained HTML page (html.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.report import REASON, ComplianceReport, Counted, Period, build_report
from referral_bridge.report.queries import count_ledger
from referral_bridge.report.render import render_csv, render_json, render_text


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    HTML = "html"


def produce(
    engine: Engine,
    period: Period,
    *,
    now: datetime,
    dead_letters: Sequence[Counted] | None = (),
) -> ComplianceReport:
    """The report for `period`, overdue and not-yet-due judged at `now`."""
    counts = count_ledger(engine, period, now, dead_letters=dead_letters)
    return build_report(counts, period=period, generated_at=now, calendar=WorkingDayCalendar())


def dead_letter_counts(
    failures: Iterable[tuple[str, datetime | None]], period: Period
) -> list[Counted]:
    """Dead letters (reason, failed at) that failed within the period, counted by reason."""
    counts: dict[str, int] = {}
    for reason, failed_at in failures:
        if failed_at is not None and period.start <= failed_at < period.end:
            counts[reason] = counts.get(reason, 0) + 1
    return [Counted({REASON: reason}, {"dead_letters": n}) for reason, n in sorted(counts.items())]


def render(report: ComplianceReport, form: Format) -> str:
    if form is Format.HTML:
        from referral_bridge.report.html import render_html

        return render_html(report)
    if form is Format.CSV:
        return render_csv(report)
    if form is Format.JSON:
        return render_json(report)
    return render_text(report)


__all__ = ["Format", "dead_letter_counts", "produce", "render"]
