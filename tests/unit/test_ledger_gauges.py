"""Gauges read from a real SQLite ledger at scrape time: holds, backlog age, missed deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.runtime.gauges import CompliancePoller, LedgerGauges, ledger_figures
from referral_bridge.transport import BrokerSpec, BrokerUnavailableError, broker_spec

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROVIDER = "lancashire-victim-services"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        yield opened
    finally:
        opened.dispose()


def add_outbox(
    ledger: Ledger,
    message_id: str,
    *,
    kind: str = "referral",
    created_at: datetime = NOW,
    published_at: datetime | None = None,
    deadline: datetime | None = None,
    rejected_at: datetime | None = None,
) -> None:
    row: dict[str, Any] = {
        "message_id": message_id,
        "event_id": f"event-{message_id}",
        "kind": kind,
        "exchange": "victim-services.referrals",
        "routing_key": PROVIDER,
        "headers": {},
        "body": b"sealed",
        "created_at": created_at,
        "published_at": published_at,
        "attempts": 0,
        "provider": PROVIDER if kind == "referral" else None,
        "deadline": deadline,
        "rejected_at": rejected_at,
    }
    with ledger.engine.begin() as connection:
        connection.execute(t.outbox.insert().values(**row))


def add_hold(ledger: Ledger, victim_id: str, *, open_: bool) -> None:
    with ledger.engine.begin() as connection:
        connection.execute(
            t.holds.insert().values(
                case_ref="LC-1", victim_id=victim_id, until=NOW + timedelta(days=1), open=open_
            )
        )


class TestLedgerFigures:
    def test_an_empty_ledger_has_no_holds_no_backlog_and_no_missed_deadlines(
        self, ledger: Ledger
    ) -> None:
        figures = ledger_figures(ledger.engine, NOW)

        assert (figures.holds_open, figures.oldest_undelivered_referral_seconds) == (0, 0.0)
        assert dict(figures.deadlines_missed) == {}

    def test_only_open_holds_are_counted(self, ledger: Ledger) -> None:
        add_hold(ledger, "P-1", open_=True)
        add_hold(ledger, "P-2", open_=False)

        assert ledger_figures(ledger.engine, NOW).holds_open == 1

    def test_the_oldest_undelivered_referral_sets_the_age(self, ledger: Ledger) -> None:
        add_outbox(ledger, "r-old", created_at=NOW - timedelta(minutes=10))
        add_outbox(ledger, "r-new", created_at=NOW - timedelta(minutes=1))
        add_outbox(
            ledger, "r-sent", created_at=NOW - timedelta(hours=5), published_at=NOW - timedelta(1)
        )

        assert ledger_figures(ledger.engine, NOW).oldest_undelivered_referral_seconds == 600.0

    def test_a_referral_rejected_for_good_is_not_waiting_but_counted_as_rejected(
        self, ledger: Ledger
    ) -> None:
        add_outbox(
            ledger, "refused", created_at=NOW - timedelta(hours=2), rejected_at=NOW - timedelta(1)
        )

        figures = ledger_figures(ledger.engine, NOW)

        assert (figures.oldest_undelivered_referral_seconds, figures.rejected) == (0.0, 1)

    def test_undelivered_tasks_do_not_count_as_undelivered_referrals(self, ledger: Ledger) -> None:
        add_outbox(ledger, "task", kind="task.leaflet", created_at=NOW - timedelta(hours=1))

        assert ledger_figures(ledger.engine, NOW).oldest_undelivered_referral_seconds == 0.0

    def test_a_referral_delivered_after_its_deadline_is_counted_as_delivered_late(
        self, ledger: Ledger
    ) -> None:
        add_outbox(
            ledger, "late", published_at=NOW - timedelta(hours=1), deadline=NOW - timedelta(days=1)
        )
        add_outbox(
            ledger, "on-time", published_at=NOW - timedelta(days=2), deadline=NOW - timedelta(1)
        )

        assert dict(ledger_figures(ledger.engine, NOW).deadlines_missed) == {
            (PROVIDER, "delivered_late"): 1
        }

    def test_an_undelivered_referral_past_its_deadline_is_counted_as_undelivered(
        self, ledger: Ledger
    ) -> None:
        add_outbox(ledger, "overdue", deadline=NOW - timedelta(minutes=1))
        add_outbox(ledger, "not-yet", deadline=NOW + timedelta(minutes=1))

        assert dict(ledger_figures(ledger.engine, NOW).deadlines_missed) == {
            (PROVIDER, "undelivered"): 1
        }


def scrape(collector: LedgerGauges) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def sample_lines(page: str, name: str) -> list[str]:
    """The page's sample lines (not HELP or TYPE) of the metric `name`."""
    return [line for line in page.splitlines() if line.startswith((f"{name} ", f"{name}{{"))]


class RecordingDepth:
    """Stands in for `queue_depth`: answers `count` and records the queues it was asked about."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.calls: list[str] = []

    def __call__(self, _spec: BrokerSpec, queue: str) -> int:
        self.calls.append(queue)
        return self.count


class TestLedgerGauges:
    def test_a_scrape_exports_every_gauge(self, ledger: Ledger, tmp_path: Path) -> None:
        add_hold(ledger, "P-1", open_=True)
        add_outbox(ledger, "overdue", created_at=NOW - timedelta(seconds=90), deadline=NOW)

        page = scrape(
            LedgerGauges(
                engine=ledger.engine,
                broker=broker_spec(None, tmp_path),
                dead_letter_queue="dlq",
                clock=lambda: NOW + timedelta(seconds=10),
                depth=RecordingDepth(4),
            )
        )

        assert "referral_bridge_holds_open 1.0" in page
        assert "referral_bridge_oldest_undelivered_referral_age_seconds 100.0" in page
        assert (
            'referral_bridge_victims_code_deadlines_missed{provider="lancashire-victim-services",'
            'state="undelivered"} 1.0'
        ) in page
        assert "referral_bridge_dead_letter_queue_depth 4.0" in page

    def test_the_dead_letter_depth_is_asked_of_the_broker_at_most_once_per_ttl(
        self, ledger: Ledger, tmp_path: Path
    ) -> None:
        depth = RecordingDepth(0)
        collector = LedgerGauges(
            engine=ledger.engine,
            broker=broker_spec(None, tmp_path),
            dead_letter_queue="dlq",
            monotonic=lambda: 100.0,
            depth=depth,
        )

        scrape(collector)
        scrape(collector)

        assert depth.calls == ["dlq"]

    def test_a_broker_outage_drops_the_depth_and_says_the_source_is_down(
        self, ledger: Ledger, tmp_path: Path
    ) -> None:
        def unreachable(_spec: BrokerSpec, _queue: str) -> int:
            raise BrokerUnavailableError("cannot reach the broker")

        page = scrape(
            LedgerGauges(
                engine=ledger.engine,
                broker=broker_spec(None, tmp_path),
                dead_letter_queue="dlq",
                depth=unreachable,
            )
        )

        assert not sample_lines(page, "referral_bridge_dead_letter_queue_depth")
        assert 'referral_bridge_gauge_source_up{source="broker"} 0.0' in page
        assert 'referral_bridge_gauge_source_up{source="ledger"} 1.0' in page

    def test_a_ledger_outage_drops_the_ledger_gauges_and_says_the_source_is_down(
        self, ledger: Ledger, tmp_path: Path
    ) -> None:
        with ledger.engine.begin() as connection:
            connection.execute(t.holds.delete())
            connection.exec_driver_sql("DROP TABLE rb_holds")

        page = scrape(
            LedgerGauges(
                engine=ledger.engine,
                broker=broker_spec(None, tmp_path),
                dead_letter_queue="dlq",
                depth=RecordingDepth(0),
            )
        )

        assert not sample_lines(page, "referral_bridge_holds_open")
        assert 'referral_bridge_gauge_source_up{source="ledger"} 0.0' in page


def add_task(ledger: Ledger, task_id: str, *, kind: str, due_by: datetime, done: bool) -> None:
    with ledger.engine.begin() as connection:
        connection.execute(
            t.tasks.insert().values(
                task_id=task_id,
                kind=kind,
                reason="declined" if kind == "leaflet" else "crime_not_recorded",
                case_ref="LC-1",
                issued_at=NOW - timedelta(days=3),
                due_by=due_by,
                completed_at=NOW - timedelta(hours=1) if done else None,
            )
        )


class TestTasksAndReviews:
    def test_open_tasks_past_due_are_overdue_by_kind_and_open_reviews_are_counted(
        self, ledger: Ledger, tmp_path: Path
    ) -> None:
        add_task(ledger, "T-1", kind="leaflet", due_by=NOW - timedelta(hours=2), done=False)
        add_task(ledger, "T-2", kind="leaflet", due_by=NOW - timedelta(hours=2), done=True)
        add_task(ledger, "T-3", kind="leaflet", due_by=NOW + timedelta(hours=2), done=False)
        add_task(ledger, "T-4", kind="crime_review", due_by=NOW - timedelta(hours=2), done=False)
        with ledger.engine.begin() as connection:
            connection.execute(
                t.crime_reviews.insert(),
                [
                    # Raised, task open: open. Raised, then a crime linked: not open.
                    {
                        "incident_ref": "I-1",
                        "review_at": NOW,
                        "task_id": "T-4",
                        "raised_at": NOW,
                        "resolved_at": None,
                    },
                    {
                        "incident_ref": "I-2",
                        "review_at": NOW,
                        "task_id": "T-5",
                        "raised_at": NOW,
                        "resolved_at": NOW,
                    },
                    {
                        "incident_ref": "I-3",
                        "review_at": NOW + timedelta(hours=1),
                        "task_id": None,
                        "raised_at": None,
                        "resolved_at": None,
                    },
                ],
            )

        page = scrape(
            LedgerGauges(
                engine=ledger.engine,
                broker=broker_spec(None, tmp_path),
                dead_letter_queue="dlq",
                clock=lambda: NOW,
                depth=RecordingDepth(0),
            )
        )

        assert 'referral_bridge_tasks_overdue{kind="leaflet"} 1.0' in page
        assert 'referral_bridge_tasks_overdue{kind="crime_review"} 1.0' in page
        assert 'referral_bridge_tasks_overdue{kind="escalation"} 0.0' in page
        assert "referral_bridge_crime_reviews_open 1.0" in page


class TestComplianceGauges:
    def test_the_months_figures_appear_once_computed(self, ledger: Ledger, tmp_path: Path) -> None:
        add_outbox(ledger, "R-1", published_at=NOW - timedelta(hours=1), deadline=NOW)
        with ledger.engine.begin() as connection:
            connection.execute(
                t.actions.insert().values(
                    case_ref="LC-1",
                    victim_id="P-1",
                    action="referral",
                    target=PROVIDER,
                    message_id="R-1",
                    provider=PROVIDER,
                    service="general",
                    at=NOW - timedelta(hours=2),
                )
            )
        poller = CompliancePoller(ledger.engine, clock=lambda: NOW)
        collector = LedgerGauges(
            engine=ledger.engine,
            broker=broker_spec(None, tmp_path),
            dead_letter_queue="dlq",
            clock=lambda: NOW,
            depth=RecordingDepth(0),
            compliance=poller,
        )

        before = scrape(collector)
        assert 'referral_bridge_gauge_source_up{source="compliance"} 0.0' in before
        assert sample_lines(before, "referral_bridge_compliance_ratio") == []

        poller.refresh()
        page = scrape(collector)

        assert 'referral_bridge_gauge_source_up{source="compliance"} 1.0' in page
        assert 'referral_bridge_compliance_month_referrals{state="in_time"} 1.0' in page
        assert 'referral_bridge_compliance_ratio{figure="referred_in_time"} 1.0' in page
        # Nothing to divide by: no sample rather than a misleading 0.
        assert 'figure="tasks_on_time"' not in page
        (computed,) = sample_lines(page, "referral_bridge_compliance_computed_timestamp_seconds")
        assert float(computed.split()[1]) == NOW.timestamp()
