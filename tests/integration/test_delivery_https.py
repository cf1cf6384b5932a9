"""HTTPS delivery against the real reference inbox on loopback, with a test CA (issue 3).

The service, ledger (SQLite), sealing and delivery engine are the real ones; only the clock is
fake (parking and deadlines move when a test says), and officers' tasks go to a recording
publisher standing in for the force broker.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.core import ids
from referral_bridge.core.events import ConsentState, Relationship
from referral_bridge.delivery import DeliveryPolicy, Route
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.sealing import open_sealed
from referral_bridge.service.handler import ReferralService
from referral_bridge.transport import Ack
from tests.fakes import (
    FakeClock,
    KeyMaterial,
    RecordingPublisher,
    cloudevent,
    inbound,
    make_layer,
)
from tests.integration.test_delivery_helpers import (
    HOMICIDE,
    LANCASHIRE,
    QUICK,
    Inbox,
    Pki,
    https_route,
    make_engine,
    make_pki,
    running_inbox,
)
from tests.unit.factories import CRIME_REF, FAKE_PHONE, REPORTED_AT, make_crime, make_victim
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

CREATED = "victim.referral.created"
LEAFLET = "officer.task.leaflet"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def lancashire(pki: Pki, keys: KeyMaterial, tmp_path: Path) -> Iterator[Inbox]:
    with running_inbox(pki, keys, LANCASHIRE, tmp_path / "lancashire.sqlite3") as inbox:
        yield inbox


@pytest.fixture
def homicide(pki: Pki, keys: KeyMaterial, tmp_path: Path) -> Iterator[Inbox]:
    with running_inbox(pki, keys, HOMICIDE, tmp_path / "homicide.sqlite3") as inbox:
        yield inbox


Builder = Callable[..., ServiceLayer]


@pytest.fixture
def engines() -> Iterator[list[ServiceLayer]]:
    """Services built by `build`; their routes (HTTP clients) are closed after the test."""
    built: list[ServiceLayer] = []
    yield built
    for bridge in built:
        bridge.delivery.close()


@pytest.fixture
def build(
    ledger: Ledger,
    keys: KeyMaterial,
    clock: FakeClock,
    publisher: RecordingPublisher,
    engines: list[ServiceLayer],
) -> Builder:
    def builder(routes: dict[str, Route], policy: DeliveryPolicy = QUICK) -> ServiceLayer:
        bridge = make_layer(
            ledger=ledger,
            sealer=keys.sealer(),
            publisher=publisher,
            clock=clock,
            delivery=lambda fallbacks, metrics: make_engine(
                ledger, clock, publisher, routes, policy, fallbacks=fallbacks, metrics=metrics
            ),
        )
        engines.append(bridge)
        return bridge

    return builder


def burglary(crime_ref: str, victim_id: str = "P-0001") -> Any:
    return inbound(
        cloudevent(
            make_crime(make_victim(victim_id), crime_ref=crime_ref), event_type="crime.recorded"
        )
    )


def homicide_case(crime_ref: str) -> Any:
    victim = make_victim(
        "P-0900",
        consent=ConsentState.GIVEN,
        consent_at=REPORTED_AT,
        relationship=Relationship.BEREAVED_RELATIVE,
    )
    crime = make_crime(victim, crime_ref=crime_ref, category="homicide", ho_class="1/1")
    return inbound(cloudevent(crime, event_type="crime.recorded"))


def outbox_row(ledger: Ledger, message_id: str) -> Any:
    with ledger.engine.connect() as connection:
        return connection.execute(select(t.outbox).where(t.outbox.c.message_id == message_id)).one()


def audit_details(ledger: Ledger, message_id: str) -> list[str]:
    with ledger.engine.connect() as connection:
        return list(
            connection.execute(
                select(t.audit.c.detail).where(t.audit.c.message_id == message_id)
            ).scalars()
        )


REFERRAL = ids.referral_id(LANCASHIRE, CRIME_REF, "P-0001")


class TestSuccess:
    def test_a_referral_is_posted_stored_sealed_and_marked_delivered_by_https(
        self,
        build: Builder,
        ledger: Ledger,
        keys: KeyMaterial,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )

        assert bridge.service.handle(burglary(CRIME_REF)) == Ack()

        record = lancashire.store.get(REFERRAL)
        assert record is not None
        assert record.plaintext is None
        assert FAKE_PHONE not in record.token
        payload = open_sealed(
            record.token,
            decryption_keys=keys.provider_keys(LANCASHIRE),
            verification_keys=keys.bridge_verification_keys(),
        )
        assert payload["referral_id"] == REFERRAL
        assert outbox_row(ledger, REFERRAL).published_at is not None
        assert audit_details(ledger, REFERRAL) == ["delivered by https"]

    def test_mutual_tls_with_the_bridge_client_certificate_delivers(
        self,
        build: Builder,
        keys: KeyMaterial,
        pki: Pki,
        tmp_path: Path,
    ) -> None:
        with running_inbox(
            pki, keys, LANCASHIRE, tmp_path / "mtls.sqlite3", client_ca=pki.ca_cert
        ) as inbox:
            route = https_route(pki, LANCASHIRE, inbox.url, client_cert=True)
            bridge = build({LANCASHIRE: route})
            bridge.service.handle(burglary(CRIME_REF))

            assert inbox.store.message_ids() == [REFERRAL]

    def test_mutual_tls_without_a_client_certificate_is_refused_and_parked(
        self,
        build: Builder,
        ledger: Ledger,
        keys: KeyMaterial,
        pki: Pki,
        tmp_path: Path,
    ) -> None:
        with running_inbox(
            pki, keys, LANCASHIRE, tmp_path / "mtls.sqlite3", client_ca=pki.ca_cert
        ) as inbox:
            bridge = build(
                {LANCASHIRE: https_route(pki, LANCASHIRE, inbox.url)},
            )
            bridge.service.handle(burglary(CRIME_REF))

            assert inbox.store.message_ids() == []
        row = outbox_row(ledger, REFERRAL)
        assert row.published_at is None
        assert row.next_attempt_at is not None


class TestRepeats:
    def test_the_inbox_answers_409_to_a_repeat_and_keeps_one_copy(
        self,
        build: Builder,
        ledger: Ledger,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )
        bridge.service.handle(burglary(CRIME_REF))
        body = bytes(outbox_row(ledger, REFERRAL).body)

        with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca_cert)) as client:
            response = client.post(
                lancashire.url,
                content=body,
                headers={
                    "Content-Type": "application/cloudevents+json",
                    "Idempotency-Key": REFERRAL,
                },
            )

        assert response.status_code == 409
        assert lancashire.store.message_ids() == [REFERRAL]

    def test_a_409_from_the_provider_counts_as_delivered(
        self,
        build: Builder,
        ledger: Ledger,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 409
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )

        bridge.service.handle(burglary(CRIME_REF))

        assert outbox_row(ledger, REFERRAL).published_at is not None


class TestProviderDown:
    def test_refused_then_503_then_timeout_while_another_provider_flows_on(
        self,
        build: Builder,
        ledger: Ledger,
        clock: FakeClock,
        pki: Pki,
        lancashire: Inbox,
        homicide: Inbox,
    ) -> None:
        lancashire_url = lancashire.url
        lancashire.server.stop()  # connection refused
        routes: dict[str, Route] = {
            LANCASHIRE: https_route(pki, LANCASHIRE, lancashire_url, read_timeout=0.3),
            HOMICIDE: https_route(pki, HOMICIDE, homicide.url),
        }
        bridge = build(routes)

        assert bridge.service.handle(burglary("LC-26-0000101")) == Ack()
        assert bridge.service.handle(homicide_case("LC-26-0000201")) == Ack()
        first_error = outbox_row(ledger, ids.referral_id(LANCASHIRE, "LC-26-0000101", "P-0001"))
        assert first_error.last_error.startswith("connect_failed")

        lancashire.server.start()
        lancashire.faults.status = 503
        clock.advance(timedelta(minutes=1))
        bridge.scheduled.flush()
        assert bridge.service.handle(burglary("LC-26-0000102")) == Ack()
        assert bridge.service.handle(homicide_case("LC-26-0000202")) == Ack()

        lancashire.faults.status = None
        lancashire.faults.stall_seconds = 1.0  # longer than the 0.3 s read timeout
        clock.advance(timedelta(minutes=2))
        bridge.scheduled.flush()
        assert bridge.service.handle(homicide_case("LC-26-0000203")) == Ack()

        # Meanwhile every homicide referral went straight through, none to Lancashire (the
        # stalled inbox may have stored one the bridge timed out on: it answers 409 later).
        assert len(homicide.store.message_ids()) == 3
        assert ledger.deliveries(state="undelivered", provider=LANCASHIRE) != []
        assert all(
            d.published_at is None for d in ledger.deliveries(state="all", provider=LANCASHIRE)
        )
        errors = {
            outbox_row(ledger, ids.referral_id(LANCASHIRE, ref, "P-0001")).last_error.split(":")[0]
            for ref in ("LC-26-0000101", "LC-26-0000102")
        }
        assert errors == {"timeout"}

        lancashire.faults.stall_seconds = 0.0
        clock.advance(timedelta(minutes=10))
        assert bridge.scheduled.flush() == 2
        assert sorted(lancashire.store.message_ids()) == sorted(
            ids.referral_id(LANCASHIRE, ref, "P-0001") for ref in ("LC-26-0000101", "LC-26-0000102")
        )
        assert ledger.deliveries(state="undelivered") == []

    def test_a_parked_referral_is_not_tried_before_its_next_attempt(
        self,
        build: Builder,
        clock: FakeClock,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 503
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )
        bridge.service.handle(burglary(CRIME_REF))
        seen = lancashire.faults.requests

        bridge.scheduled.flush()
        clock.advance(timedelta(seconds=29))
        bridge.scheduled.flush()

        assert seen >= 1
        assert lancashire.faults.requests == seen

    def test_an_open_circuit_stops_attempts_until_its_probe(
        self,
        build: Builder,
        clock: FakeClock,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 503
        policy = DeliveryPolicy(
            attempts_in_place=3,
            in_place_initial_seconds=0.01,
            in_place_max_seconds=0.02,
            circuit_failures=2,
            circuit_open=timedelta(minutes=5),
        )
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
            policy,
        )

        bridge.service.handle(burglary("LC-26-0000301"))  # one attempt each while handling
        bridge.service.handle(burglary("LC-26-0000302"))  # the second failure opens the circuit
        bridge.service.handle(burglary("LC-26-0000303"))  # not tried: the circuit is open
        assert lancashire.faults.requests == 2

        lancashire.faults.status = None
        clock.advance(timedelta(minutes=6))
        assert bridge.scheduled.flush() == 3
        # One probe, which closed the circuit, then one request for each of the others.
        assert lancashire.faults.requests == 2 + 3
        assert len(lancashire.store.message_ids()) == 3


class TestRejection:
    def test_a_400_keeps_the_referral_and_issues_a_provider_rejected_leaflet_task(
        self,
        build: Builder,
        ledger: Ledger,
        publisher: RecordingPublisher,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 400
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )

        assert bridge.service.handle(burglary(CRIME_REF)) == Ack()

        row = outbox_row(ledger, REFERRAL)
        task_id = ids.leaflet_task_id(CRIME_REF, "P-0001", "provider_rejected")
        assert row.rejected_at is not None
        assert row.last_error.startswith("http_400")
        assert row.fallback_task_id == task_id
        [task] = publisher.of_type(LEAFLET)
        assert task.event["data"]["task_id"] == task_id
        assert task.event["data"]["reason"] == "provider_rejected"
        assert task.event["data"]["provider"] == LANCASHIRE
        assert lancashire.faults.requests == 1  # a rejection is not retried

    def test_an_operator_resend_delivers_a_rejected_referral(
        self,
        build: Builder,
        ledger: Ledger,
        clock: FakeClock,
        publisher: RecordingPublisher,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 400
        bridge = build(
            {LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)},
        )
        bridge.service.handle(burglary(CRIME_REF))
        lancashire.faults.status = None

        result = ledger.resend(REFERRAL, at=clock.now(), actor="operator-1")
        delivered = bridge.scheduled.flush()

        assert result.outcome == "resent"
        assert delivered == 1
        assert lancashire.store.message_ids() == [REFERRAL]
        assert len(publisher.of_type(LEAFLET)) == 1  # the fallback is not issued twice


class TestDeadline:
    def test_a_deadline_passing_while_the_provider_is_down_issues_one_unreachable_task(
        self,
        build: Builder,
        ledger: Ledger,
        clock: FakeClock,
        publisher: RecordingPublisher,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        url = lancashire.url
        lancashire.server.stop()
        bridge = build({LANCASHIRE: https_route(pki, LANCASHIRE, url)})
        bridge.service.handle(burglary(CRIME_REF))
        deadline = outbox_row(ledger, REFERRAL).deadline
        assert bridge.scheduled.issue_overdue_fallbacks() == 0

        clock.set(deadline + timedelta(minutes=1))
        first = bridge.scheduled.issue_overdue_fallbacks()
        clock.advance(timedelta(hours=1))
        second = bridge.scheduled.issue_overdue_fallbacks()

        assert (first, second) == (1, 0)
        [task] = publisher.of_type(LEAFLET)
        assert task.event["data"]["reason"] == "provider_unreachable"
        lancashire.server.start()
        bridge.scheduled.flush()
        assert lancashire.store.message_ids() == [REFERRAL]  # still retried, and delivered


class TestTls:
    def test_a_server_certificate_from_another_ca_is_refused(
        self,
        build: Builder,
        ledger: Ledger,
        keys: KeyMaterial,
        pki: Pki,
        tmp_path: Path,
    ) -> None:
        with running_inbox(pki, keys, LANCASHIRE, tmp_path / "rogue.sqlite3", rogue=True) as inbox:
            bridge = build(
                {LANCASHIRE: https_route(pki, LANCASHIRE, inbox.url)},
            )
            bridge.service.handle(burglary(CRIME_REF))

            assert inbox.store.message_ids() == []
        row = outbox_row(ledger, REFERRAL)
        assert row.published_at is None
        assert row.last_error.startswith("tls_failed")


def withdraw_consent(service: ReferralService, clock: FakeClock) -> None:
    consent = {
        "case_ref": CRIME_REF,
        "victim_id": "P-0001",
        "referral": "withdrawn",
        "recorded_at": clock.now().isoformat(),
        "recorded_by": "PC 0000",
        "lawful_basis": None,
    }
    assert (
        service.handle(
            inbound(
                cloudevent(consent, event_type="consent.updated"), routing_key="consent.updated"
            )
        )
        == Ack()
    )


def audit_actions(ledger: Ledger) -> list[str]:
    with ledger.engine.connect() as connection:
        return list(connection.execute(select(t.audit.c.action)).scalars())


WITHDRAWAL = ids.withdrawal_id(REFERRAL)


class TestWithdrawalBeforeDelivery:
    """Consent withdrawn while the referral is still parked: the provider never receives it."""

    @pytest.fixture
    def parked_then_withdrawn(
        self, build: Builder, clock: FakeClock, pki: Pki, lancashire: Inbox
    ) -> ServiceLayer:
        lancashire.faults.status = 503
        bridge = build({LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)})
        bridge.service.handle(burglary(CRIME_REF))
        lancashire.faults.status = None
        withdraw_consent(bridge.service, clock)
        return bridge

    def test_a_referral_still_undelivered_when_consent_is_withdrawn_is_never_delivered(
        self,
        parked_then_withdrawn: ServiceLayer,
        ledger: Ledger,
        clock: FakeClock,
        lancashire: Inbox,
    ) -> None:
        clock.advance(timedelta(minutes=1))
        parked_then_withdrawn.scheduled.flush()
        clock.advance(timedelta(days=1))
        parked_then_withdrawn.scheduled.flush()

        # Neither the referral nor a withdrawal of something the provider never had.
        assert lancashire.store.message_ids() == []
        assert outbox_row(ledger, REFERRAL).published_at is None
        assert outbox_row(ledger, WITHDRAWAL).published_at is None
        assert audit_actions(ledger) == []  # no disclosure is claimed

    def test_the_withdrawal_is_recorded_so_it_is_not_decided_again(
        self, parked_then_withdrawn: ServiceLayer, ledger: Ledger, clock: FakeClock
    ) -> None:
        withdraw_consent(parked_then_withdrawn.service, clock)

        with ledger.engine.connect() as connection:
            actions = connection.execute(
                select(t.actions.c.message_id).where(t.actions.c.action == "withdrawal")
            ).all()
        assert [row.message_id for row in actions] == [WITHDRAWAL]

    @pytest.mark.usefixtures("parked_then_withdrawn")
    def test_operators_see_the_referral_and_its_withdrawal_as_cancelled(
        self, ledger: Ledger
    ) -> None:
        cancelled = ledger.deliveries(state="cancelled")

        assert sorted(d.message_id for d in cancelled) == sorted([REFERRAL, WITHDRAWAL])
        assert {d.state for d in cancelled} == {"cancelled"}
        assert ledger.deliveries(state="rejected") == []
        assert ledger.deliveries(state="undelivered") == []

    def test_no_fallback_task_is_issued_at_the_cancelled_referrals_deadline(
        self,
        parked_then_withdrawn: ServiceLayer,
        ledger: Ledger,
        clock: FakeClock,
        publisher: RecordingPublisher,
    ) -> None:
        clock.set(outbox_row(ledger, REFERRAL).deadline + timedelta(minutes=1))

        assert parked_then_withdrawn.scheduled.issue_overdue_fallbacks() == 0
        assert publisher.of_type(LEAFLET) == []

    @pytest.mark.usefixtures("parked_then_withdrawn")
    def test_resend_refuses_the_cancelled_referral_and_its_withdrawal(
        self, ledger: Ledger, clock: FakeClock
    ) -> None:
        referral = ledger.resend(REFERRAL, at=clock.now(), actor="operator-1")
        withdrawal = ledger.resend(WITHDRAWAL, at=clock.now(), actor="operator-1")

        assert (referral.outcome, withdrawal.outcome) == ("cancelled", "cancelled")


class TestWithdrawalAfterAnUncertainAttempt:
    """Consent withdrawn after an attempt that timed out: the provider may hold the referral.

    Issue 9: the referral is never tried again, and its withdrawal follows, so the provider is
    left with the victim's latest wish whether or not the timed-out attempt arrived.
    """

    @pytest.fixture
    def timed_out_then_withdrawn(
        self, build: Builder, clock: FakeClock, pki: Pki, lancashire: Inbox
    ) -> ServiceLayer:
        lancashire.faults.stall_seconds = 1.5  # longer than the route's read timeout
        route = https_route(pki, LANCASHIRE, lancashire.url, read_timeout=0.5)
        bridge = build({LANCASHIRE: route})
        bridge.service.handle(burglary(CRIME_REF))
        # The inbox took it after the bridge had given up waiting for the answer.
        assert wait_until(lambda: lancashire.store.message_ids() == [REFERRAL], timeout=30)
        lancashire.faults.stall_seconds = 0.0
        withdraw_consent(bridge.service, clock)
        return bridge

    @pytest.mark.usefixtures("timed_out_then_withdrawn")
    def test_the_withdrawal_follows_at_once(self, lancashire: Inbox) -> None:
        assert lancashire.store.message_ids() == [REFERRAL, WITHDRAWAL]

    def test_the_referral_is_never_tried_again(
        self,
        timed_out_then_withdrawn: ServiceLayer,
        ledger: Ledger,
        clock: FakeClock,
        lancashire: Inbox,
    ) -> None:
        requests = lancashire.faults.requests
        clock.advance(timedelta(days=3))
        timed_out_then_withdrawn.scheduled.flush()
        timed_out_then_withdrawn.scheduled.issue_overdue_fallbacks()

        assert lancashire.faults.requests == requests
        row = outbox_row(ledger, REFERRAL)
        assert (row.published_at, row.maybe_delivered) == (None, True)
        assert [d.message_id for d in ledger.deliveries(state="cancelled")] == [REFERRAL]
        assert audit_actions(ledger) == ["withdrawal_sent"]


class TestWithdrawalOrder:
    def test_a_withdrawal_follows_its_delivered_referral(
        self,
        build: Builder,
        clock: FakeClock,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        bridge = build({LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)})
        bridge.service.handle(burglary(CRIME_REF))
        withdraw_consent(bridge.service, clock)

        assert lancashire.store.message_ids() == [REFERRAL, WITHDRAWAL]
        record = lancashire.store.get(WITHDRAWAL)
        assert record is not None
        assert record.referral_id == REFERRAL
        assert json.loads(record.envelope)["type"] == "victim.referral.withdrawn"


def phone_changed() -> Any:
    """Version 2 of `burglary(CRIME_REF)`: the victim has a new phone number."""
    moved = make_crime(make_victim("P-0001", phone="07700 900456"), version=2)
    return inbound(cloudevent(moved, event_type="crime.recorded"))


class TestUpdatesOverHttps:
    """Rules version 2: updates go to the provider's inbox exactly as referrals do."""

    def test_an_update_is_posted_after_its_referral_and_applied_by_the_inbox(
        self,
        build: Builder,
        ledger: Ledger,
        keys: KeyMaterial,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        bridge = build({LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)})
        bridge.service.handle(burglary(CRIME_REF))

        assert bridge.service.handle(phone_changed()) == Ack()

        update_id = ids.update_id(REFERRAL, 2)
        assert lancashire.store.message_ids() == [REFERRAL, update_id]
        assert lancashire.store.current(REFERRAL) == (update_id, 2, False)
        record = lancashire.store.get(update_id)
        assert record is not None
        payload = open_sealed(
            record.token,
            decryption_keys=keys.provider_keys(LANCASHIRE),
            verification_keys=keys.bridge_verification_keys(),
        )
        assert payload["victim"]["contact"]["phone"] == "07700 900456"
        assert audit_details(ledger, update_id) == ["delivered by https"]

    def test_an_update_waits_while_its_referral_is_parked(
        self,
        build: Builder,
        clock: FakeClock,
        pki: Pki,
        lancashire: Inbox,
    ) -> None:
        lancashire.faults.status = 503
        bridge = build({LANCASHIRE: https_route(pki, LANCASHIRE, lancashire.url)})
        bridge.service.handle(burglary(CRIME_REF))
        bridge.service.handle(phone_changed())
        assert lancashire.store.message_ids() == []
        lancashire.faults.status = None

        clock.advance(timedelta(hours=1))
        bridge.scheduled.flush()

        assert lancashire.store.message_ids() == [REFERRAL, ids.update_id(REFERRAL, 2)]
