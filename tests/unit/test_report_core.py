"""The report's arithmetic without a database: periods, sums per dimension, shares, contacts."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.report import (
    ALL,
    CATEGORY,
    MONTH,
    PROVIDER,
    REFERRALS,
    ContactCheck,
    Counted,
    LedgerCounts,
    Medians,
    Period,
    breakdown,
    build_report,
    contacted_in_time,
    last_calendar_month,
    period_of,
)
from referral_bridge.report import dead_letter_counts
from referral_bridge.report.render import render_csv, render_text, show


def test_the_default_period_is_the_last_calendar_month_across_a_year_end() -> None:
    assert last_calendar_month(date(2027, 1, 14)) == Period(date(2026, 12, 1), date(2026, 12, 31))
    assert period_of(None, None, date(2026, 3, 1)) == Period(date(2026, 2, 1), date(2026, 2, 28))
    assert period_of(date(2026, 11, 5), None, date(2026, 12, 1)).last == date(2026, 12, 1)
    assert period_of(None, date(2026, 11, 20), date(2026, 12, 1)).first == date(2026, 11, 1)


def test_a_period_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends"):
        Period(date(2026, 11, 2), date(2026, 11, 1))


def test_months_are_london_months_in_utc() -> None:
    period = Period(date(2026, 3, 15), date(2026, 4, 2))
    (march, start, end), (april, april_start, april_end) = period.months()
    assert (march, april) == ("2026-03", "2026-04")
    assert start == datetime(2026, 3, 15, 0, 0, tzinfo=UTC)  # GMT
    # British Summer Time began on 29 March: April starts at 23:00 UTC the day before.
    assert end == april_start == datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    assert april_end == period.end == datetime(2026, 4, 2, 23, 0, tzinfo=UTC)


def _referrals(month: str, category: str, provider: str, **counts: int) -> Counted:
    return Counted(
        {MONTH: month, CATEGORY: category, PROVIDER: provider},
        {"referrals": sum(counts.values()), **counts},
    )


def test_counts_are_summed_per_dimension_and_shares_exclude_what_is_not_yet_due() -> None:
    rows = [
        _referrals("2026-10", "burglary", "a", in_time=6, late=1),
        _referrals("2026-11", "burglary", "b", in_time=1, pending=3),
        _referrals("2026-11", "theft", "a", overdue=1, cancelled=2),
    ]
    whole = breakdown(REFERRALS, rows, ALL)
    assert whole.column("referrals") == {ALL: 14}
    # 7 in time of 9 due (6+1 in time, 1 late, 1 overdue); pending and cancelled are not due.
    assert whole.column("share_in_time") == {ALL: round(7 / 9, 4)}
    by_month = breakdown(REFERRALS, rows, MONTH)
    assert by_month.column("in_time") == {"2026-10": 6, "2026-11": 1}
    assert by_month.column("share_in_time") == {"2026-10": round(6 / 7, 4), "2026-11": 0.5}
    by_provider = breakdown(REFERRALS, rows, PROVIDER)
    assert by_provider.column("referrals") == {"a": 10, "b": 4}


def test_nothing_to_divide_by_is_no_share_and_a_missing_category_is_unknown() -> None:
    table = breakdown(
        REFERRALS, [Counted({CATEGORY: None}, {"referrals": 1, "pending": 1})], CATEGORY
    )
    assert table.column("share_in_time") == {"unknown": None}
    assert show("share_in_time", None) == "-"
    assert show("share_in_time", 0.875) == "87.5%"


def test_borderline_contacts_are_judged_on_working_days() -> None:
    calendar = WorkingDayCalendar()
    # Handed over on Thursday 24 December 2026, 10:00: Christmas Day, Boxing Day (substitute on
    # Monday 28th) and the weekend lie between, so 2 working days run to Wednesday 30th 10:00.
    handed = datetime(2026, 12, 24, 10, 0, tzinfo=UTC)
    checks = [
        ContactCheck({PROVIDER: "a"}, handed, datetime(2026, 12, 30, 9, 59, tzinfo=UTC)),
        ContactCheck({PROVIDER: "a"}, handed, datetime(2026, 12, 30, 10, 1, tzinfo=UTC)),
    ]
    found = contacted_in_time(checks, calendar)
    assert [c.counts for c in found] == [{"contacted_within_2wd": 1}]


def test_the_whole_report_from_counts() -> None:
    counts = LedgerCounts(
        victims=[Counted({MONTH: "2026-11", CATEGORY: "burglary"}, {"victims": 10, "refer": 8})],
        referrals=[_referrals("2026-11", "burglary", "a", in_time=7, late=1)],
        medians=Medians({(ALL, ALL): 3.5}),
        tasks=[
            Counted({MONTH: "2026-11"}, {"issued": 1, "completed_on_time": 1}),
            Counted({MONTH: "2026-11"}, {"issued": 1, "completed_late": 1}),
        ],
        dead_letters=dead_letter_counts(
            [
                ("schema_violation", datetime(2026, 11, 3, tzinfo=UTC)),
                ("schema_violation", datetime(2026, 12, 3, tzinfo=UTC)),  # after the period
                ("invalid_json", None),  # no time: not counted
            ],
            Period(date(2026, 11, 1), date(2026, 11, 30)),
        ),
    )
    report = build_report(
        counts,
        period=Period(date(2026, 11, 1), date(2026, 11, 30)),
        generated_at=datetime(2026, 12, 1, tzinfo=UTC),
        calendar=WorkingDayCalendar(),
    )
    assert report.headline("victims") == 10
    assert report.headline("share_referred_in_time") == 0.875
    assert report.headline("median_minutes_to_referral") == 3.5
    assert report.headline("share_tasks_on_time") == 0.5
    assert report.headline("dead_letters") == 1
    text = render_text(report)
    assert "87.5%" in text
    assert "50.0%" in text
    assert "headline,all,all,share_referred_in_time,0.875" in render_csv(report)


def test_an_unreadable_dead_letter_queue_is_said_not_counted_as_zero() -> None:
    report = build_report(
        LedgerCounts(dead_letters=None),
        period=Period(date(2026, 11, 1), date(2026, 11, 30)),
        generated_at=datetime(2026, 12, 1, tzinfo=UTC),
        calendar=WorkingDayCalendar(),
    )
    assert "dead_letters" not in {h.label for h in report.headlines}
    assert any("could not be read" in note for note in report.notes)


def test_the_worker_side_never_imports_the_plotting_or_template_libraries() -> None:
    """matplotlib and jinja2 cost about a second and are only for the HTML page: the worker (its
    compliance gauges) and the other formats must not load them."""
    import subprocess
    import sys

    code = (
        "import sys, referral_bridge.runtime.worker, referral_bridge.cli.report, "
        "referral_bridge.report.render; "
        "print(sorted(m for m in ('matplotlib', 'jinja2') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_the_page_is_drawn_headless_with_charts_as_inline_svg(tmp_path: Path) -> None:
    import subprocess
    import sys

    from referral_bridge.report.html import render_html

    report = build_report(
        LedgerCounts(
            victims=[Counted({MONTH: "2026-11", CATEGORY: "burglary"}, {"victims": 3, "refer": 3})],
            referrals=[_referrals("2026-11", "burglary", "a", in_time=3)],
        ),
        period=Period(date(2026, 11, 1), date(2026, 11, 30)),
        generated_at=datetime(2026, 12, 1, tzinfo=UTC),
        calendar=WorkingDayCalendar(),
    )
    page = render_html(report)
    assert page.count("<svg") == 3
    assert "<script" not in page
    # The only URLs are the SVG and XLink namespace names (identifiers, never fetched).
    assert set(re.findall(r"https?://[^\"' ]+", page)) <= {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }
    # No display and no GUI backend needed: drawing works in a process without DISPLAY.
    code = (
        "import sys; from datetime import date, datetime, UTC; "
        "from referral_bridge.core.calendar import WorkingDayCalendar; "
        "from referral_bridge.core.report import LedgerCounts, Period, build_report; "
        "from referral_bridge.report.html import render_html; "
        "r = build_report(LedgerCounts(), period=Period(date(2026, 11, 1), date(2026, 11, 30)), "
        "generated_at=datetime(2026, 12, 1, tzinfo=UTC), calendar=WorkingDayCalendar()); "
        "print(render_html(r).count('<svg'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
