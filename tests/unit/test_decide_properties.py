"""Properties of decide() over generated cases, consent and histories (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from referral_bridge.core import ids
from referral_bridge.core.calendar import WorkingDayCalendar
from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.decide import decide
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.events import (
    ConsentChange,
    ConsentState,
    ContactMethod,
    CrimeStatus,
    Relationship,
    Victim,
)
from referral_bridge.core.history import (
    EMPTY_HISTORY,
    ConsentRecord,
    Hold,
    IssuedLeaflet,
    SentReferral,
    SentWithdrawal,
    VictimHistory,
)
from referral_bridge.core.replay import carry_out
from tests.profiles import examples
from tests.unit.factories import (
    CRIME_REF,
    FAKE_EMAIL,
    FAKE_PHONE,
    REPORTED_AT,
    consent_update,
    crime_case,
    default_policy,
    make_victim,
)

CALENDAR = WorkingDayCalendar()
T = TypeVar("T")
PROVIDERS = ("lancashire-victim-services", "homicide-service")
EXEMPT = frozenset(
    {
        "deceased",
        "withdrawn",
        "previously_withdrawn",
        "already_referred",
        "already_leafleted",
        "consent_not_obtained",
        "crime_cancelled",
        "crime_transferred",
        "organisation_no_explicit_consent",
    }
)
LEAFLET_REASONS = ("declined", "consent_needed", "no_safe_contact", "incident_information")

instants = st.datetimes(
    min_value=datetime(2026, 1, 1),
    max_value=datetime(2027, 12, 31),
    timezones=st.just(UTC),
)
categories = st.sampled_from(
    ["homicide", "sexual", "violence_with_injury", "burglary", "theft", "fraud", "other"]
)
ho_classes = st.sampled_from(["28E", "8N", "2", "5A", "05a", "36", "56A", "N100", "019C"])
flag_sets = st.dictionaries(
    st.sampled_from(["domestic_abuse", "hate", "terrorism", "trafficking", "other_flag"]),
    st.booleans(),
    max_size=3,
)
consent_changes = st.sampled_from(list(ConsentChange))


@st.composite
def victims(
    draw: st.DrawFn, victim_id: str = "P-0001", *, reported: datetime = REPORTED_AT
) -> Victim:
    return make_victim(
        victim_id,
        consent=draw(st.sampled_from(list(ConsentState))),
        consent_at=draw(st.none() | offsets(reported)),
        date_of_birth=draw(st.none() | st.dates(min_value=reported.date().replace(year=1930))),
        deceased=draw(mostly(False, True)),
        relationship=draw(st.none() | st.sampled_from(list(Relationship))),
        preferred=draw(st.sampled_from(list(ContactMethod))),
        safe_to_contact=draw(mostly(True, False)),
        phone=draw(mostly(FAKE_PHONE, None)),
        email=draw(mostly(FAKE_EMAIL, None)),
        with_address=draw(mostly(True, False)),
        vulnerable=draw(st.booleans()),
        intimidated=draw(st.booleans()),
        persistently_targeted=draw(st.booleans()),
    )


def mostly(usual: T, *others: T) -> st.SearchStrategy[T]:
    """`usual` five times in six, so that generated cases mostly get as far as a referral."""
    return st.sampled_from([usual] * 5 + list(others))


def offsets(start: datetime) -> st.SearchStrategy[datetime]:
    """Instants from a day before `start` to three weeks after it."""
    return st.integers(min_value=-24 * 60, max_value=21 * 24 * 60).map(
        lambda minutes: start + timedelta(minutes=minutes)
    )


@st.composite
def crimes(draw: st.DrawFn, victim_ids: tuple[str, ...] = ("P-0001",)) -> CaseSnapshot:
    reported = draw(instants)
    return crime_case(
        *(draw(victims(victim_id, reported=reported)) for victim_id in victim_ids),
        reported_at=reported,
        status=draw(mostly(CrimeStatus.RECORDED, *CrimeStatus)),
        category=draw(categories),
        ho_class=draw(ho_classes),
        flags=draw(flag_sets),
    )


@st.composite
def histories(draw: st.DrawFn, reported: datetime) -> VictimHistory:
    referrals = tuple(
        SentReferral(
            referral_id=ids.referral_id(provider, CRIME_REF, "P-0001"),
            provider=provider,
            service="general",
            case_ref=CRIME_REF,
            at=reported,
        )
        for provider in draw(st.lists(st.sampled_from(PROVIDERS), max_size=2, unique=True))
    )
    withdrawn = draw(st.lists(st.sampled_from(referrals), unique=True)) if referrals else []
    return VictimHistory(
        referrals=referrals,
        leaflets=tuple(
            IssuedLeaflet(task_id=f"t-{reason}", reason=reason, provider=PROVIDERS[0], at=reported)
            for reason in draw(st.lists(st.sampled_from(LEAFLET_REASONS), unique=True))
        ),
        withdrawals=tuple(
            SentWithdrawal(referral_id=r.referral_id, provider=r.provider, at=reported)
            for r in withdrawn
        ),
        hold=draw(st.none() | st.builds(Hold, until=offsets(reported), open=st.booleans())),
        consent=draw(
            st.none() | st.builds(consent_update, referral=consent_changes, at=offsets(reported))
        ),
    )


@st.composite
def situations(draw: st.DrawFn) -> tuple[CaseSnapshot, VictimHistory, datetime]:
    case = draw(crimes())
    return case, draw(histories(case.reported_at)), draw(offsets(case.reported_at))


def decide_all(case: CaseSnapshot, past: VictimHistory, now: datetime) -> tuple[Decision, ...]:
    return decide(case, {"P-0001": past}, default_policy(), now, CALENDAR)


def effective_consent(victim: Victim, update: ConsentRecord | None) -> str:
    """rules as agreed: the later recorded_at wins; an update wins a tie and an unknown time."""
    snap = victim.consent
    if update is not None and (snap.recorded_at is None or update.recorded_at >= snap.recorded_at):
        return update.referral.value
    return snap.referral.value


@settings(deadline=None)
@given(situations())
def test_a_person_victim_of_a_crime_is_always_handled_or_exempt(
    situation: tuple[CaseSnapshot, VictimHistory, datetime],
) -> None:
    case, past, now = situation
    for decision in decide_all(case, past, now):
        if decision.outcome is Outcome.NONE:
            assert decision.reason in EXEMPT
        elif decision.outcome is Outcome.HOLD:
            assert decision.hold_until is not None
            assert now < decision.hold_until
        elif decision.outcome is Outcome.REFER:
            assert decision.referral_id is not None
            assert decision.deadline is not None
            assert decision.lawful_basis is not None
        elif decision.outcome is Outcome.LEAFLET:
            assert decision.task_id is not None
            assert decision.due_by is not None
        else:
            assert decision.outcome in (Outcome.WITHDRAW, Outcome.UPDATE)
            assert decision.referral_id in {r.referral_id for r in past.live()}


@settings(deadline=None)
@given(situations())
def test_no_explicit_regime_referral_or_update_without_consent_given(
    situation: tuple[CaseSnapshot, VictimHistory, datetime],
) -> None:
    case, past, now = situation
    for decision in decide_all(case, past, now):
        if decision.regime == "explicit" and decision.outcome in (Outcome.REFER, Outcome.UPDATE):
            assert effective_consent(case.victims[0], past.consent) == "given"


@settings(deadline=None)
@given(situations())
def test_a_hold_always_comes_with_the_consent_needed_task_or_after_it(
    situation: tuple[CaseSnapshot, VictimHistory, datetime],
) -> None:
    case, past, now = situation
    decisions = decide_all(case, past, now)
    if any(d.outcome is Outcome.HOLD for d in decisions):
        assert past.has_leaflet("consent_needed") or any(
            d.reason == "consent_needed" for d in decisions
        )


# --- Folding a stream of events through decide, as the shell does ------------------------------


@dataclass(frozen=True)
class Snapshot:
    case: CaseSnapshot


@dataclass(frozen=True)
class ConsentEvent:
    victim_id: str
    record: ConsentRecord


@dataclass(frozen=True)
class Tick:
    """The shell's timer: re-decide a case whose hold may have ended."""


Event = Snapshot | ConsentEvent | Tick
VICTIM_IDS = ("P-0001", "P-0002")


@st.composite
def event_streams(draw: st.DrawFn) -> list[tuple[Event, datetime]]:
    versions = [
        draw(crimes(VICTIM_IDS)).model_copy(update={"version": n, "reported_at": REPORTED_AT})
        for n in range(1, draw(st.integers(1, 5)) + 1)
    ]
    updates = [
        ConsentEvent(vid, consent_update(change, at))
        for vid, change, at in draw(
            st.lists(
                st.tuples(st.sampled_from(VICTIM_IDS), consent_changes, offsets(REPORTED_AT)),
                max_size=5,
            )
        )
    ]
    pool: list[Event] = [*(Snapshot(v) for v in versions), *updates, Tick()]
    # Repeats and any order: brokers redeliver and reorder.
    events = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=16))
    steps = draw(st.lists(st.integers(0, 36 * 60), min_size=len(events), max_size=len(events)))
    now, timeline = REPORTED_AT, []
    for event, step in zip(events, steps, strict=True):
        now += timedelta(minutes=step)
        timeline.append((event, now))
    return timeline


def check_and_carry_out(
    history: dict[str, VictimHistory], decisions: tuple[Decision, ...], now: datetime
) -> dict[str, VictimHistory]:
    """What the shell records, checking on the way that nothing is sent that must not be."""
    for decision in decisions:
        past = history.get(decision.victim_id, EMPTY_HISTORY)
        live = {r.referral_id: r for r in past.live()}
        if decision.outcome is Outcome.REFER:
            assert decision.provider not in {r.provider for r in live.values()}, (
                "a second live referral to the same provider"
            )
            assert decision.referral_id not in {r.referral_id for r in past.referrals}
        elif decision.outcome in (Outcome.UPDATE, Outcome.WITHDRAW):
            assert decision.referral_id in live, f"{decision.outcome} without a live referral"
            assert decision.provider == live[decision.referral_id].provider
        elif decision.outcome is Outcome.LEAFLET:
            assert not past.has_leaflet(decision.reason), "second leaflet for the same reason"
        history = carry_out(history, (decision,), now)
    return history


def fold(
    timeline: list[tuple[Event, datetime]],
) -> tuple[CaseSnapshot | None, dict[str, VictimHistory], datetime]:
    current: CaseSnapshot | None = None
    history: dict[str, VictimHistory] = {}
    now = REPORTED_AT
    for event, now in timeline:
        if isinstance(event, Snapshot):
            if current is not None and event.case.version <= current.version:
                continue  # An older or equal version has no effect (contract §3).
            current = event.case
        elif isinstance(event, ConsentEvent):
            past = history.get(event.victim_id, EMPTY_HISTORY)
            if past.consent is None or event.record.recorded_at >= past.consent.recorded_at:
                history[event.victim_id] = past.model_copy(update={"consent": event.record})
        if current is None:
            continue
        decisions = decide(current, history, default_policy(), now, CALENDAR)
        history = check_and_carry_out(history, decisions, now)
    return current, history, now


@settings(deadline=None, max_examples=examples(150))
@given(event_streams())
def test_at_most_one_live_referral_per_provider_and_updates_follow_referrals(
    timeline: list[tuple[Event, datetime]],
) -> None:
    """Checked at every step by check_and_carry_out; at the end, on the whole history too."""
    _, history, _ = fold(timeline)
    for past in history.values():
        providers = [r.provider for r in past.live()]
        assert len(providers) == len(set(providers))
        referral_ids = {r.referral_id for r in past.referrals}
        assert {u.referral_id for u in past.updates} <= referral_ids
        assert {w.referral_id for w in past.withdrawals} <= referral_ids


@settings(deadline=None, max_examples=examples(150))
@given(event_streams())
def test_the_latest_wish_of_the_victim_is_what_the_provider_is_left_with(
    timeline: list[tuple[Event, datetime]],
) -> None:
    """After the last event, deciding again sends nothing more (the provider holds the current
    referral, or nothing), and a victim whose wish is "no" is held by no provider."""
    case, history, now = fold(timeline)
    if case is None:
        return
    again = decide(case, history, default_policy(), now, CALENDAR)
    assert [
        d for d in again if d.outcome in (Outcome.REFER, Outcome.UPDATE, Outcome.WITHDRAW)
    ] == []
    for victim in case.victims:
        past = history.get(victim.victim_id, EMPTY_HISTORY)
        wish = effective_consent(victim, past.consent)
        if wish in ("withdrawn", "declined"):
            assert past.live() == ()


# --- Holds end -----------------------------------------------------------------------------------


@st.composite
def held_cases(draw: st.DrawFn) -> CaseSnapshot:
    """A person victim of a recorded crime whose rule needs explicit consent, not yet asked."""
    reported = draw(instants)
    explicit = draw(st.sampled_from(["sexual", "domestic_abuse", "child"]))
    victim = make_victim(
        date_of_birth=reported.date().replace(year=reported.year - 10)
        if explicit == "child"
        else None,
        preferred=draw(st.sampled_from([ContactMethod.PHONE, ContactMethod.EMAIL])),
    )
    return crime_case(
        victim,
        reported_at=reported,
        category="sexual" if explicit == "sexual" else "violence_with_injury",
        flags={"domestic_abuse": explicit == "domestic_abuse"},
    )


@settings(deadline=None)
@given(
    case=held_cases(),
    late_by=st.integers(min_value=0, max_value=30 * 24 * 60),
    consent_after=st.none() | st.integers(min_value=-60, max_value=30 * 24 * 60),
)
def test_after_the_consent_wait_a_held_victim_was_asked_for_and_is_referred_or_closed(
    case: CaseSnapshot, late_by: int, consent_after: int | None
) -> None:
    held, asked = decide_all(case, EMPTY_HISTORY, case.reported_at)
    assert held.outcome is Outcome.HOLD
    assert (asked.outcome, asked.reason) == (Outcome.LEAFLET, "consent_needed")
    assert held.hold_until is not None
    assert asked.due_by is not None
    assert asked.due_by <= held.hold_until
    past = carry_out({}, (held, asked), case.reported_at)["P-0001"]
    if consent_after is not None:
        at = case.reported_at + timedelta(minutes=consent_after)
        past = past.model_copy(update={"consent": consent_update(ConsentChange.GIVEN, at)})
    (later,) = decide_all(case, past, held.hold_until + timedelta(minutes=late_by))
    assert (later.outcome, later.reason) in {
        (Outcome.NONE, "consent_not_obtained"),
        (Outcome.REFER, "consent_given"),
    }
    assert later.ends_hold
