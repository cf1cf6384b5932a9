"""The compliance report's arithmetic: counted rows in, figures out (issue 8).

The ledger adapter (referral_bridge/report/queries.py) counts in SQL, grouped by every
dimension a figure is broken down by (month, offence category, provider, service) and by the
state that is counted (in time, late, ...). Here those counts are summed per dimension, shares and
medians are attached, and the whole is laid out as tables that every format renders the same way.
Only codes, ids of providers and counts pass through: no personal data can reach a report.

Months and dates are Europe/London (the Victims' Code's working days are England and Wales').
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from referral_bridge.core.calendar import LONDON, WorkingDayCalendar

#: The dimensions a figure can be broken down by, in the order tables are shown.
ALL = "all"
MONTH = "month"
CATEGORY = "category"
PROVIDER = "provider"
SERVICE = "service"
KIND = "kind"
REASON = "reason"
OUTCOME = "outcome"

#: Shown for a dimension value the ledger does not have (rows written before schema 6).
UNKNOWN = "unknown"

#: Working days within which a provider should contact a referred victim (the report's measure).
CONTACT_WORKING_DAYS = 2

Value = int | float | str | None


@dataclass(frozen=True, slots=True)
class Period:
    """Whole days, `first` to `last` inclusive, in Europe/London."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"the period ends ({self.last}) before it starts ({self.first})")

    @property
    def start(self) -> datetime:
        """The first instant of the period (local midnight), in UTC."""
        return _midnight(self.first)

    @property
    def end(self) -> datetime:
        """The first instant after the period, in UTC."""
        return _midnight(self.last + timedelta(days=1))

    def months(self) -> list[tuple[str, datetime, datetime]]:
        """(`YYYY-MM`, start, end) of each calendar month the period touches, clipped to it."""
        months: list[tuple[str, datetime, datetime]] = []
        day = self.first
        while day <= self.last:
            following = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
            last = min(self.last, following - timedelta(days=1))
            months.append((f"{day:%Y-%m}", _midnight(day), _midnight(last + timedelta(days=1))))
            day = following
        return months

    def as_json(self) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat()}


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)


def last_calendar_month(today: date) -> Period:
    """The calendar month before the one `today` is in (the default period)."""
    first_of_this = today.replace(day=1)
    last = first_of_this - timedelta(days=1)
    return Period(last.replace(day=1), last)


def period_of(first: date | None, last: date | None, today: date) -> Period:
    """The period an operator asked for: both ends, one end, or the last calendar month.

    Only `--from`: up to today. Only `--to`: from the first of that month.
    """
    if first is None and last is None:
        return last_calendar_month(today)
    if first is None:
        assert last is not None
        return Period(last.replace(day=1), last)
    return Period(first, last if last is not None else today)


@dataclass(frozen=True, slots=True)
class Counted:
    """One row the ledger counted: its dimension values and counts of each measure."""

    dims: Mapping[str, str | None]
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Share:
    """A derived column: numerator measures over denominator measures (None when 0/0)."""

    name: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """What one section of the report counts, and by what it is broken down."""

    key: str
    title: str
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    shares: tuple[Share, ...] = ()


@dataclass(frozen=True, slots=True)
class Table:
    """One breakdown of one section: a row per value of `dimension` (`all`: one row)."""

    section: str
    title: str
    dimension: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Value, ...]], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "section": self.section,
            "title": self.title,
            "dimension": self.dimension,
            "rows": [
                {self.dimension: key, **dict(zip(self.columns, values, strict=True))}
                for key, values in self.rows
            ],
        }

    def column(self, name: str) -> dict[str, Value]:
        """`key -> value` of one column (for charts and tests)."""
        index = self.columns.index(name)
        return {key: values[index] for key, values in self.rows}


@dataclass(frozen=True, slots=True)
class Headline:
    label: str
    value: Value
    #: What the figure means, in Victims' Code terms (shown in the HTML page and the docs).
    meaning: str


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    period: Period
    generated_at: datetime
    headlines: tuple[Headline, ...]
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = ()

    def table(self, section: str, dimension: str = ALL) -> Table:
        for table in self.tables:
            if table.section == section and table.dimension == dimension:
                return table
        raise KeyError(f"{section} by {dimension}")

    def headline(self, label: str) -> Value:
        return next(h.value for h in self.headlines if h.label == label)

    def as_json(self) -> dict[str, object]:
        return {
            "period": self.period.as_json(),
            "timezone": "Europe/London",
            "generated_at": self.generated_at.isoformat(),
            "headlines": {h.label: h.value for h in self.headlines},
            "tables": [table.as_json() for table in self.tables],
            "notes": list(self.notes),
        }


# --- the sections --------------------------------------------------------------------------

VICTIMS = SectionSpec(
    "victims",
    "Victims decided, by outcome",
    ("victims", "refer", "leaflet", "hold", "withdraw", "update", "none"),
    (ALL, MONTH, CATEGORY),
)
OUTCOME_REASONS = SectionSpec(
    "victim_reasons",
    "Victims by outcome and reason",
    ("victims",),
    (OUTCOME,),
)
REFERRALS = SectionSpec(
    "referrals",
    "Referrals within the Victims' Code deadline (2 working days)",
    ("referrals", "in_time", "late", "overdue", "rejected", "pending", "cancelled"),
    (ALL, MONTH, CATEGORY, PROVIDER, SERVICE),
    (Share("share_in_time", ("in_time",), ("in_time", "late", "overdue", "rejected")),),
)
CONSENT = SectionSpec(
    "consent",
    "Consent asked where the regime needs it (explicit consent)",
    ("needing", "asked", "given", "declined", "not_obtained", "awaiting"),
    (ALL, MONTH, CATEGORY),
    (Share("share_asked", ("asked",), ("needing",)),),
)
TASKS = SectionSpec(
    "tasks",
    "Officer tasks: leaflets, consent and crime reviews",
    ("issued", "completed_on_time", "completed_late", "overdue", "open", "escalated"),
    (ALL, MONTH, KIND, REASON, CATEGORY, PROVIDER),
    (
        Share(
            "share_on_time",
            ("completed_on_time",),
            ("completed_on_time", "completed_late", "overdue"),
        ),
    ),
)
OUTCOMES = SectionSpec(
    "provider_outcomes",
    "Provider outcomes for referrals handed over",
    (
        "delivered",
        "accepted",
        "contacted",
        "unable_to_contact",
        "declined_by_victim",
        "returned",
        "no_outcome",
        "contacted_within_2wd",
    ),
    (ALL, MONTH, CATEGORY, PROVIDER, SERVICE),
    (Share("share_contacted_within_2wd", ("contacted_within_2wd",), ("delivered",)),),
)
CRIME_DATA = SectionSpec(
    "crime_data_integrity",
    "Crimes disclosed in incidents (crime data integrity)",
    (
        "disclosed",
        "settled",
        "recorded_within_24h",
        "recorded_after_review",
        "reviews_raised",
        "reviews_open",
        "not_yet_due",
    ),
    (ALL, MONTH),
    (
        Share(
            "share_recorded_within_24h",
            ("recorded_within_24h",),
            ("settled",),
        ),
    ),
)
FALLBACKS = SectionSpec(
    "fallbacks",
    "Fallback leaflet tasks (provider rejected or unreachable at the deadline)",
    ("fallbacks",),
    (ALL, PROVIDER, REASON),
)
DEAD_LETTERS = SectionSpec(
    "dead_letters",
    "Dead letters waiting on the queue that failed in the period",
    ("dead_letters",),
    (ALL, REASON),
)

SECTIONS = (
    VICTIMS,
    OUTCOME_REASONS,
    REFERRALS,
    CONSENT,
    TASKS,
    OUTCOMES,
    CRIME_DATA,
    FALLBACKS,
    DEAD_LETTERS,
)


@dataclass(frozen=True, slots=True)
class Medians:
    """Median minutes from the report (or consent) to the referral's hand-over, per dimension
    value: `(dimension, value) -> minutes` (`(all, all)` for the whole period)."""

    minutes: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContactCheck:
    """A contacted referral the ledger could not class by elapsed time alone: contacted more
    than 2 days but less than a fortnight after the hand-over. The calendar decides."""

    dims: Mapping[str, str | None]
    handed_over_at: datetime
    first_contacted_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerCounts:
    """Everything the adapter counted for one period: the report's only input."""

    victims: Sequence[Counted] = ()
    reasons: Sequence[Counted] = ()
    referrals: Sequence[Counted] = ()
    medians: Medians = field(default_factory=Medians)
    consent: Sequence[Counted] = ()
    tasks: Sequence[Counted] = ()
    outcomes: Sequence[Counted] = ()
    contact_checks: Sequence[ContactCheck] = ()
    crime_data: Sequence[Counted] = ()
    fallbacks: Sequence[Counted] = ()
    #: None when the dead-letter queue could not be read (the report says so).
    dead_letters: Sequence[Counted] | None = ()


def contacted_in_time(
    checks: Iterable[ContactCheck], calendar: WorkingDayCalendar
) -> list[Counted]:
    """The borderline contacts that were within 2 working days of the hand-over, as counts."""
    found: list[Counted] = []
    for check in checks:
        due = calendar.add_working_days(check.handed_over_at, CONTACT_WORKING_DAYS)
        if check.first_contacted_at <= due:
            found.append(Counted(check.dims, {"contacted_within_2wd": 1}))
    return found


def breakdown(spec: SectionSpec, rows: Iterable[Counted], dimension: str) -> Table:
    """Sum `rows` by one dimension and add the section's shares."""
    sums: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(spec.measures, 0))
    for row in rows:
        key = ALL if dimension == ALL else (row.dims.get(dimension) or UNKNOWN)
        target = sums[key]
        for measure, count in row.counts.items():
            if measure in target:
                target[measure] += count
    if dimension == ALL and not sums:
        sums[ALL] = dict.fromkeys(spec.measures, 0)
    columns = spec.measures + tuple(share.name for share in spec.shares)
    table_rows = []
    for key in sorted(sums):
        counts = sums[key]
        values: list[Value] = [counts[m] for m in spec.measures]
        values.extend(_share(counts, share) for share in spec.shares)
        table_rows.append((key, tuple(values)))
    return Table(spec.key, spec.title, dimension, columns, tuple(table_rows))


def _share(counts: Mapping[str, int], share: Share) -> float | None:
    below = sum(counts[m] for m in share.denominator)
    if below == 0:
        return None
    return round(sum(counts[m] for m in share.numerator) / below, 4)


def _with_medians(table: Table, medians: Medians) -> Table:
    rows = tuple(
        (key, (*values, medians.minutes.get((table.dimension, key)))) for key, values in table.rows
    )
    return Table(
        table.section,
        table.title,
        table.dimension,
        (*table.columns, "median_minutes_to_referral"),
        rows,
    )


def build_report(
    counts: LedgerCounts,
    *,
    period: Period,
    generated_at: datetime,
    calendar: WorkingDayCalendar,
) -> ComplianceReport:
    """The whole report from what the ledger counted."""
    inputs: dict[str, Sequence[Counted]] = {
        VICTIMS.key: counts.victims,
        OUTCOME_REASONS.key: counts.reasons,
        REFERRALS.key: counts.referrals,
        CONSENT.key: counts.consent,
        TASKS.key: counts.tasks,
        OUTCOMES.key: [
            *counts.outcomes,
            *contacted_in_time(counts.contact_checks, calendar),
        ],
        CRIME_DATA.key: counts.crime_data,
        FALLBACKS.key: counts.fallbacks,
        DEAD_LETTERS.key: counts.dead_letters or (),
    }
    tables: list[Table] = []
    for spec in SECTIONS:
        if spec is DEAD_LETTERS and counts.dead_letters is None:
            continue
        for dimension in spec.dimensions:
            table = breakdown(spec, inputs[spec.key], dimension)
            if spec is REFERRALS:
                table = _with_medians(table, counts.medians)
            tables.append(table)
    notes = [
        "Counts only: no names, contact details or dates of birth are read or shown.",
        "Months and dates are Europe/London. Victims are counted once per outcome and reason, "
        "in the month of their first decision in the period.",
    ]
    if counts.dead_letters is None:
        notes.append(
            "Dead letters: the queue could not be read, so they are not counted "
            "(see `referral-bridge dlq list`)."
        )
    report = ComplianceReport(period, generated_at, (), tuple(tables), tuple(notes))
    return ComplianceReport(
        period, generated_at, _headlines(report, counts), report.tables, report.notes
    )


def _headlines(report: ComplianceReport, counts: LedgerCounts) -> tuple[Headline, ...]:
    def one(section: str, column: str) -> Value:
        return report.table(section).column(column)[ALL]

    headlines = [
        Headline(
            "victims",
            one("victims", "victims"),
            "Victims of crime or incidents the bridge decided for in the period.",
        ),
        Headline(
            "referrals",
            one("referrals", "referrals"),
            "Referrals made to victim-services providers (Right 4).",
        ),
        Headline(
            "share_referred_in_time",
            one("referrals", "share_in_time"),
            "Share of referrals handed over within 2 working days of the report, or of consent "
            "where the clock runs from consent (Right 4), of those due by now.",
        ),
        Headline(
            "referred_late",
            _int(one("referrals", "late")) + _int(one("referrals", "overdue")),
            "Referrals handed over after their deadline, or still not handed over past it.",
        ),
        Headline(
            "median_minutes_to_referral",
            one("referrals", "median_minutes_to_referral"),
            "Median time from the report (or consent) to the referral's hand-over, in minutes.",
        ),
        Headline(
            "share_consent_asked",
            one("consent", "share_asked"),
            "Of victims whose referral needs explicit consent, the share whose consent was "
            "asked (recorded, or a consent task issued to the officer).",
        ),
        Headline(
            "tasks_issued",
            one("tasks", "issued"),
            "Officer tasks issued: leaflets (Right 3 information), consent, crime reviews.",
        ),
        Headline(
            "share_tasks_on_time",
            one("tasks", "share_on_time"),
            "Share of tasks completed by their due time, of those completed or overdue.",
        ),
        Headline(
            "tasks_overdue",
            one("tasks", "overdue"),
            "Tasks still open past their due time.",
        ),
        Headline(
            "share_contacted_within_2wd",
            one("provider_outcomes", "share_contacted_within_2wd"),
            "Share of referrals handed over whose provider reported contacting the victim "
            "within 2 working days of the hand-over.",
        ),
        Headline(
            "share_crimes_recorded_within_24h",
            one("crime_data_integrity", "share_recorded_within_24h"),
            "Of incidents where a crime was disclosed, the share with a crime recorded within "
            "24 hours (crime data integrity).",
        ),
        Headline(
            "crime_reviews_open",
            one("crime_data_integrity", "reviews_open"),
            "Crime-recording review tasks raised and still open.",
        ),
        Headline(
            "fallbacks",
            one("fallbacks", "fallbacks"),
            "Leaflet tasks issued because a provider refused a referral or was unreachable at "
            "its deadline.",
        ),
    ]
    if counts.dead_letters is not None:
        headlines.append(
            Headline(
                "dead_letters",
                one("dead_letters", "dead_letters"),
                "Messages that failed in the period and wait on the dead-letter queue.",
            )
        )
    return tuple(headlines)


def _int(value: Value) -> int:
    return value if isinstance(value, int) else 0
