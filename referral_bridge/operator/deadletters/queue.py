"""The dead-letter queue of one broker and topology: what the operator commands hold.

Each operation opens a session (sessions.py), runs on its snapshot (browsing here, replay.py,
purge.py) and closes it, which leaves every message not removed on the queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from referral_bridge.operator.deadletters.letters import (
    DeadLetterFilter,
    DeadLetterMessage,
    Progress,
    select_letters,
)
from referral_bridge.operator.deadletters.purge import PurgeReport, purge_letters
from referral_bridge.operator.deadletters.reading import EVENT_TYPES
from referral_bridge.operator.deadletters.replay import ReplayReport, replay_letters
from referral_bridge.operator.deadletters.sessions import DeadLetterSession, open_session
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.publisher import Publisher
from referral_bridge.transport.topology import Topology


class DeadLetterQueue:
    """The dead-letter queue of one broker and topology."""

    def __init__(
        self, spec: BrokerSpec, topology: Topology, *, provider_ids: Iterable[str] = ()
    ) -> None:
        self._spec = spec
        self._topology = topology
        #: Routing keys fit to show: the contract's event types, and the providers' ids (the
        #: routing keys of their outcomes).
        self._shown_routing_keys = EVENT_TYPES | frozenset(provider_ids)

    @contextlib.contextmanager
    def session(self) -> Iterator[DeadLetterSession]:
        """A snapshot of the queue; whatever is not removed stays, even if the caller dies."""
        session = open_session(
            self._spec, self._topology.dead_letter_queue, self._shown_routing_keys
        )
        try:
            yield session
        finally:
            session.close()

    def browse(self, selection: DeadLetterFilter | None = None) -> list[DeadLetterMessage]:
        """The dead letters that match, in queue order; the queue is left as it was."""
        with self.session() as session:
            return select_letters(session.letters, selection or DeadLetterFilter())

    def replay(
        self,
        selection: DeadLetterFilter,
        *,
        publisher: Publisher,
        dry_run: bool = False,
        on_progress: Progress | None = None,
    ) -> ReplayReport:
        """Republish the matching dead letters to the inbound exchange, then remove them.

        Each goes out with its original routing key, body, message id and content type, plus
        `x-rb-replay-count` (one more than it carried) and `x-rb-first-failed-at`. A message is
        removed only after the publish returned, i.e. after RabbitMQ confirmed it. A message the
        broker refuses (e.g. no queue is bound to its routing key) stays and is reported; a lost
        broker stops the replay with BrokerUnavailableError, leaving the rest in place.
        Raises DeadLetterNotFoundError, before doing anything, if an id in `selection` is unknown.
        """
        with self.session() as session:
            return replay_letters(
                session,
                selection,
                publisher=publisher,
                topology=self._topology,
                embedded=self._spec.embedded,
                dry_run=dry_run,
                on_progress=on_progress,
            )

    def purge(
        self,
        selection: DeadLetterFilter,
        *,
        before_remove: Callable[[DeadLetterMessage], object],
        on_remove_failed: Callable[[DeadLetterMessage], object] | None = None,
        dry_run: bool = False,
        on_progress: Progress | None = None,
    ) -> PurgeReport:
        """Remove the matching dead letters for good, calling `before_remove` first for each.

        `before_remove` writes the audit record; if it raises, that message and the rest stay.
        The record comes first so that nothing is ever removed unaudited; if the removal then
        fails (the broker went away: the message stays queued), `on_remove_failed` records that,
        so the trail does not claim a purge that did not happen, and the error propagates.
        Raises DeadLetterNotFoundError, before doing anything, if an id in `selection` is unknown.
        """
        with self.session() as session:
            return purge_letters(
                session,
                selection,
                before_remove=before_remove,
                on_remove_failed=on_remove_failed,
                dry_run=dry_run,
                on_progress=on_progress,
            )
