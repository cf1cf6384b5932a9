"""The web inbox's pure decisions (issue 13): states, deadline closeness, teams, lock-out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from referral_bridge.core.intake import (
    IntakeState,
    LockoutPolicy,
    Role,
    Urgency,
    closeness,
    locked_until,
    may_see,
    state_of,
)

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
POLICY = LockoutPolicy(failures=3, window=timedelta(minutes=10), lock=timedelta(minutes=15))


def test_withdrawn_wins_over_any_outcome_and_no_outcome_is_new() -> None:
    assert state_of("contacted", withdrawn=True) is IntakeState.WITHDRAWN
    assert state_of(None, withdrawn=False) is IntakeState.NEW
    assert state_of("unable_to_contact", withdrawn=False) is IntakeState.UNABLE_TO_CONTACT


@pytest.mark.parametrize(
    ("left", "urgency", "text"),
    [
        (timedelta(days=1, hours=3, minutes=20), Urgency.LATER, "due in 1 day 3 hours"),
        (timedelta(hours=8), Urgency.SOON, "due in 8 hours"),
        (timedelta(minutes=1), Urgency.SOON, "due in 1 minute"),
        (timedelta(hours=-2), Urgency.OVERDUE, "overdue by 2 hours"),
        (timedelta(days=-2), Urgency.OVERDUE, "overdue by 2 days"),
    ],
)
def test_how_close_the_deadline_is(left: timedelta, urgency: Urgency, text: str) -> None:
    shown = closeness(NOW + left, NOW, IntakeState.NEW)
    assert (shown.urgency, shown.text) == (urgency, text)


def test_nothing_is_due_once_an_outcome_settles_it_but_accepted_still_counts_down() -> None:
    overdue = NOW - timedelta(hours=1)
    assert closeness(overdue, NOW, IntakeState.CONTACTED).urgency is Urgency.DONE
    assert closeness(overdue, NOW, IntakeState.WITHDRAWN).urgency is Urgency.DONE
    assert closeness(overdue, NOW, IntakeState.ACCEPTED).urgency is Urgency.OVERDUE
    assert closeness(None, NOW, IntakeState.NEW).urgency is Urgency.UNKNOWN


def test_a_worker_sees_only_their_teams_and_an_administrator_every_team() -> None:
    assert may_see(Role.INTAKE, ["general"], "general")
    assert not may_see(Role.INTAKE, ["general"], "domestic_abuse")
    assert not may_see(Role.INTAKE, ["general"], None)
    assert may_see(Role.ADMIN, [], "domestic_abuse")


def test_failures_up_to_the_limit_lock_from_the_last_one() -> None:
    failed = [NOW - timedelta(minutes=m) for m in (9, 5, 1)]
    assert locked_until(failed[:2], NOW, POLICY) is None
    assert locked_until(failed, NOW, POLICY) == NOW - timedelta(minutes=1) + POLICY.lock


def test_the_lock_ends_and_failures_spread_beyond_the_window_do_not_lock() -> None:
    failed = [NOW - timedelta(minutes=m) for m in (40, 30, 20)]
    assert locked_until(failed, NOW, POLICY) is None
    spread = [NOW - timedelta(minutes=m) for m in (24, 13, 2)]
    assert locked_until(spread, NOW, POLICY) is None
