"""Builders for test crimes, incidents, victims and histories, with obviously fake data only.

Names are "Test Person", phones are in Ofcom's drama range 07700 900xxx, e-mails are at
example.org and postcodes use the unallocated "ZZ" area, so nothing here is anyone's data.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime

from referral_bridge.core.case import CaseSnapshot
from referral_bridge.core.events import (
    Address,
    ConsentChange,
    ConsentState,
    Contact,
    ContactMethod,
    CrimeRecorded,
    CrimeStatus,
    Flags,
    IncidentRecorded,
    Name,
    Needs,
    Offence,
    Officer,
    Relationship,
    Victim,
    VictimConsent,
    VictimKind,
)
from referral_bridge.core.history import ConsentRecord
from referral_bridge.core.policy import Policy, load_policy_text
from referral_bridge.resources import DEFAULT_POLICY

POLICY_FILE = DEFAULT_POLICY

#: Monday 23 November 2026, 09:41 (GMT): no bank holiday within two weeks either side.
REPORTED_AT = datetime(2026, 11, 23, 9, 41, tzinfo=UTC)
CRIME_REF = "LC-26-0000001"
INCIDENT_REF = "INC-20261123-0001"

#: Fake personal values the explanation tests look for.
FAKE_NAME = ("Test", "Person")
FAKE_PHONE = "07700 900123"
FAKE_EMAIL = "test.person@example.org"
FAKE_POSTCODE = "ZZ99 9ZZ"
FAKE_ADDRESS_LINE = "1 Test Street"
FAKE_CONTACT_PERSON = "Test Contact"
ADULT_DOB = date(1984, 2, 29)


@functools.cache
def default_policy() -> Policy:
    """The shipped policy, as the bridge loads it."""
    return load_policy_text(POLICY_FILE.read_text(encoding="utf-8"), source=str(POLICY_FILE))


def officer() -> Officer:
    return Officer(collar="PC 0000", name="Test Officer", unit="Test Unit", email="pc@example.org")


def make_victim(
    victim_id: str = "P-0001",
    *,
    kind: VictimKind = VictimKind.PERSON,
    consent: ConsentState = ConsentState.NOT_ASKED,
    consent_at: datetime | None = None,
    date_of_birth: date | None = ADULT_DOB,
    deceased: bool = False,
    relationship: Relationship | None = None,
    preferred: ContactMethod = ContactMethod.PHONE,
    safe_to_contact: bool = True,
    phone: str | None = FAKE_PHONE,
    email: str | None = FAKE_EMAIL,
    with_address: bool = True,
    contact_person: str | None = None,
    vulnerable: bool = False,
    intimidated: bool = False,
    persistently_targeted: bool = False,
) -> Victim:
    address = Address(lines=(FAKE_ADDRESS_LINE, "Testtown"), postcode=FAKE_POSTCODE)
    return Victim(
        victim_id=victim_id,
        kind=kind,
        name=Name(
            title="Mx",
            given=FAKE_NAME[0] if kind is VictimKind.PERSON else None,
            family=FAKE_NAME[1] if kind is VictimKind.PERSON else "Test Organisation Ltd",
            contact_person=contact_person,
        ),
        date_of_birth=date_of_birth if kind is VictimKind.PERSON else None,
        deceased=deceased,
        relationship=relationship,
        contact=Contact(
            phone=phone,
            email=email,
            address=address if with_address else None,
            preferred=preferred,
            safe_to_contact=safe_to_contact,
            safe_contact_notes="Test note: after 5pm",
        ),
        needs=Needs(
            vulnerable=vulnerable,
            intimidated=intimidated,
            persistently_targeted=persistently_targeted,
            language="en",
        ),
        consent=VictimConsent(
            referral=consent,
            recorded_at=consent_at,
            recorded_by="PC 0000" if consent_at is not None else None,
        ),
    )


def make_crime(
    *victims: Victim,
    crime_ref: str = CRIME_REF,
    version: int = 1,
    reported_at: datetime = REPORTED_AT,
    status: CrimeStatus = CrimeStatus.RECORDED,
    category: str = "burglary",
    ho_class: str = "28E",
    flags: dict[str, bool] | None = None,
) -> CrimeRecorded:
    return CrimeRecorded(
        crime_ref=crime_ref,
        version=version,
        reported_at=reported_at,
        recorded_at=reported_at,
        status=status,
        offence=Offence(ho_class=ho_class, label=f"Test offence {ho_class}", category=category),
        flags=Flags.model_validate(flags or {}),
        officer=officer(),
        victims=victims or (make_victim(),),
    )


def make_incident(
    *victims: Victim,
    incident_ref: str = INCIDENT_REF,
    version: int = 1,
    opened_at: datetime = REPORTED_AT,
    category: str = "asb",
    crime_disclosed: bool = False,
) -> IncidentRecorded:
    return IncidentRecorded(
        incident_ref=incident_ref,
        version=version,
        opened_at=opened_at,
        category=category,
        crime_disclosed=crime_disclosed,
        officer=officer(),
        victims=victims or (make_victim(),),
    )


def crime_case(
    *victims: Victim,
    crime_ref: str = CRIME_REF,
    version: int = 1,
    reported_at: datetime = REPORTED_AT,
    status: CrimeStatus = CrimeStatus.RECORDED,
    category: str = "burglary",
    ho_class: str = "28E",
    flags: dict[str, bool] | None = None,
) -> CaseSnapshot:
    """A crime case snapshot, built through `CaseSnapshot.from_crime` as the shell does."""
    return CaseSnapshot.from_crime(
        make_crime(
            *victims,
            crime_ref=crime_ref,
            version=version,
            reported_at=reported_at,
            status=status,
            category=category,
            ho_class=ho_class,
            flags=flags,
        )
    )


def incident_case(
    *victims: Victim,
    category: str = "asb",
    crime_disclosed: bool = False,
    opened_at: datetime = REPORTED_AT,
) -> CaseSnapshot:
    return CaseSnapshot.from_incident(
        make_incident(
            *victims, category=category, crime_disclosed=crime_disclosed, opened_at=opened_at
        )
    )


def consent_update(referral: ConsentChange, at: datetime) -> ConsentRecord:
    return ConsentRecord(referral=referral, recorded_at=at, recorded_by="PC 0000")
