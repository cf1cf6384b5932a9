"""What carrying out decisions adds to the victims' history, as the ledger records it.

Pure: `rules explain --after` replays earlier events with it, and the property tests use it to
follow a victim through any sequence of snapshots and consent changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from referral_bridge.core import ids
from referral_bridge.core.decisions import Decision, Outcome
from referral_bridge.core.history import (
    EMPTY_HISTORY,
    Hold,
    IssuedLeaflet,
    SentReferral,
    SentUpdate,
    SentWithdrawal,
    VictimHistory,
)


def carry_out(
    history: Mapping[str, VictimHistory], decisions: Iterable[Decision], now: datetime
) -> dict[str, VictimHistory]:
    """The history after `decisions` were carried out at `now`."""
    after = dict(history)
    for d in decisions:
        after[d.victim_id] = _apply(after.get(d.victim_id, EMPTY_HISTORY), d, now)
    return after


def _apply(past: VictimHistory, d: Decision, now: datetime) -> VictimHistory:
    changes: dict[str, object] = {}
    if d.outcome is Outcome.REFER and d.referral_id and d.provider and d.service:
        sent = SentReferral(
            referral_id=d.referral_id,
            provider=d.provider,
            service=d.service,
            case_ref=d.case_ref,
            at=now,
            generation=d.generation or 1,
            deadline=d.deadline,
            fingerprint=d.fingerprint,
        )
        changes["referrals"] = (*past.referrals, sent)
    elif d.outcome is Outcome.UPDATE and d.referral_id and d.revision and d.service:
        update = SentUpdate(
            update_id=ids.update_id(d.referral_id, d.revision),
            referral_id=d.referral_id,
            revision=d.revision,
            service=d.service,
            fingerprint=d.fingerprint,
            at=now,
            case_ref=d.case_ref,
        )
        changes["updates"] = (*past.updates, update)
    elif d.outcome is Outcome.WITHDRAW and d.referral_id and d.provider:
        withdrawal = SentWithdrawal(
            referral_id=d.referral_id, provider=d.provider, at=now, reason=d.reason
        )
        changes["withdrawals"] = (*past.withdrawals, withdrawal)
    elif d.outcome is Outcome.LEAFLET and d.task_id and d.provider:
        leaflet = IssuedLeaflet(task_id=d.task_id, reason=d.reason, provider=d.provider, at=now)
        changes["leaflets"] = (*past.leaflets, leaflet)
    elif d.outcome is Outcome.HOLD and d.hold_until:
        changes["hold"] = Hold(until=d.hold_until)
    if d.ends_hold and past.hold is not None:
        changes["hold"] = past.hold.model_copy(update={"open": False})
    return past.model_copy(update=changes)
