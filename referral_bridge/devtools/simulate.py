"""Synthetic events for demos and load tests: realistic shapes, obviously fake people.

Every personal value comes from reserved or fictional ranges: phone numbers from Ofcom's drama
range (07700 900000-900999), e-mail addresses at example.org, postcodes in the unused ZZ99 area.

Long on purpose: the synthetic world's generators; one file, so a reader sees every shape of case
it makes.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from referral_bridge.wire import JSON_CONTENT

if TYPE_CHECKING:
    from referral_bridge.ledger import Ledger
    from referral_bridge.transport.publisher import Publisher

GIVEN_NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Taylor",
    "Casey",
    "Robin",
    "Morgan",
    "Jamie",
    "Avery",
    "Riley",
)
FAMILY_NAMES = (
    "Example",
    "Sample",
    "Testcase",
    "Placeholder",
    "Fictional",
    "Madeup",
    "Dummy",
    "Specimen",
)
STREETS = ("Example Street", "Sample Road", "Fictional Avenue", "Test Lane", "Placeholder Close")
TOWNS = ("Preston", "Blackpool", "Lancaster", "Burnley", "Blackburn")

#: (category, Home Office class, label, weight)
OFFENCES = (
    ("burglary", "28E", "Burglary - residential (dwelling)", 14),
    ("theft", "49", "Other theft", 14),
    ("vehicle", "45", "Theft from a vehicle", 8),
    ("criminal_damage_arson", "58C", "Criminal damage to a vehicle", 8),
    ("violence_with_injury", "8N", "Assault with injury", 10),
    ("violence_without_injury", "105A", "Assault without injury", 10),
    ("stalking_harassment", "8Q", "Stalking", 5),
    ("robbery", "34B", "Robbery of personal property", 4),
    ("fraud", "53", "Fraud", 4),
    ("public_order", "9", "Public fear, alarm or distress", 4),
    ("sexual", "17", "Sexual assault on a female aged 13 and over", 5),
    ("homicide", "1/1", "Murder", 1),
    ("violence_with_injury", "5/1", "Wounding with intent to do grievous bodily harm", 2),
)
#: The date of birth every victim gets in marker mode: distinctive enough to search logs for.
MARKER_DATE_OF_BIRTH = "1911-11-11"
INCIDENT_CATEGORIES = (
    "asb",
    "hate_incident",
    "domestic_incident",
    "concern_for_safety",
    "crime_reported",
)


@dataclass(frozen=True, slots=True)
class SimulatedEvent:
    routing_key: str
    body: bytes
    #: A provider's outcome: published to the outcomes exchange, not the inbound one.
    from_provider: bool = False


class Simulator:
    """Generates a stream of fake cases with follow-up versions, consent changes and repeats."""

    def __init__(
        self,
        *,
        seed: int,
        now: datetime,
        source: str = "urn:force:example:simulator",
        marker: str | None = None,
        max_age: timedelta = timedelta(days=4),
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
        self._now = now
        self._source = source
        self._serial = 0
        #: When set, every personal field carries this marker, so a test can prove none leaks.
        self._marker = marker
        #: Cases are reported between 5 minutes and `max_age` before `now`.
        self._max_age_minutes = max(6, int(max_age.total_seconds() // 60))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _envelope(self, event_type: str, data: dict[str, Any], at: datetime) -> SimulatedEvent:
        body = {
            "specversion": "1.0",
            "id": self._uuid(),
            "source": self._source,
            "type": event_type,
            "time": at.isoformat(),
            "schemaversion": 1,
            "datacontenttype": JSON_CONTENT,
            "data": data,
        }
        return SimulatedEvent(event_type, json.dumps(body).encode())

    def _victim(
        self, reported_at: datetime, *, child: bool = False, kind: str = "person"
    ) -> dict[str, Any]:
        rng = self._rng
        self._serial += 1
        given, family = rng.choice(GIVEN_NAMES), rng.choice(FAMILY_NAMES)
        age = rng.randint(8, 17) if child else rng.randint(18, 90)
        dob = date(reported_at.year - age, rng.randint(1, 12), rng.randint(1, 28))
        preferred = rng.choices(("phone", "email", "post", "none"), weights=(60, 25, 10, 5))[0]
        consent = rng.choices(("not_asked", "given", "declined"), weights=(50, 35, 15))[0]
        victim: dict[str, Any] = {
            "victim_id": f"SIM-P-{self._serial:07d}",
            "kind": kind,
            "name": (
                {
                    "title": None,
                    "given": None,
                    "family": f"{family} Trading Ltd",
                    "contact_person": f"{given} {family}" if rng.random() < 0.7 else None,
                }
                if kind == "organisation"
                else {
                    "title": rng.choice(("Mr", "Ms", "Mx", None)),
                    "given": given,
                    "family": family,
                }
            ),
            "date_of_birth": None if kind == "organisation" else dob.isoformat(),
            "deceased": False,
            "relationship": None,
            "contact": {
                "phone": f"07700 900{rng.randint(0, 999):03d}",
                "email": f"{given.lower()}.{family.lower()}{self._serial}@example.org",
                "address": {
                    "lines": [f"{rng.randint(1, 200)} {rng.choice(STREETS)}", rng.choice(TOWNS)],
                    "postcode": f"ZZ99 {rng.randint(1, 9)}{rng.choice('ABDEFGHJ')}"
                    f"{rng.choice('LNPQRSTU')}",
                },
                "preferred": preferred,
                "safe_to_contact": rng.random() > 0.05,
                "safe_contact_notes": rng.choice((None, "after 5pm", "text first")),
            },
            "needs": {
                "vulnerable": rng.random() < 0.15,
                "intimidated": rng.random() < 0.05,
                "persistently_targeted": rng.random() < 0.05,
                "language": rng.choice(("en", "en", "en", "pl", "ur")),
                "accessibility": rng.choice((None, None, "hard of hearing", "large print")),
            },
            "consent": (
                {
                    "referral": consent,
                    "recorded_at": reported_at.isoformat(),
                    "recorded_by": "PC 1001",
                }
                if consent != "not_asked"
                else {"referral": "not_asked", "recorded_at": None, "recorded_by": None}
            ),
        }
        return self._marked(victim) if self._marker else victim

    def _marked(self, victim: dict[str, Any]) -> dict[str, Any]:
        m = self._marker
        victim["name"] = {
            key: (f"{m}-{key}" if value else value) for key, value in victim["name"].items()
        }
        if victim["date_of_birth"]:
            victim["date_of_birth"] = MARKER_DATE_OF_BIRTH
        contact = victim["contact"]
        contact["phone"], contact["email"] = f"{m}-phone", f"{m}-email@example.org"
        contact["address"] = {"lines": [f"{m}-address-line"], "postcode": f"{m}-postcode"}
        contact["safe_contact_notes"] = f"{m}-notes"
        return victim

    def _officer(self) -> dict[str, str]:
        collar = f"PC {self._rng.randint(1000, 9999)}"
        unit = f"{self._rng.choice(TOWNS)} Response"
        return {
            "collar": collar,
            "name": "A. Officer",
            "unit": unit,
            "email": "officer@force.example",
        }

    def cases(self, count: int) -> Iterator[SimulatedEvent]:  # noqa: C901 (one branch per kind of synthetic case)
        """`count` cases, each as one to four events (versions, consent changes, repeats)."""
        rng = self._rng
        for n in range(count):
            reported_at = self._now - timedelta(minutes=rng.randint(5, self._max_age_minutes))
            officer = self._officer()
            if rng.random() < 0.2:
                yield from self._incident_case(n, reported_at, officer)
                continue
            category, ho_class, label, _ = rng.choices(OFFENCES, weights=[o[3] for o in OFFENCES])[
                0
            ]
            victims = [self._victim(reported_at, child=rng.random() < 0.1)]
            if rng.random() < 0.15:
                victims.append(self._victim(reported_at))
            if rng.random() < 0.04:
                victims.append(self._victim(reported_at, kind="organisation"))
            if category == "homicide":
                victims[0]["deceased"] = True
                relative = self._victim(reported_at)
                relative["relationship"] = "bereaved_relative"
                victims.append(relative)
            crime = {
                "crime_ref": f"SIM-{reported_at:%y}-{n:07d}",
                "version": 1,
                "reported_at": reported_at.isoformat(),
                "recorded_at": (reported_at + timedelta(minutes=20)).isoformat(),
                "status": "recorded",
                "offence": {"ho_class": ho_class, "label": label, "category": category},
                "flags": {
                    "domestic_abuse": rng.random() < 0.12,
                    "hate": rng.random() < 0.04,
                    "terrorism": False,
                    "trafficking": False,
                },
                "officer": officer,
                "victims": victims,
                "linked_incident_refs": [],
            }
            first = self._envelope("crime.recorded", crime, reported_at + timedelta(minutes=21))
            yield first
            if rng.random() < 0.05:
                yield first  # the same event delivered twice
            if rng.random() < 0.1:
                later = json.loads(json.dumps(crime))
                later["version"] = 2
                if rng.random() < 0.3:
                    later["status"] = rng.choice(("cancelled", "transferred"))
                yield self._envelope("crime.recorded", later, reported_at + timedelta(hours=3))
                if rng.random() < 0.3:
                    yield first  # an older version after a newer one
            for victim in victims:
                if rng.random() < 0.25:
                    change = rng.choices(("given", "declined", "withdrawn"), weights=(60, 25, 15))[
                        0
                    ]
                    at = reported_at + timedelta(hours=rng.randint(1, 30))
                    yield self._envelope(
                        "consent.updated",
                        {
                            "case_ref": crime["crime_ref"],
                            "victim_id": victim["victim_id"],
                            "referral": change,
                            "recorded_at": at.isoformat(),
                            "recorded_by": officer["collar"],
                            "lawful_basis": "consent" if change == "given" else None,
                        },
                        at,
                    )

    def _incident_case(
        self, n: int, opened_at: datetime, officer: dict[str, str]
    ) -> Iterator[SimulatedEvent]:
        rng = self._rng
        incident_ref = f"SIM-INC-{opened_at:%Y%m%d}-{n:05d}"
        victim = self._victim(opened_at)
        incident = {
            "incident_ref": incident_ref,
            "version": 1,
            "opened_at": opened_at.isoformat(),
            "category": rng.choice(INCIDENT_CATEGORIES),
            "crime_disclosed": rng.random() < 0.3,
            "linked_crime_ref": None,
            "officer": officer,
            "victims": [victim],
        }
        yield self._envelope("incident.recorded", incident, opened_at + timedelta(minutes=5))
        if rng.random() < 0.4:  # later recorded as a crime: one referral only
            crime_ref = f"SIM-{opened_at:%y}-X{n:06d}"
            crime = {
                "crime_ref": crime_ref,
                "version": 1,
                "reported_at": opened_at.isoformat(),
                "recorded_at": (opened_at + timedelta(hours=2)).isoformat(),
                "status": "recorded",
                "offence": {
                    "ho_class": "8N",
                    "label": "Assault with injury",
                    "category": "violence_with_injury",
                },
                "flags": {
                    "domestic_abuse": False,
                    "hate": False,
                    "terrorism": False,
                    "trafficking": False,
                },
                "officer": officer,
                "victims": [victim],
                "linked_incident_refs": [incident_ref],
            }
            yield self._envelope("crime.recorded", crime, opened_at + timedelta(hours=2))
            linked = dict(incident, version=2, linked_crime_ref=crime_ref)
            yield self._envelope(
                "incident.recorded", linked, opened_at + timedelta(hours=2, minutes=5)
            )

    def bad_messages(self, count: int) -> Iterator[SimulatedEvent]:
        """Messages of every dead-letter kind, without any personal data in them."""
        kinds = [
            ("crime.recorded", b'{"padding": "' + b"x" * (1024 * 1024 + 16) + b'"}'),
            ("crime.recorded", b"{not json"),
            ("crime.recorded", b"\xff\xfe\x00 not utf-8"),
            ("crime.recorded", b"[1, 2, 3]"),
            (
                "crime.recorded",
                json.dumps(
                    {
                        "specversion": "1.0",
                        "id": "x",
                        "source": "s",
                        "type": "crime.exploded",
                        "data": {},
                    }
                ).encode(),
            ),
            (
                "crime.recorded",
                json.dumps(
                    {
                        "specversion": "1.0",
                        "id": self._uuid(),
                        "source": "s",
                        "type": "crime.recorded",
                        "schemaversion": 9,
                        "data": {},
                    }
                ).encode(),
            ),
            (
                "crime.recorded",
                json.dumps(
                    {
                        "specversion": "1.0",
                        "id": self._uuid(),
                        "source": "s",
                        "type": "crime.recorded",
                        "schemaversion": 1,
                        "data": {"crime_ref": "SIM-BAD", "version": 0},
                    }
                ).encode(),
            ),
        ]
        for n in range(count):
            yield SimulatedEvent(*kinds[n % len(kinds)])


#: (outcome, weight) a simulated provider reports for a referral.
OUTCOME_WEIGHTS = (
    ("accepted", 20),
    ("contacted", 45),
    ("unable_to_contact", 15),
    ("declined_by_victim", 12),
    ("returned", 8),
)
#: (result, weight) of a simulated completion, by task kind.
TASK_RESULTS = {
    "leaflet": (("leaflet_given", 80), ("victim_unreachable", 15), ("not_required", 5)),
    "crime_review": (("crime_recorded", 60), ("no_crime", 40)),
}


class Responder:
    """What providers and the force's task system say back about referrals and tasks the bridge
    sent: outcomes (with a repeat and an out-of-order one among them) and task completions, some
    late; `unknown` gives one of each for something the bridge never sent (dead letters)."""

    def __init__(
        self,
        *,
        seed: int,
        now: datetime,
        task_source: str = "urn:force:example:tasks",
        answer_share: float = 0.8,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
        self._now = now
        self._task_source = task_source
        self._share = answer_share

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _outcome(
        self, provider: str, referral_id: str, outcome: str, at: datetime
    ) -> SimulatedEvent:
        from referral_bridge.provider.outcomes import outcome_event

        body = outcome_event(
            provider=provider,
            referral_id=referral_id,
            outcome=outcome,
            at=at,
            source=f"urn:provider:{provider}",
            event_id=self._uuid(),
        )
        return SimulatedEvent(provider, body, from_provider=True)

    def outcomes(self, referrals: Iterable[tuple[str, str]]) -> Iterator[SimulatedEvent]:
        """Outcomes for a share of (referral id, provider) pairs."""
        rng = self._rng
        for referral_id, provider in referrals:
            if rng.random() >= self._share:
                continue
            outcome = _weighted(rng, OUTCOME_WEIGHTS)
            at = self._now - timedelta(minutes=rng.randint(1, 600))
            event = self._outcome(provider, referral_id, outcome, at)
            yield event
            if rng.random() < 0.05:
                yield event  # delivered twice
            if rng.random() < 0.05:  # an older outcome arriving late: no effect
                yield self._outcome(provider, referral_id, "accepted", at - timedelta(hours=1))

    def completions(self, tasks: Iterable[tuple[str, str]]) -> Iterator[SimulatedEvent]:
        """Completions for a share of open (task id, kind) pairs."""
        rng = self._rng
        for task_id, kind in tasks:
            results = TASK_RESULTS.get(kind)
            if results is None or rng.random() >= self._share:
                continue
            result = _weighted(rng, results)
            at = self._now - timedelta(minutes=rng.randint(1, 600))
            yield self._completion(task_id, result, at)

    def _completion(self, task_id: str, result: str, at: datetime) -> SimulatedEvent:
        data = {
            "task_id": task_id,
            "completed_at": at.isoformat(),
            "completed_by": f"PC {self._rng.randint(1000, 9999)}",
            "result": result,
        }
        body = {
            "specversion": "1.0",
            "id": self._uuid(),
            "source": self._task_source,
            "type": "task.completed",
            "time": at.isoformat(),
            "schemaversion": 1,
            "datacontenttype": JSON_CONTENT,
            "data": data,
        }
        return SimulatedEvent("task.completed", json.dumps(body).encode())

    def unknown(self, provider: str) -> list[SimulatedEvent]:
        """An outcome for a referral never sent and a completion for a task never issued."""
        return [
            self._outcome(provider, self._uuid(), "contacted", self._now),
            self._completion(self._uuid(), "leaflet_given", self._now),
        ]


def _weighted(rng: random.Random, choices: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def loop_to_close(ledger: Ledger) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """From the ledger: (referral id, provider) of referrals delivered, and (task id, kind) of
    leaflet and crime-review tasks still open."""
    from sqlalchemy import select

    from referral_bridge.ledger import schema as t

    with ledger.engine.connect() as connection:
        referrals = connection.execute(
            select(t.outbox.c.message_id, t.outbox.c.provider)
            .where(t.outbox.c.kind == "referral", t.outbox.c.published_at.is_not(None))
            .order_by(t.outbox.c.created_at, t.outbox.c.message_id)
        ).all()
        tasks = connection.execute(
            select(t.tasks.c.task_id, t.tasks.c.kind)
            .where(
                t.tasks.c.kind.in_(("leaflet", "crime_review")), t.tasks.c.completed_at.is_(None)
            )
            .order_by(t.tasks.c.issued_at, t.tasks.c.task_id)
        ).all()
    return [(r[0], str(r[1])) for r in referrals], [(r[0], r[1]) for r in tasks]


def respond(
    ledger: Ledger, *, seed: int, now: datetime, unknown: bool = False
) -> list[SimulatedEvent]:
    """Outcomes and completions for what the ledger shows sent (see Responder)."""
    referrals, tasks = loop_to_close(ledger)
    responder = Responder(seed=seed, now=now)
    events = [*responder.outcomes(referrals), *responder.completions(tasks)]
    if unknown:
        events += responder.unknown(referrals[0][1] if referrals else "lancashire-victim-services")
    return events


def sample_events(folder: Path) -> list[SimulatedEvent]:
    """The contract's sample events, in file name order."""
    events = []
    for path in sorted(folder.glob("*.json")):
        body = path.read_bytes()
        events.append(SimulatedEvent(str(json.loads(body).get("type", "unknown")), body))
    return events


def feed(
    *,
    config: Path | None,
    count: int,
    seed: int,
    bad: int,
    samples: Path | None,
    max_age_hours: float,
    respond_only: bool = False,
) -> int:
    """`referral-bridge simulate`: publish samples, synthetic cases and bad messages; or, with
    `respond_only`, outcomes and completions for what the bridge has sent (read from its ledger)."""
    from referral_bridge.bootstrap import broker_of, topology_of
    from referral_bridge.ledger import Ledger
    from referral_bridge.settings import load_settings
    from referral_bridge.transport.publisher import Publisher

    settings = load_settings(config)
    if respond_only:
        ledger = Ledger.open(settings.ledger_url, migrate=False)
        try:
            events = respond(ledger, seed=seed, now=datetime.now(UTC), unknown=bad > 0)
        finally:
            ledger.dispose()
    else:
        events = sample_events(samples) if samples else []
        simulator = Simulator(
            seed=seed, now=datetime.now(UTC), max_age=timedelta(hours=max_age_hours)
        )
        events += [*simulator.cases(count), *simulator.bad_messages(bad)]
    with Publisher(broker_of(settings), topology_of(settings)) as publisher:
        publish_all(publisher, events)
    if respond_only:
        outcomes = sum(1 for event in events if event.from_provider)
        print(
            f"published {outcomes} provider outcomes and {len(events) - outcomes} task completions"
        )
    else:
        print(f"published {len(events)} messages ({bad} invalid on purpose)")
    return 0


def publish_all(publisher: Publisher, events: Iterable[SimulatedEvent]) -> int:
    count = 0
    for event in events:
        exchange = publisher.topology.outcomes_exchange if event.from_provider else None
        publisher.publish_inbound(event.body, event.routing_key, exchange=exchange)
        count += 1
    return count
