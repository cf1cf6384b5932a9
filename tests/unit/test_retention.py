"""Retention as pure functions: which matters are due for erasure, what an erased one owes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from referral_bridge.core.decisions import Outcome
from referral_bridge.core.events import ConsentChange
from referral_bridge.core.history import (
    ConsentRecord,
    SentReferral,
    SentWithdrawal,
    VictimHistory,
)
from referral_bridge.core.retention import (
    DueMatter,
    RefActivity,
    due_for_erasure,
    matters,
    withdrawals_after_erasure,
)
from referral_bridge.settings import RetentionSection

NOW = datetime(2027, 12, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
OLD = NOW - YEAR - timedelta(days=1)


def held(ref: str, last: datetime | None = OLD, **facts: object) -> RefActivity:
    values: dict[str, object] = {"records": 1, "bodies": 2, "consents": 1, **facts}
    return RefActivity(ref=ref, last_activity=last, **values)  # type: ignore[arg-type]


def due(*rows: RefActivity, links: tuple[tuple[str, str], ...] = ()) -> list[DueMatter]:
    return due_for_erasure({r.ref: r for r in rows}, links, now=NOW, erase_after=YEAR)


class TestMatters:
    def test_links_join_refs_transitively(self) -> None:
        groups = matters(["A", "B", "C", "D"], [("A", "B"), ("C", "B")])

        assert groups == [frozenset({"A", "B", "C"}), frozenset({"D"})]

    def test_a_link_to_a_ref_with_no_rows_still_joins(self) -> None:
        assert matters(["A"], [("A", "X")]) == [frozenset({"A", "X"})]


class TestDueForErasure:
    def test_a_matter_idle_for_longer_than_the_policy_is_due_with_its_counts(self) -> None:
        assert due(held("LC-1")) == [DueMatter(frozenset({"LC-1"}), OLD, 1, 2, 1)]

    def test_a_matter_idle_for_less_is_not(self) -> None:
        assert due(held("LC-1", NOW - YEAR + timedelta(seconds=1))) == []

    def test_exactly_the_policy_is_due(self) -> None:
        assert [m.refs for m in due(held("LC-1", NOW - YEAR))] == [frozenset({"LC-1"})]

    def test_recent_activity_on_any_linked_ref_keeps_the_whole_matter(self) -> None:
        rows = (held("INC-1"), held("LC-1", NOW - timedelta(days=3)))

        assert due(*rows, links=(("INC-1", "LC-1"),)) == []

    def test_linked_idle_refs_are_erased_together(self) -> None:
        [matter] = due(held("INC-1"), held("LC-1"), links=(("INC-1", "LC-1"),))

        assert (matter.refs, matter.records, matter.bodies) == (frozenset({"INC-1", "LC-1"}), 2, 4)

    def test_nothing_is_erased_while_something_is_under_way(self) -> None:
        """An open hold, a message still to deliver or a pending review (the ledger's `busy`)."""
        assert due(held("INC-1"), held("LC-1", busy=True), links=(("INC-1", "LC-1"),)) == []

    def test_a_matter_already_erased_is_not_due_again(self) -> None:
        assert due(held("LC-1", records=0, bodies=0, consents=0)) == []

    def test_a_matter_with_nothing_dated_is_left_alone(self) -> None:
        assert due(held("LC-1", None)) == []

    def test_the_latest_activity_is_reported(self) -> None:
        later = OLD - timedelta(days=1)
        [matter] = due(held("A", later), held("B", OLD), links=(("A", "B"),))

        assert matter.last_activity == OLD


REFERRAL = SentReferral(
    referral_id="ref-1",
    provider="lancs",
    service="general",
    case_ref="LC-1",
    at=NOW - YEAR * 2,
)


def history(consent: ConsentChange | None, *, withdrawn: bool = False) -> VictimHistory:
    return VictimHistory(
        referrals=(REFERRAL,),
        withdrawals=(
            (SentWithdrawal(referral_id="ref-1", provider="lancs", at=NOW - YEAR),)
            if withdrawn
            else ()
        ),
        consent=ConsentRecord(referral=consent, recorded_at=NOW, recorded_by="PC 1")
        if consent
        else None,
    )


class TestWithdrawalsAfterErasure:
    @pytest.mark.parametrize("change", [ConsentChange.WITHDRAWN, ConsentChange.DECLINED])
    def test_a_live_referral_is_withdrawn_when_consent_goes(self, change: ConsentChange) -> None:
        [decision] = withdrawals_after_erasure("LC-1", {"P-1": history(change)})

        assert (decision.outcome, decision.reason, decision.referral_id, decision.provider) == (
            Outcome.WITHDRAW,
            change.value,
            "ref-1",
            "lancs",
        )
        assert decision.arose_at == NOW

    def test_consent_given_decides_nothing(self) -> None:
        assert withdrawals_after_erasure("LC-1", {"P-1": history(ConsentChange.GIVEN)}) == []

    def test_a_referral_already_withdrawn_is_not_withdrawn_again(self) -> None:
        victims = {"P-1": history(ConsentChange.WITHDRAWN, withdrawn=True)}

        assert withdrawals_after_erasure("LC-1", victims) == []

    def test_no_consent_record_decides_nothing(self) -> None:
        assert withdrawals_after_erasure("LC-1", {"P-1": history(None)}) == []


class TestPolicySettings:
    def test_the_default_keeps_a_year_and_sweeps_daily(self) -> None:
        policy = RetentionSection()

        assert (policy.erase_after_days, policy.sweep, policy.sweep_interval_hours) == (
            365,
            True,
            24.0,
        )

    @pytest.mark.parametrize("days", [0, 29, 3651])
    def test_a_period_outside_30_days_to_10_years_is_refused(self, days: int) -> None:
        with pytest.raises(ValueError, match="erase_after_days"):
            RetentionSection(erase_after_days=days)
