"""The dead-letter queue as operators work on it: browse, replay and purge, never losing a message.

Every operation opens a *session* (sessions.py) that takes a snapshot of the queue without removing
anything:

- on RabbitMQ the session `basic.get`s each message (as many as the queue held when it opened)
  without acknowledging it, on a channel of its own. Removing a message is acking it; everything
  else goes back to the queue, in its place, when the channel closes, and so does everything if
  the tool dies: the broker requeues the unacked messages of a closed connection.
- on the embedded broker, where fetching a message deletes its file, the session reads the queue
  folder's files instead of fetching, and removing a message is deleting its file.

Replaying (replay.py) publishes first (and waits for RabbitMQ's confirm) and removes second, so a
tool killed in between leaves a message both replayed and still dead-lettered, never neither; the
ledger's duplicate check makes the second replay harmless. Purging (purge.py) appends its audit
record first, through a hook, so that nothing is removed unaudited. `DeadLetterQueue` (queue.py)
is what callers hold: it opens the session and runs the operation.

Nothing here prints: the CLI (cli/dlq.py) renders what these functions return, and only
`DeadLetterMessage.summary()`, `safe_headers()` and `show_document(..., reveal=False)`
(letters.py) are fit to show without `--reveal`. Anyone who can publish to the broker can set any
header, so nothing read from a dead letter is shown as it came (reading.py): reasons and event
types only if they are the contract's, routing keys only if they are known ones, ids only if they
look like ids, free text escaped and scrubbed (display.safe_text).
"""

from referral_bridge.operator.deadletters.letters import (
    KNOWN_HEADERS,
    DeadLetterError,
    DeadLetterFilter,
    DeadLetterMessage,
    DeadLetterNotFoundError,
    counts_by_reason,
    parse_duration,
)
from referral_bridge.operator.deadletters.purge import PurgeReport
from referral_bridge.operator.deadletters.queue import DeadLetterQueue
from referral_bridge.operator.deadletters.replay import ReplayReport
from referral_bridge.operator.deadletters.sessions import DeadLetterSession

__all__ = [
    "KNOWN_HEADERS",
    "DeadLetterError",
    "DeadLetterFilter",
    "DeadLetterMessage",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DeadLetterSession",
    "PurgeReport",
    "ReplayReport",
    "counts_by_reason",
    "parse_duration",
]
