"""Decisions: what the core says should happen for one victim, for the shell to carry out."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict


class Outcome(StrEnum):
    REFER = "refer"
    UPDATE = "update"
    LEAFLET = "leaflet"
    HOLD = "hold"
    WITHDRAW = "withdraw"
    NONE = "none"


class Decision(BaseModel):
    """One victim's decision. `reason` is a stable code; `explanation` is PII-free prose."""

    model_config = ConfigDict(frozen=True)

    case_ref: str
    victim_id: str
    outcome: Outcome
    #: The policy rule that matched, e.g. "7" with its name "other_crime"; None if none applied.
    rule: str | None
    regime: str | None
    reason: str
    explanation: str
    provider: str | None = None
    service: str | None = None
    #: refer: the deterministic referral id; update, withdraw: the referral concerned.
    referral_id: str | None = None
    #: refer: 1, or more for a referral made again after a withdrawal.
    generation: int | None = None
    #: update: the revision sent (the created referral is revision 1).
    revision: int | None = None
    #: refer, update: fingerprint of the minimised content the provider will hold.
    fingerprint: str | None = None
    #: refer, update: the lawful basis for the disclosure (the rule's, or the consent's own).
    lawful_basis: str | None = None
    #: withdraw: when its reason arose (consent recorded, or the snapshot that showed it).
    arose_at: AwareDatetime | None = None
    #: refer: decided after its Victims' Code deadline had passed.
    late: bool = False
    #: leaflet: the deterministic task id.
    task_id: str | None = None
    #: refer, update: the Victims' Code deadline compliance is measured against.
    deadline: AwareDatetime | None = None
    #: leaflet: when the officer must give the leaflet.
    due_by: AwareDatetime | None = None
    #: hold: when the hold ends.
    hold_until: AwareDatetime | None = None
    #: True when a previously open hold ends with this decision.
    ends_hold: bool = False
    #: The category the rules decided on, for compliance reporting (no personal data): a crime's
    #: offence category after the policy's class mapping, `other` for an incident where a crime
    #: was disclosed, the incident category for any other incident.
    category: str | None = None
    #: refer: when the Victims' Code clock started (the report, or consent when it runs from
    #: consent); the time to referral is measured from here.
    clock_from: AwareDatetime | None = None
