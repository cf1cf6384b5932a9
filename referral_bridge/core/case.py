"""A case as the decision core sees it, built from a crime or incident snapshot."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict

from referral_bridge.core.events import (
    CaseKind,
    CrimeRecorded,
    CrimeStatus,
    IncidentRecorded,
    Officer,
    Victim,
)


class CaseSnapshot(BaseModel):
    """The latest snapshot of the case: a crime, or an incident with no crime recorded."""

    model_config = ConfigDict(frozen=True)

    case_ref: str
    kind: CaseKind
    version: int
    reported_at: AwareDatetime
    #: Crimes: `recorded`, `cancelled` or `transferred`. Incidents are always `recorded`.
    status: CrimeStatus
    #: Offence category for crimes (rules.md), incident category for incidents.
    category: str
    offence_label: str
    ho_class: str | None
    flags: dict[str, bool]
    officer: Officer
    victims: tuple[Victim, ...]
    crime_disclosed: bool = False
    #: Crimes: incidents it was recorded from. Incidents: the crime recorded from it, if any.
    linked_refs: tuple[str, ...] = ()

    @classmethod
    def from_crime(cls, crime: CrimeRecorded) -> CaseSnapshot:
        return cls(
            case_ref=crime.crime_ref,
            kind=CaseKind.CRIME,
            version=crime.version,
            reported_at=crime.reported_at,
            status=crime.status,
            category=crime.offence.category,
            offence_label=crime.offence.label,
            ho_class=crime.offence.ho_class,
            flags=crime.flags.as_dict(),
            officer=crime.officer,
            victims=crime.victims,
            linked_refs=crime.linked_incident_refs,
        )

    @classmethod
    def from_incident(cls, incident: IncidentRecorded) -> CaseSnapshot:
        return cls(
            case_ref=incident.incident_ref,
            kind=CaseKind.INCIDENT,
            version=incident.version,
            reported_at=incident.opened_at,
            status=CrimeStatus.RECORDED,
            category=incident.category,
            offence_label=incident.category.replace("_", " "),
            ho_class=None,
            flags={},
            officer=incident.officer,
            victims=incident.victims,
            crime_disclosed=incident.crime_disclosed,
            linked_refs=(incident.linked_crime_ref,) if incident.linked_crime_ref else (),
        )

    def victim(self, victim_id: str) -> Victim | None:
        return next((v for v in self.victims if v.victim_id == victim_id), None)


def latest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two optional instants."""
    if a is None or b is None:
        return a or b
    return max(a, b)
