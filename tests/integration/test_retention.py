"""Retention and subject access on SQLite and PostgreSQL, through the real service (issue 10, 7).

A matter is processed at one time, the fake clock moves past the retention period, and the sweep
erases what the policy says, leaves what it keeps, and the matter still works afterwards.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from referral_bridge.core.audit_chain import verify_chain
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.chain import chain_rows
from referral_bridge.ledger.retention import (
    ERASED,
    PERSONAL_DATA_ERASED,
    SweepReport,
    claim_sweep,
    sweep,
)
from referral_bridge.ledger.subject import subject_access
from referral_bridge.operator.audit import AuditQuery, AuditTrail
from referral_bridge.runtime.scheduler import RetentionSweep
from referral_bridge.service.handler import ReferralService
from referral_bridge.settings import RetentionSection
from tests.fakes import (
    START,
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    bridge_role,
    empty_ledger_database,
    make_service,
)
from tests.integration.test_service import (
    CREATED,
    PERSONAL_MARKERS,
    VICTIM,
    WITHDRAWN,
    consent_message,
    crime_message,
    opened,
)
from tests.unit.factories import CRIME_REF, make_crime, make_victim

pytestmark = pytest.mark.integration

YEAR = timedelta(days=365)
LATER = YEAR + timedelta(days=2)


def run_sweep(ledger: Ledger, clock: FakeClock, *, dry_run: bool = False) -> SweepReport:
    return sweep(ledger, now=clock.now(), erase_after=YEAR, actor="test", dry_run=dry_run)


def ledger_text(ledger: Ledger) -> str:
    """Every row of every table, as text: where personal data would show."""
    parts: list[str] = []
    with ledger.engine.connect() as connection:
        for table in t.metadata.sorted_tables:
            for row in connection.execute(select(table)):
                parts.append(repr(tuple(row)))
    return "\n".join(parts)


@pytest.fixture
def referred(service: ReferralService, publisher: RecordingPublisher, clock: FakeClock) -> None:
    """A burglary referred to Lancashire at START, with consent recorded by an officer (an
    update follows it: two message bodies)."""
    service.handle(crime_message(make_crime()))
    service.handle(consent_message("given", at=clock.now()))
    assert len(publisher.of_type(CREATED)) == 1


@pytest.mark.usefixtures("referred")
class TestSweep:
    def test_nothing_is_due_within_the_period(self, ledger: Ledger, clock: FakeClock) -> None:
        clock.advance(YEAR - timedelta(days=1))

        assert run_sweep(ledger, clock) == SweepReport(0, 0, 0, 0)

    def test_a_dry_run_counts_and_changes_nothing(self, ledger: Ledger, clock: FakeClock) -> None:
        before = ledger_text(ledger)
        clock.advance(LATER)

        report = run_sweep(ledger, clock, dry_run=True)

        assert report == SweepReport(matters=1, records=1, bodies=2, consents=1)
        assert ledger_text(ledger) == before

    def test_personal_data_is_erased_and_the_rest_kept(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        assert any(marker in ledger_text(ledger) for marker in PERSONAL_MARKERS)
        clock.advance(LATER)

        report = run_sweep(ledger, clock)

        assert report == SweepReport(matters=1, records=1, bodies=2, consents=1)
        text = ledger_text(ledger)
        assert [marker for marker in PERSONAL_MARKERS if marker in text] == []
        with ledger.engine.connect() as connection:
            record = connection.execute(select(t.records)).one()
            consent = connection.execute(select(t.consents)).one()
            bodies = connection.execute(select(t.outbox.c.body)).scalars().all()
            decisions = connection.execute(select(t.decisions)).all()
            actions = connection.execute(select(t.actions)).all()
        assert (record.snapshot, record.erased_at) == ({}, clock.now())
        assert consent.recorded_by == ERASED
        assert set(bodies) == {b""}
        # Kept: ids, reasons and outcomes, no people.
        assert decisions
        assert actions

    def test_the_erasure_is_audited_on_the_chain(self, ledger: Ledger, clock: FakeClock) -> None:
        clock.advance(LATER)
        run_sweep(ledger, clock)

        [record] = AuditTrail(ledger.engine).query(AuditQuery(action=PERSONAL_DATA_ERASED))
        with ledger.engine.connect() as connection:
            report = verify_chain(chain_rows(connection))

        assert (record.case_ref, record.actor) == (CRIME_REF, "test")
        assert record.detail is not None
        assert "1 snapshots" in record.detail
        assert report.intact

    def test_a_second_sweep_finds_nothing_more(self, ledger: Ledger, clock: FakeClock) -> None:
        clock.advance(LATER)
        run_sweep(ledger, clock)

        assert run_sweep(ledger, clock).matters == 0


class TestAfterErasure:
    @pytest.mark.usefixtures("referred")
    def test_a_withdrawal_of_consent_still_withdraws_the_referral(
        self,
        service: ReferralService,
        publisher: RecordingPublisher,
        keys: KeyMaterial,
        ledger: Ledger,
        clock: FakeClock,
    ) -> None:
        clock.advance(LATER)
        run_sweep(ledger, clock)

        service.handle(consent_message("withdrawn", at=clock.now()))

        [referral] = publisher.of_type(CREATED)
        [withdrawal] = publisher.of_type(WITHDRAWN)
        payload = opened(withdrawal, keys, "lancashire-victim-services")
        assert (payload["referral_id"], payload["reason"]) == (referral.message_id, "withdrawn")

    @pytest.mark.usefixtures("referred")
    def test_a_new_version_of_the_record_brings_it_back_and_refers_no_one_twice(
        self,
        service: ReferralService,
        publisher: RecordingPublisher,
        ledger: Ledger,
        clock: FakeClock,
    ) -> None:
        clock.advance(LATER)
        run_sweep(ledger, clock)

        service.handle(crime_message(make_crime(version=2)))

        with ledger.engine.connect() as connection:
            record = connection.execute(select(t.records)).one()
        assert (record.version, record.erased_at) == (2, None)
        assert record.snapshot["crime_ref"] == CRIME_REF
        assert len(publisher.of_type(CREATED)) == 1

    def test_a_matter_with_a_message_still_to_deliver_is_kept(
        self, ledger: Ledger, keys: KeyMaterial, clock: FakeClock
    ) -> None:
        failing = RecordingPublisher(fail_times=1000)
        service = make_service(ledger=ledger, sealer=keys.sealer(), publisher=failing, clock=clock)
        service.handle(crime_message(make_crime()))
        clock.advance(LATER)

        assert run_sweep(ledger, clock).matters == 0


class TestScheduledSweep:
    @pytest.mark.usefixtures("referred")
    def test_one_worker_among_several_sweeps_once_per_interval(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        clock.advance(LATER)
        policy = RetentionSection(erase_after_days=365, sweep_interval_hours=24)
        workers = [
            RetentionSweep(ledger, policy, clock=clock.now, monotonic=lambda: 0.0, check_every=0)
            for _ in range(3)
        ]

        erased = [worker() for worker in workers]

        assert sorted(erased) == [0, 0, 1]
        assert not claim_sweep(ledger, now=clock.now(), every=timedelta(hours=24))
        clock.advance(timedelta(hours=25))
        assert claim_sweep(ledger, now=clock.now(), every=timedelta(hours=24))

    def test_a_worker_that_claimed_the_sweep_finishes_it_in_batches(
        self, service: ReferralService, ledger: Ledger, clock: FakeClock
    ) -> None:
        for n in (1, 2, 3):
            service.handle(crime_message(make_crime(crime_ref=f"LC-26-000000{n}")))
        clock.advance(LATER)
        worker = RetentionSweep(
            ledger,
            RetentionSection(),
            clock=clock.now,
            monotonic=lambda: 0.0,
            check_every=0,
            batch=2,
        )

        assert [worker(), worker(), worker()] == [2, 1, 0]

    def test_a_disabled_sweep_does_nothing(self, ledger: Ledger, clock: FakeClock) -> None:
        sweeper = RetentionSweep(ledger, RetentionSection(sweep=False), clock=clock.now)

        assert sweeper() == 0
        with ledger.engine.connect() as connection:
            assert connection.execute(select(t.jobs)).all() == []


class TestSubjectAccess:
    def test_the_export_holds_this_victims_data_and_nobody_elses(
        self, service: ReferralService, ledger: Ledger, clock: FakeClock
    ) -> None:
        other = make_victim("P-0002", phone="01632 960999", email="other@example.org")
        service.handle(crime_message(make_crime(make_victim(), other)))

        document = subject_access(ledger, VICTIM, now=clock.now())

        text = json.dumps(document)
        assert "01632 960999" not in text
        assert "other@example.org" not in text
        [record] = document["records"]
        you: dict[str, Any] = record["held"]["you"]
        assert you["victim_id"] == VICTIM
        assert {d["victim_id"] for d in document["decisions"]} == {VICTIM}
        [disclosure] = document["disclosures"]
        assert (disclosure["action"], disclosure["provider"]) == (
            "referral_sent",
            "lancashire-victim-services",
        )
        assert [a["action"] for a in document["actions"]] == ["referral"]
        assert document["deliveries"][0]["published_at"] is not None

    @pytest.mark.usefixtures("referred")
    def test_after_erasure_the_export_says_so_and_still_lists_the_disclosures(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        clock.advance(LATER)
        run_sweep(ledger, clock)

        document = subject_access(ledger, VICTIM, now=clock.now())

        [record] = document["records"]
        assert record["held"] is None
        assert record["erased_at"] is not None
        assert [d["action"] for d in document["disclosures"]] == ["referral_sent", "update_sent"]


@pytest.mark.integration
def test_the_bridge_role_may_sweep_and_export_on_postgresql(
    pg_database_url: str, keys: KeyMaterial
) -> None:
    """What `run` and the operator tools do here needs no more than `migrate --grant` gives."""
    empty_ledger_database(pg_database_url)
    with bridge_role(pg_database_url) as url:
        ledger = Ledger.open_for_worker(url)
        try:
            clock = FakeClock(START)
            service = make_service(
                ledger=ledger, sealer=keys.sealer(), publisher=RecordingPublisher(), clock=clock
            )
            service.handle(crime_message(make_crime()))
            clock.advance(LATER)

            report = run_sweep(ledger, clock)
            document = subject_access(ledger, VICTIM, now=clock.now())
        finally:
            ledger.dispose()

    assert report.matters == 1
    assert document["records"][0]["erased_at"] is not None
