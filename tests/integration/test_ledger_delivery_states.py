"""An outbox row's delivery state: pending, delivered, rejected or cancelled (SQLite, PostgreSQL).

Cancelled is a state of its own (`cancel_reason`), not a kind of rejection: operators list it
apart, nothing delivers or resends it, and a hand-over that raced it still counts as delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from referral_bridge.ledger import (
    Cancellation,
    CancelReason,
    DeliveryState,
    Ledger,
    OutboxMessage,
    PendingDelivery,
    ResendOutcome,
)
from referral_bridge.operator.audit import AuditQuery, AuditTrail

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LATER = AT + timedelta(minutes=5)
PROVIDER = "lancashire-victim-services"


def add_referral(ledger: Ledger, message_id: str) -> None:
    with ledger.transaction() as tx:
        tx.add_outbox(
            OutboxMessage(
                message_id=message_id,
                event_id="event-1",
                kind="referral",
                exchange="victim-services.referrals",
                routing_key=PROVIDER,
                headers={},
                body=b"sealed",
                provider=PROVIDER,
            ),
            AT,
        )


def row(ledger: Ledger, message_id: str) -> PendingDelivery:
    with ledger.transaction() as tx:
        found = tx.pending_delivery(message_id)
    assert found is not None
    return found


def listed(ledger: Ledger, state: str) -> list[str]:
    return [d.message_id for d in ledger.deliveries(state=state)]


class TestCancelled:
    def test_a_row_cancelled_before_any_attempt_is_cancelled_with_its_reason(
        self, ledger: Ledger
    ) -> None:
        add_referral(ledger, "m-1")

        with ledger.transaction() as tx:
            assert tx.cancel_unsent("m-1", LATER, CancelReason.CASE_CLOSED)

        cancelled = row(ledger, "m-1")
        assert (cancelled.state, cancelled.cancel_reason) == (
            DeliveryState.CANCELLED,
            CancelReason.CASE_CLOSED,
        )
        assert cancelled.last_error == CancelReason.CASE_CLOSED.explanation

    def test_operators_find_it_among_the_cancelled_not_the_rejected_nor_the_undelivered(
        self, ledger: Ledger
    ) -> None:
        add_referral(ledger, "m-1")
        with ledger.transaction() as tx:
            tx.cancel_unsent("m-1", LATER, CancelReason.NOTHING_TO_WITHDRAW)

        assert (listed(ledger, "cancelled"), listed(ledger, "rejected")) == (["m-1"], [])
        assert listed(ledger, "undelivered") == []

    def test_it_is_never_due_and_never_resent(self, ledger: Ledger) -> None:
        add_referral(ledger, "m-1")
        with ledger.transaction() as tx:
            tx.cancel_unsent("m-1", LATER, CancelReason.REFERRAL_WITHDRAWN)

        assert ledger.due_deliveries(LATER + timedelta(days=1)) == []
        assert ledger.resend("m-1", at=LATER, actor="op").outcome is ResendOutcome.CANCELLED

    def test_a_refusal_reported_after_the_cancellation_leaves_it_cancelled(
        self, ledger: Ledger
    ) -> None:
        add_referral(ledger, "m-1")
        assert ledger.claim_delivery("m-1", AT, AT + timedelta(minutes=1))
        with ledger.transaction() as tx:
            assert tx.cancel_referral("m-1", AT) is Cancellation.MAY_HAVE_BEEN_SENT
            tx.reject_delivery("m-1", LATER, "http_400: refused")

        assert row(ledger, "m-1").cancel_reason is CancelReason.WITHDRAWN_AFTER_ATTEMPT

    def test_a_hand_over_that_raced_the_cancellation_is_delivered(self, ledger: Ledger) -> None:
        add_referral(ledger, "m-1")
        assert ledger.claim_delivery("m-1", AT, AT + timedelta(minutes=1))
        with ledger.transaction() as tx:
            tx.cancel_referral("m-1", AT)

        assert ledger.mark_published("m-1", LATER, route="https")

        delivered = row(ledger, "m-1")
        assert (delivered.state, delivered.cancel_reason) == (DeliveryState.DELIVERED, None)
        assert listed(ledger, "cancelled") == []


class TestRejected:
    def test_a_refused_row_is_rejected_and_may_be_resent(self, ledger: Ledger) -> None:
        add_referral(ledger, "m-1")
        with ledger.transaction() as tx:
            tx.reject_delivery("m-1", LATER, "http_400: refused")

        assert (row(ledger, "m-1").state, listed(ledger, "rejected")) == (
            DeliveryState.REJECTED,
            ["m-1"],
        )
        assert ledger.resend("m-1", at=LATER, actor="op").outcome is ResendOutcome.RESENT
        assert row(ledger, "m-1").state is DeliveryState.PENDING


class TestResendAudit:
    def test_the_resend_record_goes_through_the_one_writer_scrubbed_and_clipped(
        self, ledger: Ledger
    ) -> None:
        """A provider's refusal text is not ours: it may name someone. The audit writer scrubs
        every record's free text, the resend's too."""
        add_referral(ledger, "m-1")
        with ledger.transaction() as tx:
            tx.reject_delivery("m-1", LATER, "http_400: unknown victim jane.doe@example.org")
        ledger.resend("m-1", at=LATER, actor="op" * 200)

        [record] = AuditTrail(ledger.engine).query(AuditQuery(action="referral_resend"))
        assert record.detail is not None
        assert "resend after rejection" in record.detail
        assert "jane.doe@example.org" not in record.detail
        assert len(record.actor) == 200


class TestDeliveriesFilter:
    def test_an_unknown_filter_is_refused(self, ledger: Ledger) -> None:
        with pytest.raises(ValueError, match="parked"):
            ledger.deliveries(state="parked")


class TestCancelReasons:
    def test_every_reason_has_its_own_operator_text_starting_cancelled(self) -> None:
        """Operators and the end-to-end checks read `last_error`: it still says `cancelled:`."""
        texts = [reason.explanation for reason in CancelReason]

        assert all(text.startswith("cancelled: ") and len(text) <= 500 for text in texts)
        assert len(set(texts)) == len(texts)
