"""The ledger adapter against real databases: SQLite in a temporary folder, and PostgreSQL."""

from __future__ import annotations

import gc
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from referral_bridge.core.events import ConsentChange
from referral_bridge.core.history import ConsentRecord, Hold
from referral_bridge.errors import LedgerSchemaError, LedgerUnavailableError
from referral_bridge.ledger import ActionKind, Ledger, OutboxMessage, RecordedAction
from referral_bridge.ledger import schema as t
from tests.fakes import ledger_url_for, require_postgres, throwaway_postgres_database

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CRIME = "LC-26-0000001"
INCIDENT = "INC-20261123-0001"
VICTIM = "P-0001"
PROVIDER = "lancashire-victim-services"


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    require_postgres()
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)],
)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return ledger_url_for(str(request.param), request, tmp_path)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()


def referral(
    case_ref: str = CRIME, victim_id: str = VICTIM, message_id: str = "r-1"
) -> RecordedAction:
    return RecordedAction(
        case_ref=case_ref,
        victim_id=victim_id,
        action=ActionKind.REFERRAL,
        target=PROVIDER,
        message_id=message_id,
        provider=PROVIDER,
        service="general",
        related_id=None,
        due_at=AT + timedelta(days=2),
    )


def outbox_message(message_id: str, event_id: str = "e-1") -> OutboxMessage:
    return OutboxMessage(
        message_id=message_id,
        event_id=event_id,
        kind="referral",
        exchange="victim-services.referrals",
        routing_key=PROVIDER,
        headers={"x-rb-event-type": "victim.referral.created"},
        body=b'{"id":"' + message_id.encode() + b'"}',
    )


def consent(referral_: ConsentChange, at: datetime) -> ConsentRecord:
    return ConsentRecord(referral=referral_, recorded_at=at, recorded_by="PC 0000")


class TestMigrations:
    def test_opening_twice_migrates_idempotently_and_records_the_schema_version(
        self, ledger_url: str
    ) -> None:
        Ledger.open(ledger_url).dispose()
        again = Ledger.open(ledger_url)
        try:
            assert again.migrate() == t.SCHEMA_VERSION
            with again.engine.connect() as connection:
                rows = connection.execute(select(t.schema_info)).all()
        finally:
            again.dispose()
        assert [(r.key, r.value) for r in rows] == [("schema_version", str(t.SCHEMA_VERSION))]

    def test_a_ledger_with_a_newer_schema_version_is_refused(self, ledger: Ledger) -> None:
        with ledger.engine.begin() as connection:
            connection.execute(t.schema_info.update().values(value=str(t.SCHEMA_VERSION + 1)))
        url = ledger.engine.url.render_as_string(hide_password=False)
        with pytest.raises(LedgerSchemaError, match="upgrade referral-bridge"):
            Ledger.open(url)
        # A refused start must not leave a pooled connection behind to be garbage-collected.
        gc.collect()


class TestProcessedEvents:
    def test_an_event_is_processed_only_once_it_is_marked(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            assert not tx.is_processed("e-1", source="test")
            tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="test")
        with ledger.transaction() as tx:
            assert tx.is_processed("e-1", source="test")
            assert not tx.is_processed("e-2", source="test")

    def test_the_same_id_from_another_source_is_another_event(self, ledger: Ledger) -> None:
        """Contract version 2: duplicates are recognised by `source` + `id`."""
        with ledger.transaction() as tx:
            tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="niche")
        with ledger.transaction() as tx:
            assert tx.is_processed("e-1", source="niche")
            assert not tx.is_processed("e-1", source="storm")
            tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="storm")
        with ledger.transaction() as tx:
            assert tx.is_processed("e-1", source="storm")

    def test_an_id_seen_before_sources_were_kept_matches_any_source(self, ledger: Ledger) -> None:
        """Rows migrated from schema version 2 have source "" (the id alone decided then)."""
        with ledger.transaction() as tx:
            tx.mark_processed("e-old", "crime.recorded", CRIME, "decided", AT, source="")
        with ledger.transaction() as tx:
            assert tx.is_processed("e-old", source="niche")

    def test_marking_the_same_event_twice_violates_the_primary_key(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="test")
        with pytest.raises(IntegrityError), ledger.transaction() as tx:
            tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="test")

    def test_a_failed_transaction_leaves_nothing_behind(self, ledger: Ledger) -> None:
        def fail_after_marking() -> None:
            with ledger.transaction() as tx:
                tx.mark_processed("e-1", "crime.recorded", CRIME, "decided", AT, source="test")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_after_marking()
        with ledger.transaction() as tx:
            assert not tx.is_processed("e-1", source="test")


class TestRecords:
    def test_an_unknown_record_has_no_version(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            assert tx.record_version(CRIME) is None

    def test_saving_a_record_again_replaces_its_version_and_snapshot(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.save_record(CRIME, "crime", 1, {"crime_ref": CRIME, "n": 1}, AT)
        with ledger.transaction() as tx:
            tx.save_record(CRIME, "crime", 3, {"crime_ref": CRIME, "n": 3}, AT)
        with ledger.transaction() as tx:
            assert tx.record_version(CRIME) == 3
            state = tx.load_state(CRIME, {CRIME})
        assert state.snapshot == {"crime_ref": CRIME, "n": 3}
        assert state.snapshot_kind == "crime"


class TestLinks:
    def test_a_linked_incident_and_its_crime_are_one_matter(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.link(INCIDENT, CRIME)
        with ledger.transaction() as tx:
            assert tx.matter({INCIDENT}) == {INCIDENT, CRIME}
            assert tx.matter({CRIME}) == {INCIDENT, CRIME}

    def test_an_unlinked_ref_is_a_matter_of_its_own(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            assert tx.matter({INCIDENT}) == {INCIDENT}

    def test_a_self_link_and_a_repeated_link_change_nothing(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.link(INCIDENT, CRIME)
            tx.link(INCIDENT, CRIME)
            tx.link(CRIME, CRIME)
        with ledger.transaction() as tx:
            assert tx.matter({CRIME}) == {CRIME, INCIDENT}

    def test_an_incident_that_gave_rise_to_two_crimes_joins_all_three(self, ledger: Ledger) -> None:
        """Links are many-to-many and the matter is their transitive closure."""
        with ledger.transaction() as tx:
            tx.link(INCIDENT, CRIME)
            tx.link(INCIDENT, "LC-26-0000002")
            tx.link("INC-2", "LC-26-0000002")
        with ledger.transaction() as tx:
            assert tx.matter({CRIME}) == {CRIME, INCIDENT, "LC-26-0000002", "INC-2"}

    def test_crimes_among_a_matter_are_those_recorded_or_named_as_crimes(
        self, ledger: Ledger
    ) -> None:
        with ledger.transaction() as tx:
            tx.link(INCIDENT, CRIME)
            tx.save_record("LC-26-0000009", "crime", 1, {"n": 1}, AT)
            tx.save_record("INC-9", "incident", 1, {"n": 1}, AT)
        with ledger.transaction() as tx:
            found = tx.crimes_among({INCIDENT, CRIME, "LC-26-0000009", "INC-9"})
        assert found == {CRIME, "LC-26-0000009"}


class TestConsents:
    def test_a_later_consent_replaces_an_earlier_one(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            assert tx.save_consent(CRIME, VICTIM, consent(ConsentChange.GIVEN, AT))
            assert tx.save_consent(
                CRIME, VICTIM, consent(ConsentChange.WITHDRAWN, AT + timedelta(hours=1))
            )
        with ledger.transaction() as tx:
            kept = tx.load_state(CRIME, {CRIME}).history[VICTIM].consent
        assert kept is not None
        assert kept.referral is ConsentChange.WITHDRAWN

    def test_an_older_consent_arriving_late_is_not_kept(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.save_consent(CRIME, VICTIM, consent(ConsentChange.DECLINED, AT))
        with ledger.transaction() as tx:
            saved = tx.save_consent(
                CRIME, VICTIM, consent(ConsentChange.GIVEN, AT - timedelta(hours=1))
            )
            kept = tx.load_state(CRIME, {CRIME}).history[VICTIM].consent
        assert saved is False
        assert kept is not None
        assert (kept.referral, kept.recorded_at) == (ConsentChange.DECLINED, AT)


class TestHistory:
    def test_history_gathers_actions_holds_and_consents_across_linked_refs(
        self, ledger: Ledger
    ) -> None:
        until = AT + timedelta(days=1)
        with ledger.transaction() as tx:
            tx.link(INCIDENT, CRIME)
            tx.add_action(referral(case_ref=INCIDENT, message_id="r-inc"), AT)
            tx.add_action(
                RecordedAction(
                    case_ref=CRIME,
                    victim_id=VICTIM,
                    action=ActionKind.LEAFLET,
                    target="declined",
                    message_id="task-1",
                    provider=PROVIDER,
                    service=None,
                    related_id=None,
                    due_at=until,
                ),
                AT,
            )
            tx.add_action(
                RecordedAction(
                    case_ref=CRIME,
                    victim_id=VICTIM,
                    action=ActionKind.WITHDRAWAL,
                    target=PROVIDER,
                    message_id="w-1",
                    provider=PROVIDER,
                    service="general",
                    related_id="r-inc",
                    due_at=None,
                ),
                AT,
            )
            tx.save_consent(INCIDENT, VICTIM, consent(ConsentChange.GIVEN, AT))
            tx.open_hold(CRIME, VICTIM, until)
        with ledger.transaction() as tx:
            history = tx.load_state(CRIME, tx.matter({CRIME})).history[VICTIM]
        assert [(r.referral_id, r.case_ref) for r in history.referrals] == [("r-inc", INCIDENT)]
        assert [(leaflet.task_id, leaflet.reason) for leaflet in history.leaflets] == [
            ("task-1", "declined")
        ]
        assert [w.referral_id for w in history.withdrawals] == ["r-inc"]
        assert history.hold == Hold(until=until, open=True)
        assert history.consent is not None
        assert history.consent.referral is ConsentChange.GIVEN

    def test_history_of_another_matter_is_not_included(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.add_action(referral(case_ref="LC-OTHER"), AT)
        with ledger.transaction() as tx:
            assert tx.load_state(CRIME, {CRIME}).history == {}

    def test_an_ended_hold_is_loaded_as_closed(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.open_hold(CRIME, VICTIM, AT)
            tx.end_hold(CRIME, VICTIM, AT, "expired")
        with ledger.transaction() as tx:
            hold = tx.load_state(CRIME, {CRIME}).history[VICTIM].hold
        assert hold == Hold(until=AT, open=False)

    def test_times_come_back_timezone_aware_in_utc(self, ledger: Ledger) -> None:
        bst = datetime(2026, 7, 1, 12, 0).astimezone()  # any aware offset
        with ledger.transaction() as tx:
            tx.open_hold(CRIME, VICTIM, bst)
        with ledger.transaction() as tx:
            hold = tx.load_state(CRIME, {CRIME}).history[VICTIM].hold
        assert hold is not None
        assert hold.until == bst
        assert hold.until.utcoffset() == timedelta(0)


class TestActions:
    def test_a_second_referral_for_the_same_case_victim_and_provider_is_refused(
        self, ledger: Ledger
    ) -> None:
        with ledger.transaction() as tx:
            tx.add_action(referral(message_id="r-1"), AT)
        with pytest.raises(IntegrityError), ledger.transaction() as tx:
            tx.add_action(referral(message_id="r-2"), AT)
        with ledger.engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(t.actions)).scalar_one()
        assert count == 1

    def test_referrals_of_other_victims_of_the_same_case_are_allowed(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.add_action(referral(victim_id="P-0001", message_id="r-1"), AT)
            tx.add_action(referral(victim_id="P-0002", message_id="r-2"), AT)
        assert ledger.counts()["actions"] == {f"referral {PROVIDER}/general": 2}


class TestOutbox:
    def test_new_outbox_messages_are_due_in_the_order_they_were_written(
        self, ledger: Ledger
    ) -> None:
        """Schema 9: the database's order of writes, not the times the writer gave."""
        with ledger.transaction() as tx:
            tx.add_outbox(outbox_message("m-2"), AT + timedelta(seconds=1))
            tx.add_outbox(outbox_message("m-1"), AT)
        pending = ledger.due_deliveries(AT + timedelta(seconds=1))
        assert [d.message_id for d in pending] == ["m-2", "m-1"]
        assert pending[1].message == outbox_message("m-1")

    def test_a_published_message_is_no_longer_undelivered(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.add_outbox(outbox_message("m-1"), AT)
            tx.add_outbox(outbox_message("m-2"), AT)
        ledger.mark_published("m-1", AT)
        assert [d.message_id for d in ledger.deliveries()] == ["m-2"]
        assert ledger.counts()["totals"]["unsent"] == 1

    def test_due_deliveries_can_be_limited_to_one_event(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.add_outbox(outbox_message("m-1", event_id="e-1"), AT)
            tx.add_outbox(outbox_message("m-2", event_id="e-2"), AT)
        assert [d.message_id for d in ledger.due_deliveries(AT, event_id="e-2")] == ["m-2"]

    def test_due_deliveries_can_be_limited_to_messages_created_before_a_time(
        self, ledger: Ledger
    ) -> None:
        with ledger.transaction() as tx:
            tx.add_outbox(outbox_message("old"), AT)
            tx.add_outbox(outbox_message("new"), AT + timedelta(minutes=5))
        due = ledger.due_deliveries(AT, created_before=AT + timedelta(minutes=1))
        assert [d.message_id for d in due] == ["old"]


class TestDueHolds:
    def test_due_holds_lists_matters_with_open_ended_holds_earliest_first(
        self, ledger: Ledger
    ) -> None:
        with ledger.transaction() as tx:
            tx.open_hold("LC-LATE", VICTIM, AT - timedelta(hours=1))
            tx.open_hold("LC-EARLY", VICTIM, AT - timedelta(hours=5))
            tx.open_hold("LC-EARLY", "P-0002", AT - timedelta(hours=2))
            tx.open_hold("LC-FUTURE", VICTIM, AT + timedelta(hours=1))
            tx.open_hold("LC-ENDED", VICTIM, AT - timedelta(hours=9))
            tx.end_hold("LC-ENDED", VICTIM, AT - timedelta(hours=8), "consent_given")
        assert ledger.due_holds(AT) == ["LC-EARLY", "LC-LATE"]

    def test_a_hold_ending_exactly_now_is_due(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.open_hold(CRIME, VICTIM, AT)
        assert ledger.due_holds(AT) == [CRIME]

    def test_reopening_an_ended_hold_makes_it_due_again(self, ledger: Ledger) -> None:
        with ledger.transaction() as tx:
            tx.open_hold(CRIME, VICTIM, AT)
            tx.end_hold(CRIME, VICTIM, AT, "expired")
        with ledger.transaction() as tx:
            tx.open_hold(CRIME, VICTIM, AT + timedelta(hours=1))
        assert ledger.due_holds(AT + timedelta(hours=2)) == [CRIME]


class TestUnavailable:
    def test_an_unreachable_postgresql_raises_ledger_unavailable_without_the_password(
        self,
    ) -> None:
        # Port 1 on the loopback interface: nothing listens there, so the connection is refused.
        url = "postgresql+psycopg://referral_bridge:secret-pw@127.0.0.1:1/referral_bridge"
        with pytest.raises(LedgerUnavailableError) as caught:
            Ledger.open(url)
        rendered = "".join(traceback.format_exception(caught.value))
        assert "secret-pw" not in rendered
        assert "127.0.0.1" in str(caught.value)

    def test_a_ledger_url_with_an_unknown_scheme_raises_ledger_unavailable(self) -> None:
        with pytest.raises(LedgerUnavailableError, match="scheme"):
            Ledger.open("nosuchdb://user:secret-pw@host/db")
