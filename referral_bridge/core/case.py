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
from referral_bridge.core.policy import Policy


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
    #: Which rules decide it: the crime rules also decide an incident where a crime was
    #: disclosed (see `as_decided`).
    decided_as: CaseKind | None = None

    @property
    def rules_kind(self) -> CaseKind:
        return self.decided_as or self.kind

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


def as_decided(case: CaseSnapshot, policy: Policy) -> CaseSnapshot:
    """The case as the rules see it (rules.md version 2).

    A crime's Home Office class mapped by the policy wins over the category sent (a rape report
    sent as `other` is still `sexual`). An incident where a crime was disclosed is decided by
    the crime rules, as offence category `other` with the flag its incident category stands for.
    Applying it twice changes nothing.
    """
    if case.decided_as is not None:
        return case
    if case.kind is CaseKind.INCIDENT:
        if not case.crime_disclosed:
            return case.model_copy(update={"decided_as": CaseKind.INCIDENT})
        flag = policy.incident_flags.get(case.category)
        return case.model_copy(
            update={
                "decided_as": CaseKind.CRIME,
                "category": "other",
                "flags": {flag: True} if flag else {},
            }
        )
    mapped = policy.category_of_class(case.ho_class)
    return case.model_copy(
        update={"decided_as": CaseKind.CRIME, "category": mapped or case.category}
    )
