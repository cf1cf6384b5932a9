"""Purging dead letters: remove each for good, its audit record written first.

The record comes first so that nothing is ever removed unaudited; a removal that then fails is
recorded too, so the trail does not claim a purge that did not happen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from referral_bridge.operator.deadletters.letters import (
    DeadLetterFilter,
    DeadLetterMessage,
    Progress,
    require_all_found,
    select_letters,
)
from referral_bridge.operator.deadletters.sessions import DeadLetterSession

# Logged under the package's name, as before the package was split into modules.
log = structlog.get_logger(__package__)


@dataclass(frozen=True, kw_only=True)
class PurgeReport:
    """What a purge did: ids removed, and ids another tool removed first (audited all the same)."""

    selected: tuple[DeadLetterMessage, ...]
    purged: tuple[str, ...] = ()
    already_gone: tuple[str, ...] = ()
    dry_run: bool = False


def purge_letters(
    session: DeadLetterSession,
    selection: DeadLetterFilter,
    *,
    before_remove: Callable[[DeadLetterMessage], object],
    on_remove_failed: Callable[[DeadLetterMessage], object] | None = None,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> PurgeReport:
    """Remove the letters of `session` that `selection` matches, each audited first.

    See DeadLetterQueue.purge, which opens the session, for what the hooks must do.
    """
    selected = select_letters(session.letters, selection)
    require_all_found(selection, selected)
    if dry_run:
        return PurgeReport(selected=tuple(selected), dry_run=True)
    purged: list[str] = []
    gone: list[str] = []
    for done, letter in enumerate(selected, start=1):
        before_remove(letter)
        try:
            removed = session.remove(letter)
        except Exception:
            if on_remove_failed is not None:
                _record_failed_removal(on_remove_failed, letter)
            raise
        if removed:
            purged.append(letter.id)
            log.info("dlq.purged", message_id=letter.id, reason=letter.reason)
        else:
            gone.append(letter.id)
        if on_progress is not None:
            on_progress(done, len(selected))
    return PurgeReport(selected=tuple(selected), purged=tuple(purged), already_gone=tuple(gone))


def _record_failed_removal(
    record: Callable[[DeadLetterMessage], object], letter: DeadLetterMessage
) -> None:
    try:
        record(letter)
    except Exception as exc:  # noqa: BLE001 (the removal's error is the one to show)
        # The removal's own error is what the operator must see; this one is logged, and the
        # trail then holds a purge record for a message still queued (`dlq list` shows it).
        log.error(
            "dlq.purge_failure_not_audited",
            message_id=letter.id,
            error_type=type(exc).__name__,
        )
