# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""Sessions: a snapshot of the dead-letter queue, read without taking anything off it.

One adapter per broker. On RabbitMQ the session holds each message unacked on a channel of its
own, so that whatever it does not remove goes back when the channel closes; on the embedded broker,
where fetching a message deletes its file, it reads the queue folder's files instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import structlog
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.utils.json import loads as kombu_loads

from referral_bridge.operator.deadletters.letters import DeadLetterMessage
from referral_bridge.operator.deadletters.reading import letter_from_message
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import BrokerUnavailableError, QueueNotFoundError

# Logged under the package's name, as before the package was split into modules.
log = structlog.get_logger(__package__)


class DeadLetterSession(Protocol):
    """A snapshot of the dead-letter queue; messages leave it only through `remove`."""

    letters: Sequence[DeadLetterMessage]

    def remove(self, letter: DeadLetterMessage) -> bool:
        """Take `letter` off the queue for good; False if something else already had."""

    def close(self) -> None:
        """Leave every message not removed on the queue."""


def open_session(
    spec: BrokerSpec, queue_name: str, shown_routing_keys: frozenset[str]
) -> DeadLetterSession:
    """A session on `queue_name` of the broker `spec` names, by the adapter that broker needs."""
    if spec.embedded:
        return EmbeddedSession(spec, queue_name, shown_routing_keys)
    return AmqpSession(spec, queue_name, shown_routing_keys)


class AmqpSession:
    """Holds every message of the snapshot unacked on its own channel (see module docstring).

    RabbitMQ gives unacked messages back when the channel or connection closes, including when
    this process is killed. Its consumer timeout (30 minutes by default) bounds how long a session
    may hold them: a replay of many thousands of messages should be done in batches.
    """

    def __init__(
        self, spec: BrokerSpec, queue_name: str, shown_routing_keys: frozenset[str]
    ) -> None:
        self._spec = spec
        self._connection: Connection = spec.connection()
        self._messages: dict[int, Message] = {}
        try:
            self._connection.ensure_connection(max_retries=0)
            channel = self._connection.channel()
            try:
                declared = channel.queue_declare(queue=queue_name, passive=True)
            except self._connection.channel_errors as exc:
                raise QueueNotFoundError(
                    f"dead-letter queue {queue_name!r} does not exist on {spec.display_url}; "
                    "start the bridge once to declare it, or check [broker.topology]"
                ) from exc
            # py-amqp would otherwise turn bodies that have a content_encoding into str.
            channel.auto_decode = False
            queue = Queue(queue_name, no_declare=True)(channel)
            letters: list[DeadLetterMessage] = []
            # Only what the queue held when we looked: dead letters arriving meanwhile (perhaps
            # from our own replays) are left for the next session.
            for position in range(int(declared.message_count)):
                message = queue.get(no_ack=False)
                if message is None:
                    break
                self._messages[position] = message
                letters.append(letter_from_message(message, position, shown_routing_keys))
            self._channel = channel
            self.letters: Sequence[DeadLetterMessage] = letters
        except (OperationalError, *self._connection.connection_errors) as exc:
            self._connection.collect()
            raise BrokerUnavailableError(
                f"cannot read the dead-letter queue on {spec.display_url} ({type(exc).__name__}); "
                "check that the broker is running and reachable. No dead letter was changed"
            ) from exc
        except BaseException:
            self._release()
            raise

    def remove(self, letter: DeadLetterMessage) -> bool:
        message = self._messages.pop(letter.position, None)
        if message is None:
            return False
        try:
            message.ack()
        except (
            OperationalError,
            *self._connection.connection_errors,
            # e.g. RabbitMQ's consumer timeout closed the channel under a long session.
            *self._connection.channel_errors,
        ) as exc:
            raise BrokerUnavailableError(
                f"lost the broker or the channel at {self._spec.display_url} while removing a "
                "dead letter; it is back on the dead-letter queue (if it was replayed too, "
                "replaying it again is harmless). Run the command again"
            ) from exc
        return True

    def close(self) -> None:
        # Closing the channel puts every message not acked back on the queue, in its place.
        self._release()

    def _release(self) -> None:
        try:
            self._connection.release()
        except self._connection.connection_errors:
            self._connection.collect()


class EmbeddedSession:
    """Reads the queue folder's message files without fetching (fetching would delete them).

    Couples to kombu's filesystem transport: one file per message named
    `<time>_<uuid>.<queue>.msg`, holding kombu's JSON payload, which kombu's own Message decodes.
    A test pins this against the Publisher's own dead letters.
    """

    def __init__(
        self, spec: BrokerSpec, queue_name: str, shown_routing_keys: frozenset[str]
    ) -> None:
        folder = Path(str(spec.transport_options["data_folder_in"]))
        self._connection: Connection = spec.connection()
        self._paths: dict[int, Path] = {}
        try:
            channel = self._connection.channel()
            letters: list[DeadLetterMessage] = []
            suffix = f"{queue_name}.msg"
            names = sorted(n for n in os.listdir(folder) if n.partition(".")[2] == suffix)
            for name in names:
                path = folder / name
                try:
                    payload = kombu_loads(path.read_bytes())
                    message = channel.Message(payload, channel=channel)
                except FileNotFoundError:
                    continue  # removed since we listed the folder
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "dlq.unreadable_file", path=str(path), error_type=type(exc).__name__
                    )
                    continue
                position = len(letters)
                self._paths[position] = path
                letters.append(letter_from_message(message, position, shown_routing_keys))
            self.letters: Sequence[DeadLetterMessage] = letters
        finally:
            self._connection.release()

    def remove(self, letter: DeadLetterMessage) -> bool:
        path = self._paths.pop(letter.position, None)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        """Nothing to give back: reading the files took nothing off the queue."""
