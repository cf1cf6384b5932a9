"""Decisions: what the core says should happen for one victim, for the shell to carry out."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict


class Outcome(StrEnum):
    REFER = "refer"
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
    #: refer: the deterministic referral id; withdraw: the referral being withdrawn.
    referral_id: str | None = None
    #: leaflet: the deterministic task id.
    task_id: str | None = None
    #: refer: the Victims' Code deadline compliance is measured against.
    deadline: AwareDatetime | None = None
    #: leaflet: when the officer must give the leaflet.
    due_by: AwareDatetime | None = None
    #: hold: when the hold ends.
    hold_until: AwareDatetime | None = None
    #: True when a previously open hold ends with this decision.
    ends_hold: bool = False
