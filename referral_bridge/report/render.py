"""The report as a terminal table, CSV or JSON (the HTML page is in html.py).

Every format shows the same tables the core built; shares are fractions in CSV and JSON (0.875)
and percentages on the terminal and the page (87.5%).
"""

from __future__ import annotations

import csv
import io
import json

from referral_bridge.core.report import ComplianceReport, Table, Value
from referral_bridge.display import safe_text

#: Columns holding a share (a fraction 0..1), shown as a percentage.
SHARE_PREFIX = "share_"


def show(column: str, value: Value) -> str:
    """One cell for people: percentages for shares, '-' for nothing to divide by."""
    if value is None:
        return "-"
    if column.startswith(SHARE_PREFIX) and isinstance(value, float):
        return f"{value * 100:.1f}%"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _grid(headings: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headings)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _table_lines(table: Table) -> list[str]:
    headings = [table.dimension.upper(), *(c.replace("_", " ") for c in table.columns)]
    rows = [
        [safe_text(key), *(show(c, v) for c, v in zip(table.columns, values, strict=True))]
        for key, values in table.rows
    ]
    if not rows:
        rows = [["(none)", *("" for _ in table.columns)]]
    suffix = "" if table.dimension == "all" else f", by {table.dimension}"
    return [f"{table.title}{suffix}", *_grid(headings, rows), ""]


def render_text(report: ComplianceReport) -> str:
    period = report.period
    lines = [
        f"Victims' Code compliance, {period.first.isoformat()} to {period.last.isoformat()} "
        f"(Europe/London), generated {report.generated_at.isoformat(timespec='seconds')}",
        "",
    ]
    width = max(len(h.label) for h in report.headlines)
    for headline in report.headlines:
        lines.append(
            f"  {headline.label.replace('_', ' '):<{width}}  {show(headline.label, headline.value)}"
        )
    lines.append("")
    for table in report.tables:
        lines.extend(_table_lines(table))
    lines.extend(f"Note: {note}" for note in report.notes)
    return "\n".join(lines) + "\n"


def render_csv(report: ComplianceReport) -> str:
    """Long form, one figure per line: section, dimension, key, measure, value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["period_from", "period_to", "section", "dimension", "key", "measure", "value"])
    first, last = report.period.first.isoformat(), report.period.last.isoformat()
    for headline in report.headlines:
        writer.writerow(
            [first, last, "headline", "all", "all", headline.label, _raw(headline.value)]
        )
    for table in report.tables:
        for key, values in table.rows:
            for column, value in zip(table.columns, values, strict=True):
                writer.writerow(
                    [first, last, table.section, table.dimension, key, column, _raw(value)]
                )
    return out.getvalue()


def _raw(value: Value) -> str:
    return "" if value is None else str(value)


def render_json(report: ComplianceReport) -> str:
    return json.dumps(report.as_json(), indent=2) + "\n"
