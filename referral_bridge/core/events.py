"""The wire contract's inbound and outbound messages as frozen pydantic models (contract §2-§6)."""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from referral_bridge.wire import (
    ATTEMPTS_HEADER,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
)

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Ref = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_./:-]*$")
]


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _rfc3339(value: object) -> object:
    """Contract §2: timestamps are RFC 3339 strings with an offset; no numbers, no bare dates."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise PydanticCustomError(
            "rfc3339_timestamp", "must be an RFC 3339 timestamp with an offset"
        )
    return value


def _iso_date(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise PydanticCustomError("iso_date", "must be a date as YYYY-MM-DD")
    return value


#: Inbound types are strict: a number is not a timestamp, "1" is not a version, "no" is not false.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
Day = Annotated[date, BeforeValidator(_iso_date)]
Flag = StrictBool
Version = Annotated[StrictInt, Field(ge=1)]
#: Free text is bounded so that nothing valid can fail to fit the ledger or a provider's system.
Text = Annotated[str, StringConstraints(max_length=500)]
ShortText = Annotated[str, StringConstraints(max_length=200)]


class Strict(BaseModel):
    """A contract object: immutable, and unknown fields are schema violations (contract §2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Lenient(BaseModel):
    """An envelope: immutable, and unknown extra attributes are ignored (contract §2)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class EventType(StrEnum):
    CRIME_RECORDED = "crime.recorded"
    INCIDENT_RECORDED = "incident.recorded"
    CONSENT_UPDATED = "consent.updated"
    #: Version 2: from a provider, on `victim-services.outcomes`.
    REFERRAL_OUTCOME = "victim.referral.outcome"
    #: Version 2: from the force's task system.
    TASK_COMPLETED = "task.completed"


class CrimeStatus(StrEnum):
    RECORDED = "recorded"
    CANCELLED = "cancelled"
    TRANSFERRED = "transferred"


class ConsentState(StrEnum):
    GIVEN = "given"
    DECLINED = "declined"
    NOT_ASKED = "not_asked"
    WITHDRAWN = "withdrawn"


class ConsentChange(StrEnum):
    """What a later `consent.updated` may say (never `not_asked`)."""

    GIVEN = "given"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"


class VictimKind(StrEnum):
    PERSON = "person"
    ORGANISATION = "organisation"


class Relationship(StrEnum):
    BEREAVED_RELATIVE = "bereaved_relative"
    PARENT_OR_GUARDIAN = "parent_or_guardian"


class ContactMethod(StrEnum):
    PHONE = "phone"
    EMAIL = "email"
    POST = "post"
    NONE = "none"


class Offence(Strict):
    ho_class: NonEmpty
    label: NonEmpty
    category: NonEmpty


class Flags(BaseModel):
    """Home Office crime flags; flags beyond the four named ones are kept as booleans."""

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, StrictBool] = Field(init=False)

    domestic_abuse: Flag = False
    hate: Flag = False
    terrorism: Flag = False
    trafficking: Flag = False

    def as_dict(self) -> dict[str, bool]:
        return {
            **(self.__pydantic_extra__ or {}),
            **self.model_dump(exclude=set(self.__pydantic_extra__ or {})),
        }


class Officer(Strict):
    collar: NonEmpty
    name: NonEmpty
    unit: NonEmpty
    email: NonEmpty


class Name(Strict):
    title: Text | None = None
    given: Text | None = None
    family: NonEmpty
    contact_person: Text | None = None


class Address(Strict):
    lines: tuple[NonEmpty, ...] = Field(min_length=1, max_length=8)
    postcode: Text | None = None


class Contact(Strict):
    phone: Text | None = None
    email: Text | None = None
    address: Address | None = None
    preferred: ContactMethod
    safe_to_contact: Flag
    safe_contact_notes: Text | None = None


class Needs(Strict):
    vulnerable: Flag = False
    intimidated: Flag = False
    persistently_targeted: Flag = False
    language: Annotated[str, StringConstraints(max_length=35)] | None = None
    accessibility: Text | None = None


class VictimConsent(Strict):
    referral: ConsentState
    recorded_at: Timestamp | None = None
    recorded_by: ShortText | None = None


class Victim(Strict):
    victim_id: Ref
    kind: VictimKind
    name: Name
    date_of_birth: Day | None = None
    deceased: Flag = False
    relationship: Relationship | None = None
    contact: Contact
    needs: Needs
    consent: VictimConsent


def _check_unique_victim_ids(victims: tuple[Victim, ...]) -> None:
    """Each victim appears once: decisions and the ledger are per victim id."""
    ids = [victim.victim_id for victim in victims]
    if len(ids) != len(set(ids)):
        raise PydanticCustomError("duplicate_victim_id", "the same victim_id is listed twice")


class CrimeRecorded(Strict):
    crime_ref: Ref
    version: Version
    reported_at: Timestamp
    recorded_at: Timestamp
    status: CrimeStatus
    offence: Offence
    flags: Flags = Flags()
    officer: Officer
    victims: tuple[Victim, ...] = Field(max_length=200)
    linked_incident_refs: tuple[Ref, ...] = ()

    @model_validator(mode="after")
    def _unique_victims(self) -> CrimeRecorded:
        _check_unique_victim_ids(self.victims)
        return self


class IncidentRecorded(Strict):
    incident_ref: Ref
    version: Version
    opened_at: Timestamp
    category: NonEmpty
    crime_disclosed: Flag
    linked_crime_ref: Ref | None = None
    officer: Officer
    victims: tuple[Victim, ...] = Field(max_length=200)

    @model_validator(mode="after")
    def _unique_victims(self) -> IncidentRecorded:
        _check_unique_victim_ids(self.victims)
        return self


class ConsentUpdated(Strict):
    case_ref: Ref
    victim_id: Ref
    referral: ConsentChange
    recorded_at: Timestamp
    recorded_by: NonEmpty
    lawful_basis: ShortText | None = None


class ProviderOutcome(StrEnum):
    """What a provider reports about a referral (contract §3, version 2)."""

    ACCEPTED = "accepted"
    CONTACTED = "contacted"
    UNABLE_TO_CONTACT = "unable_to_contact"
    DECLINED_BY_VICTIM = "declined_by_victim"
    RETURNED = "returned"


class ReferralOutcome(Strict):
    """`victim.referral.outcome` data: plain JSON and no personal data."""

    referral_id: Ref
    #: Must equal the routing key and the provider the referral was sent to.
    provider: Ref
    outcome: ProviderOutcome
    at: Timestamp


class TaskResult(StrEnum):
    LEAFLET_GIVEN = "leaflet_given"
    CONSENT_OBTAINED = "consent_obtained"
    VICTIM_UNREACHABLE = "victim_unreachable"
    NOT_REQUIRED = "not_required"
    CRIME_RECORDED = "crime_recorded"
    NO_CRIME = "no_crime"


class TaskCompleted(Strict):
    """`task.completed` data, from the force's task system."""

    task_id: Ref
    completed_at: Timestamp
    #: The completing officer's collar number (fits the ledger's 64 characters).
    completed_by: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    result: TaskResult


EventData = CrimeRecorded | IncidentRecorded | ConsentUpdated | ReferralOutcome | TaskCompleted
#: Events about a crime or incident record (the others are about a referral or a task).
CaseEventData = CrimeRecorded | IncidentRecorded | ConsentUpdated

DATA_MODELS: dict[EventType, type[Strict]] = {
    EventType.CRIME_RECORDED: CrimeRecorded,
    EventType.INCIDENT_RECORDED: IncidentRecorded,
    EventType.CONSENT_UPDATED: ConsentUpdated,
    EventType.REFERRAL_OUTCOME: ReferralOutcome,
    EventType.TASK_COMPLETED: TaskCompleted,
}

#: The `schemaversion` of `data` this bridge understands, per inbound type.
SUPPORTED_SCHEMA_VERSIONS: dict[EventType, frozenset[int]] = {t: frozenset({1}) for t in EventType}


class CloudEvent(Lenient):
    """A CloudEvents 1.0 structured-mode envelope; `data` is checked separately by type."""

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    type: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    time: AwareDatetime | None = None
    schemaversion: int | None = None
    datacontenttype: str | None = None
    data: Any = None


class InboundEvent(Lenient):
    """A validated inbound event: envelope plus typed data."""

    id: str
    source: str
    type: EventType
    time: AwareDatetime | None
    schemaversion: int
    data: EventData


# --- Outbound (contract §4, §5) ---------------------------------------------------------------


class ReferralOfficer(Strict):
    collar: str
    name: str
    unit: str
    email: str


class ReferralVictim(Strict):
    victim_id: str
    kind: VictimKind
    name: Name
    date_of_birth: date | None
    relationship: Relationship | None
    contact: Contact
    needs: Needs


class ConsentRegime(StrEnum):
    """How consent was treated for a referral (contract §4); `opt_out` + `not_asked` is
    "no objection", which is a consent state, never a lawful basis."""

    OPT_OUT = "opt_out"
    EXPLICIT = "explicit"
    INCIDENT = "incident"


class ReferralConsent(Strict):
    regime: ConsentRegime
    state: ConsentState
    recorded_at: AwareDatetime | None
    recorded_by: str | None


class CaseKind(StrEnum):
    CRIME = "crime"
    INCIDENT = "incident"


class WithdrawalReason(StrEnum):
    WITHDRAWN = "withdrawn"
    DECLINED = "declined"
    NOT_SAFE_TO_CONTACT = "not_safe_to_contact"
    CONSENT_REGIME_CHANGED = "consent_regime_changed"
    REROUTED = "rerouted"


class ReferralPayload(Strict):
    """The signed content of `victim.referral.created` (schemaversion 2): only what the
    provider needs."""

    referral_id: str
    case_ref: str
    case_kind: CaseKind
    reported_at: AwareDatetime
    offence_label: str
    offence_category: str
    flags: dict[str, bool]
    provider: str
    service: str
    victim: ReferralVictim
    consent: ReferralConsent
    lawful_basis: str
    officer: ReferralOfficer
    deadline: AwareDatetime
    issued_at: AwareDatetime


class UpdatePayload(ReferralPayload):
    """The signed content of `victim.referral.updated`: the whole current referral, which
    replaces what the provider holds for `referral_id`; revisions count from 2."""

    revision: Annotated[int, Field(ge=2)]


class WithdrawalPayload(Strict):
    """The signed content of `victim.referral.withdrawn` (schemaversion 2). `provider` names
    the addressee, so one provider cannot replay another's withdrawal to it."""

    referral_id: str
    provider: str
    case_ref: str
    victim_id: str
    reason: WithdrawalReason
    #: When the reason arose (consent recorded, or the snapshot that showed it).
    withdrawn_at: AwareDatetime
    issued_at: AwareDatetime


class TaskOfficer(Strict):
    collar: str
    unit: str


class LeafletTask(Strict):
    """`officer.task.leaflet` data: no names or contact details of the victim."""

    task_id: str
    case_ref: str
    case_kind: CaseKind
    victim_id: str
    officer: TaskOfficer
    reason: str
    due_by: AwareDatetime
    provider: str


class CrimeReviewTask(Strict):
    """`officer.task.crime_review` data: for the force crime registrar, no personal data."""

    task_id: str
    incident_ref: str
    incident_category: str
    opened_at: AwareDatetime
    officer: TaskOfficer
    reason: Literal["crime_not_recorded"] = "crime_not_recorded"
    due_by: AwareDatetime


class TaskKind(StrEnum):
    """The officer tasks the bridge issues (`rb_tasks.kind`)."""

    LEAFLET = "leaflet"
    CRIME_REVIEW = "crime_review"
    ESCALATION = "escalation"


class EscalationTask(Strict):
    """`officer.task.escalation` data (version 2): a leaflet or crime-review task still open at
    its `due_by`, for the officer's unit. No personal data."""

    task_id: str
    #: The overdue task's id.
    escalates: str
    task_kind: Literal[TaskKind.LEAFLET, TaskKind.CRIME_REVIEW]
    #: The overdue task's reason.
    reason: str
    case_ref: str
    officer: TaskOfficer
    #: The overdue task's due time.
    due_by: AwareDatetime
    escalated_at: AwareDatetime


class OutboundEvent(Strict):
    """A CloudEvent the bridge publishes."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    time: AwareDatetime
    schemaversion: int = 1
    datacontenttype: str
    data: Any


class DeadLetterReason(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_ENCODING = "invalid_encoding"
    TOO_LARGE = "too_large"
    NOT_CLOUDEVENT = "not_cloudevent"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    SCHEMA_VIOLATION = "schema_violation"
    PROCESSING_ERROR = "processing_error"
    #: Version 2: an outcome for a referral the bridge never sent to that provider.
    UNKNOWN_REFERRAL = "unknown_referral"
    #: Version 2: a completion for a task the bridge never issued.
    UNKNOWN_TASK = "unknown_task"


class DeadLetterHeaders(BaseModel):
    """Headers on a dead letter (contract §6); `x-rb-detail` never holds personal data."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    reason: DeadLetterReason = Field(alias=REASON_HEADER)
    detail: str = Field(alias=DETAIL_HEADER, max_length=2000)
    failed_at: AwareDatetime = Field(alias=FAILED_AT_HEADER)
    attempts: int = Field(alias=ATTEMPTS_HEADER, ge=1)
    original_routing_key: str = Field(alias=ORIGINAL_ROUTING_KEY_HEADER)
