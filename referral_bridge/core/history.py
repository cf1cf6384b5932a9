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


class IssuedLeaflet(_Value):
    task_id: str
    reason: str
    provider: str
    at: AwareDatetime


class SentWithdrawal(_Value):
    referral_id: str
    provider: str
    at: AwareDatetime


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


class VictimHistory(_Value):
    referrals: tuple[SentReferral, ...] = ()
    leaflets: tuple[IssuedLeaflet, ...] = ()
    withdrawals: tuple[SentWithdrawal, ...] = ()
    hold: Hold | None = None
    consent: ConsentRecord | None = None

    def referred_to(self, provider: str) -> bool:
        return any(r.provider == provider for r in self.referrals)

    def has_leaflet(self, reason: str) -> bool:
        return any(t.reason == reason for t in self.leaflets)

    def withdrawn(self, referral_id: str) -> bool:
        return any(w.referral_id == referral_id for w in self.withdrawals)


EMPTY_HISTORY = VictimHistory()
