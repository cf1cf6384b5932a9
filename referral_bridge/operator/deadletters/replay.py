"""Replaying dead letters: republish each (and wait for the broker's confirm), then remove it.

Publishing comes first, so a tool killed in between leaves a message both replayed and still
dead-lettered, never neither; the ledger's duplicate check makes the second replay harmless.
"""

from __future__ import annotations

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
from referral_bridge.transport.consumer import rfc3339_utc
from referral_bridge.transport.errors import PublishError
from referral_bridge.transport.publisher import HeaderValue, Publisher
from referral_bridge.transport.topology import Topology
from referral_bridge.wire import (
    CLOUDEVENTS_JSON,
    FIRST_FAILED_AT_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REPLAY_COUNT_HEADER,
)

# Logged under the package's name, as before the package was split into modules.
log = structlog.get_logger(__package__)


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    """What a replay did: ids replayed (and removed), and those left in place with the reason."""

    selected: tuple[DeadLetterMessage, ...]
    replayed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False


def replay_letters(
    session: DeadLetterSession,
    selection: DeadLetterFilter,
    *,
    publisher: Publisher,
    topology: Topology,
    embedded: bool,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Republish the letters of `session` that `selection` matches, removing each once confirmed.

    See DeadLetterQueue.replay, which opens the session, for what goes out and what stays.
    """
    selected = select_letters(session.letters, selection)
    require_all_found(selection, selected)
    if dry_run:
        return ReplayReport(selected=tuple(selected), dry_run=True)
    replayed: list[str] = []
    failed: list[tuple[str, str]] = []
    for done, letter in enumerate(selected, start=1):
        try:
            republish(publisher, letter, topology=topology, embedded=embedded)
        except PublishError as exc:
            log.warning("dlq.replay_refused", message_id=letter.id, detail=str(exc))
            failed.append((letter.id, str(exc)))
        else:
            session.remove(letter)
            replayed.append(letter.id)
            log.debug(
                "dlq.replayed",
                message_id=letter.id,
                reason=letter.reason,
                routing_key=letter.original_routing_key,
                count=letter.replay_count + 1,
            )
        if on_progress is not None:
            on_progress(done, len(selected))
    log.info("dlq.replay_finished", count=len(replayed), detail=f"{len(failed)} refused")
    return ReplayReport(selected=tuple(selected), replayed=tuple(replayed), failed=tuple(failed))


def republish(
    publisher: Publisher, letter: DeadLetterMessage, *, topology: Topology, embedded: bool
) -> None:
    """Publish `letter` again as it first came, one replay count more; returns once confirmed."""
    headers: dict[str, HeaderValue] = {REPLAY_COUNT_HEADER: letter.replay_count + 1}
    if letter.first_failed_at is not None:
        headers[FIRST_FAILED_AT_HEADER] = rfc3339_utc(letter.first_failed_at)
    if embedded:
        # As Publisher.publish_inbound does: the embedded broker's bindings live in the memory
        # of the worker, so the message goes straight to the work queue with its routing key.
        headers[ORIGINAL_ROUTING_KEY_HEADER] = letter.original_routing_key
        exchange, routing_key, mandatory = "", topology.work_queue, False
    else:
        # An outcome goes back through the outcomes exchange, as its provider sent it.
        exchange = topology.exchange_for(letter.event_type)
        routing_key, mandatory = letter.original_routing_key, True
    publisher.publish(
        exchange=exchange,
        routing_key=routing_key,
        body=letter.body,
        headers=headers,
        message_id=letter.message_id,
        content_type=letter.content_type or CLOUDEVENTS_JSON,
        content_encoding=letter.content_encoding or "utf-8",
        mandatory=mandatory,
    )
