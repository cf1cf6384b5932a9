"""The report as one self-contained HTML page: a Jinja2 template, charts drawn by matplotlib.

The page must open from a file on a police desktop with no network: the charts are inline SVG
(matplotlib's SVG backend, text kept as text in the system's sans-serif font, nothing fetched),
the style is inline, there is no script, and a Content-Security-Policy forbids any fetch should
someone add one. matplotlib is imported here only, through `Figure` (never pyplot, which would
pick a GUI backend and cost half a second of import), so other commands do not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from jinja2 import Environment, PackageLoader, select_autoescape

from referral_bridge.core.report import ALL, CATEGORY, MONTH, REASON, ComplianceReport
from referral_bridge.report.render import show

#: Outcome colours, readable in greyscale print too (light to dark).
_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666")


def _svg(figure: object) -> str:
    """The figure as an inline <svg> element (without the XML prolog and doctype)."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "referral-bridge"}):
        # No RDF metadata block: nothing in the page but the drawing (and no creator, no date).
        figure.savefig(  # type: ignore[attr-defined]
            buffer,
            format="svg",
            bbox_inches="tight",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 7.5, height: float = 3.2) -> tuple[object, object]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=96)
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def timeliness_chart(report: ComplianceReport) -> str:
    """Monthly share of referrals handed over within the deadline, with the count behind it."""
    table = report.table("referrals", MONTH)
    months = [key for key, _ in table.rows]
    share = table.column("share_in_time")
    counted = table.column("referrals")
    figure, axes = _figure()
    values = [(share[m] or 0.0) * 100 if isinstance(share[m], float) else 0.0 for m in months]
    # Positions, not the labels themselves: "2026-11" would be taken for a date.
    positions = list(range(len(months)))
    bars = axes.bar(positions, values, color=_PALETTE[0])  # type: ignore[attr-defined]
    axes.set_xticks(positions, months)  # type: ignore[attr-defined]
    for bar, month in zip(bars, months, strict=True):
        axes.annotate(  # type: ignore[attr-defined]
            f"{show('share_', share[month])} of {counted[month]}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes.set_ylim(0, 110)  # type: ignore[attr-defined]
    axes.set_ylabel("% referred in time")  # type: ignore[attr-defined]
    axes.set_title("Referrals within 2 working days, by month")  # type: ignore[attr-defined]
    return _svg(figure)


def _stacked(
    title: str, keys: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], unit: str
) -> str:
    figure, axes = _figure(height=max(2.4, 0.35 * len(keys) + 1.2))
    left = [0.0] * len(keys)
    positions = list(range(len(keys)))
    for (label, values), colour in zip(series, _PALETTE, strict=False):
        axes.barh(positions, values, left=left, label=label, color=colour)  # type: ignore[attr-defined]
        left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_yticks(positions, keys)  # type: ignore[attr-defined]
    axes.invert_yaxis()  # type: ignore[attr-defined]
    axes.set_xlabel(unit)  # type: ignore[attr-defined]
    axes.set_title(title)  # type: ignore[attr-defined]
    if not any(left):
        axes.set_xlim(0, 1)  # type: ignore[attr-defined]
    axes.legend(  # type: ignore[attr-defined]
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    return _svg(figure)


def outcomes_chart(report: ComplianceReport) -> str:
    """Victims by outcome for each offence category."""
    table = report.table("victims", CATEGORY)
    keys = [key for key, _ in table.rows] or ["(none)"]
    series = [
        (outcome, [float(v or 0) for v in table.column(outcome).values()] or [0.0])
        for outcome in ("refer", "leaflet", "hold", "withdraw", "none")
    ]
    return _stacked("Victims by outcome and offence category", keys, series, "victims")


def tasks_chart(report: ComplianceReport) -> str:
    """Task completion: on time, late, overdue, open, for each kind and reason."""
    table = report.table("tasks", REASON)
    keys = [key for key, _ in table.rows] or ["(none)"]
    series = [
        (state.replace("_", " "), [float(v or 0) for v in table.column(state).values()] or [0.0])
        for state in ("completed_on_time", "completed_late", "overdue", "open")
    ]
    return _stacked("Officer task completion", keys, series, "tasks")


def render_html(report: ComplianceReport) -> str:
    environment = Environment(
        loader=PackageLoader("referral_bridge.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["show"] = show
    environment.filters["words"] = lambda text: str(text).replace("_", " ")
    charts = {
        "timeliness": timeliness_chart(report),
        "outcomes": outcomes_chart(report),
        "tasks": tasks_chart(report),
    }
    return environment.get_template("report.html.j2").render(
        report=report, charts=charts, all_dimension=ALL
    )
