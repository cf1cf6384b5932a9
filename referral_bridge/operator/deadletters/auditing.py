"""The audit records of what operators do to dead letters: reveal one, purge one, fail to.

Built here, next to the letters they describe, and appended by the caller through
`OperatorSession.record`, which commits them before the command goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from referral_bridge.operator.audit import (
    DEAD_LETTER_PURGE_FAILED,
    DEAD_LETTER_PURGED,
    DEAD_LETTER_REVEALED,
    OperatorAction,
)
from referral_bridge.operator.deadletters.letters import DeadLetterMessage


def reveal_actions(letters: Sequence[DeadLetterMessage], why: str) -> list[OperatorAction]:
    """What showing `letters` unmasked discloses: one record per victim each body names."""
    revealed: list[OperatorAction] = []
    for letter in letters:
        case_ref, victim_ids = letter.refs()
        # One record per victim the body names, so that `audit --victim` finds the disclosure.
        for victim_id in victim_ids or (None,):
            revealed.append(
                OperatorAction(
                    action=DEAD_LETTER_REVEALED,
                    message_id=letter.id,
                    case_ref=case_ref,
                    victim_id=victim_id,
                    detail=why,
                )
            )
    return revealed


def purge_action(letter: DeadLetterMessage) -> OperatorAction:
    """The record written just before `letter` is removed for good."""
    return _purge_record(letter, DEAD_LETTER_PURGED, f"reason code {letter.reason}")


def purge_failed_action(letter: DeadLetterMessage) -> OperatorAction:
    """The record saying the removal of `letter`, already recorded as purged, failed."""
    return _purge_record(
        letter, DEAD_LETTER_PURGE_FAILED, "removal failed; the dead letter is still queued"
    )


def _purge_record(letter: DeadLetterMessage, action: str, detail: str) -> OperatorAction:
    case_ref, _ = letter.refs()
    return OperatorAction(action=action, message_id=letter.id, case_ref=case_ref, detail=detail)
