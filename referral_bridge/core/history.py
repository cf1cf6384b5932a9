"""What was already done for each victim of a case: the ledger's state, as pure values."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict

from referral_bridge.core.events import ConsentChange


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True)


class SentReferral(_Value):
    referral_id: str
    provider: str
    service: str
    #: The ref the referral was made under (an incident's, if it was made before the crime).
    case_ref: str
    at: AwareDatetime
    #: 1 for the first referral of this victim to this provider; +1 after each withdrawal.
    generation: int = 1
    #: The Victims' Code deadline it was made against (kept in updates).
    deadline: AwareDatetime | None = None
    #: Fingerprint of the minimised content sent (None: recorded before version 2).
    fingerprint: str | None = None


class SentUpdate(_Value):
    """A `victim.referral.updated`: what the provider holds for a referral from now on."""

    update_id: str
    referral_id: str
    revision: int
    service: str
    fingerprint: str | None
    at: AwareDatetime
    #: The case whose snapshot the update carried (a crime that took over from an incident).
    case_ref: str = ""


class IssuedLeaflet(_Value):
    task_id: str
    reason: str
    provider: str
    at: AwareDatetime


class SentWithdrawal(_Value):
    referral_id: str
    provider: str
    at: AwareDatetime
    #: Contract §4 reason; version 1 withdrew only for withdrawn consent.
    reason: str = "withdrawn"


class Hold(_Value):
    until: AwareDatetime
    #: False once the hold has ended (consent arrived, it expired, or the case closed).
    open: bool = True


class ConsentRecord(_Value):
    """The latest `consent.updated` for a victim of a case."""

    referral: ConsentChange
    recorded_at: AwareDatetime
    recorded_by: str
    lawful_basis: str | None = None


#: Withdrawals the victim asked for: only consent given again refers them again.
CONSENT_WITHDRAWALS = frozenset({"withdrawn", "declined"})


class VictimHistory(_Value):
    referrals: tuple[SentReferral, ...] = ()
    updates: tuple[SentUpdate, ...] = ()
    leaflets: tuple[IssuedLeaflet, ...] = ()
    withdrawals: tuple[SentWithdrawal, ...] = ()
    hold: Hold | None = None
    consent: ConsentRecord | None = None

    def referred_to(self, provider: str) -> bool:
        return any(r.provider == provider for r in self.referrals)

    def live(self) -> tuple[SentReferral, ...]:
        """Referrals the provider still holds: sent and not withdrawn."""
        return tuple(r for r in self.referrals if not self.withdrawn(r.referral_id))

    def next_generation(self, provider: str) -> int:
        return 1 + max((r.generation for r in self.referrals if r.provider == provider), default=0)

    def held(self, referral: SentReferral) -> tuple[int, str | None, str]:
        """(revision, fingerprint, case ref) of what the provider holds for this referral now."""
        latest = max(
            (u for u in self.updates if u.referral_id == referral.referral_id),
            key=lambda u: u.revision,
            default=None,
        )
        if latest is None:
            return 1, referral.fingerprint, referral.case_ref
        return latest.revision, latest.fingerprint, latest.case_ref or referral.case_ref

    def withdrew_for_consent(self) -> bool:
        return any(w.reason in CONSENT_WITHDRAWALS for w in self.withdrawals)

    def has_leaflet(self, reason: str) -> bool:
        return any(t.reason == reason for t in self.leaflets)

    def withdrawn(self, referral_id: str) -> bool:
        return any(w.referral_id == referral_id for w in self.withdrawals)


EMPTY_HISTORY = VictimHistory()
