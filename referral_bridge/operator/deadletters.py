# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""The dead-letter queue as operators work on it: browse, replay and purge, never losing a message.

Every operation opens a *session* that takes a snapshot of the queue without removing anything:

- on RabbitMQ the session `basic.get`s each message (as many as the queue held when it opened)
  without acknowledging it, on a channel of its own. Removing a message is acking it; everything
  else goes back to the queue, in its place, when the channel closes, and so does everything if
  the tool dies: the broker requeues the unacked messages of a closed connection.
- on the embedded broker, where fetching a message deletes its file, the session reads the queue
  folder's files instead of fetching, and removing a message is deleting its file.

Replaying publishes first (and waits for RabbitMQ's confirm) and removes second, so a tool killed
in between leaves a message both replayed and still dead-lettered, never neither; the ledger's
duplicate check makes the second replay harmless. Purging appends its audit record first, through
a hook, so that nothing is removed unaudited.

Nothing here prints: the CLI (commands/dlq.py) renders what these functions return, and only
`DeadLetterMessage.summary()` and `safe_headers()` are fit to show without `--reveal`. Anyone who
can publish to the broker can set any header, so nothing read from a dead letter is shown as it
came: reasons and event types only if they are the contract's, routing keys only if they are
known ones, ids only if they look like ids, free text escaped and scrubbed (display.safe_text).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.utils.json import loads as kombu_loads

from referral_bridge.core.events import DeadLetterReason, EventType
from referral_bridge.display import safe_text
from referral_bridge.errors import BridgeError
from referral_bridge.transport.consumer import rfc3339_utc
from referral_bridge.transport.embedded import BrokerSpec
from referral_bridge.transport.errors import (
    BrokerUnavailableError,
    PublishError,
    QueueNotFoundError,
)
from referral_bridge.transport.publisher import HeaderValue, Publisher
from referral_bridge.transport.topology import Topology
from referral_bridge.wire import (
    ATTEMPTS_HEADER,
    CLOUDEVENTS_JSON,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    FIRST_FAILED_AT_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    REPLAY_COUNT_HEADER,
)

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

log = structlog.get_logger(__name__)

#: Headers the bridge itself writes; their values hold no personal data, so they may be shown.
KNOWN_HEADERS = (
    REASON_HEADER,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    ATTEMPTS_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REPLAY_COUNT_HEADER,
    FIRST_FAILED_AT_HEADER,
)
NOT_SHOWN = "[not shown]"

# A message id is used as the dead letter's id only if it looks like an id, not free text: a UUID,
# or a code without a long run of digits (a phone number) or anything else the scrubber masks.
_SAFE_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGIT_RUN = re.compile(r"\d{7,}")
#: Reason codes and event types are shown only if they are the contract's own.
_REASONS = frozenset(reason.value for reason in DeadLetterReason)
_EVENT_TYPES = frozenset(event_type.value for event_type in EventType)
#: Detail headers are at most this long (the dead-letter header schema's maxLength).
_MAX_DETAIL = 2000
# The contract's Ref: case and victim ids, which audit records may hold.
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:-]{0,63}")
_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class DeadLetterError(BridgeError):
    """Raised when a dead-letter operation cannot be carried out as asked; nothing was changed."""


class DeadLetterNotFoundError(DeadLetterError):
    """Raised when an id given by the operator matches no dead letter; check `dlq list`."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = tuple(sorted(missing))
        super().__init__(
            f"no dead letter with id {', '.join(self.missing)}; nothing was done. "
            "Run `referral-bridge dlq list` for the current ids"
        )


@dataclass(frozen=True, kw_only=True)
class DeadLetterMessage:
    """One dead letter as read from the queue; `body` and unknown headers may be personal."""

    #: The message id if it looks like one, else a hash of the failure time and the body.
    id: str
    #: Its place in the session's snapshot; sessions use it to find the message again.
    position: int
    body: bytes = field(repr=False)
    headers: Mapping[str, Any] = field(repr=False)
    message_id: str | None = field(repr=False)
    content_type: str | None
    content_encoding: str | None
    reason: str
    detail: str
    failed_at: datetime | None
    first_failed_at: datetime | None
    attempts: int | None
    #: The routing key as received (replay publishes with it); may be anything a producer chose.
    original_routing_key: str = field(repr=False)
    #: The routing key as shown: itself if it is a known one (an event type, a provider id),
    #: else NOT_SHOWN.
    shown_routing_key: str
    replay_count: int
    #: The body's CloudEvents `type`, when it is JSON and the type is one of the contract's.
    event_type: str | None

    @property
    def size(self) -> int:
        return len(self.body)

    def summary(self) -> dict[str, Any]:
        """What `dlq list` shows: ids, codes, times and counts, nothing from the body's values."""
        return {
            "id": self.id,
            "reason": self.reason,
            "event_type": self.event_type,
            "original_routing_key": self.shown_routing_key,
            "first_failed_at": _iso(self.first_failed_at),
            "failed_at": _iso(self.failed_at),
            "attempts": self.attempts,
            "replay_count": self.replay_count,
            "size": self.size,
        }

    def safe_headers(self) -> dict[str, Any]:
        """Headers with the values of any the bridge did not write replaced by NOT_SHOWN."""
        known: dict[str, Any] = {
            REASON_HEADER: self.reason,
            DETAIL_HEADER: self.detail,
            ORIGINAL_ROUTING_KEY_HEADER: self.shown_routing_key,
            FAILED_AT_HEADER: _iso(self.failed_at) or NOT_SHOWN,
            FIRST_FAILED_AT_HEADER: _iso(self.first_failed_at) or NOT_SHOWN,
        }
        shown: dict[str, Any] = {}
        for name, value in self.headers.items():
            # Names are input too: one that is not the bridge's is shown escaped, its value not.
            if name in known:
                shown[name] = known[name]
            elif name in KNOWN_HEADERS and type(value) is int:
                shown[name] = value
            else:
                shown[safe_text(name, limit=100)] = NOT_SHOWN
        return shown

    def refs(self) -> tuple[str | None, tuple[str, ...]]:
        """The case ref and victim ids the body names, if it is JSON and they look like ids.

        For audit records: an operator who reveals a body learns about these victims.
        """
        document = _json_or_none(self.body)
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            return None, ()
        case_ref = next(
            (
                value
                for key in ("crime_ref", "incident_ref", "case_ref")
                if isinstance(value := data.get(key), str) and _REF.fullmatch(value)
            ),
            None,
        )
        candidates: list[Any] = [data.get("victim_id")]
        victims = data.get("victims")
        if isinstance(victims, list):
            candidates += [v.get("victim_id") for v in victims if isinstance(v, dict)]
        victim_ids = tuple(
            dict.fromkeys(v for v in candidates if isinstance(v, str) and _REF.fullmatch(v))
        )
        return case_ref, victim_ids


@dataclass(frozen=True, kw_only=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; unset criteria match everything."""

    ids: frozenset[str] = frozenset()
    reason: str | None = None
    event_type: str | None = None
    #: Dead-lettered (x-rb-failed-at) at or after this moment.
    failed_since: datetime | None = None
    #: Dead-lettered before this moment.
    failed_before: datetime | None = None

    def matches(self, letter: DeadLetterMessage) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.failed_since is not None or self.failed_before is not None:
            if letter.failed_at is None:
                return False  # an unreadable time matches no time window
            if self.failed_since is not None and letter.failed_at < self.failed_since:
                return False
            if self.failed_before is not None and letter.failed_at >= self.failed_before:
                return False
        return True


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    """What a replay did: ids replayed (and removed), and those left in place with the reason."""

    selected: tuple[DeadLetterMessage, ...]
    replayed: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class PurgeReport:
    """What a purge did: ids removed, and ids another tool removed first (audited all the same)."""

    selected: tuple[DeadLetterMessage, ...]
    purged: tuple[str, ...] = ()
    already_gone: tuple[str, ...] = ()
    dry_run: bool = False


class DeadLetterSession(Protocol):
    """A snapshot of the dead-letter queue; messages leave it only through `remove`."""

    letters: Sequence[DeadLetterMessage]

    def remove(self, letter: DeadLetterMessage) -> bool:
        """Take `letter` off the queue for good; False if something else already had."""

    def close(self) -> None:
        """Leave every message not removed on the queue."""


Progress = Callable[[int, int], None]


class DeadLetterQueue:
    """The dead-letter queue of one broker and topology."""

    def __init__(
        self, spec: BrokerSpec, topology: Topology, *, provider_ids: Iterable[str] = ()
    ) -> None:
        self._spec = spec
        self._topology = topology
        #: Routing keys fit to show: the contract's event types, and the providers' ids (the
        #: routing keys of their outcomes).
        self._shown_routing_keys = _EVENT_TYPES | frozenset(provider_ids)

    @contextlib.contextmanager
    def session(self) -> Iterator[DeadLetterSession]:
        """A snapshot of the queue; whatever is not removed stays, even if the caller dies."""
        name = self._topology.dead_letter_queue
        session: DeadLetterSession = (
            _EmbeddedSession(self._spec, name, self._shown_routing_keys)
            if self._spec.embedded
            else _AmqpSession(self._spec, name, self._shown_routing_keys)
        )
        try:
            yield session
        finally:
            session.close()

    def browse(self, selection: DeadLetterFilter | None = None) -> list[DeadLetterMessage]:
        """The dead letters that match, in queue order; the queue is left as it was."""
        with self.session() as session:
            return _select(session.letters, selection or DeadLetterFilter())

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
            selected = _select(session.letters, selection)
            _require_all_found(selection, selected)
            if dry_run:
                return ReplayReport(selected=tuple(selected), dry_run=True)
            replayed: list[str] = []
            failed: list[tuple[str, str]] = []
            for done, letter in enumerate(selected, start=1):
                try:
                    self._republish(publisher, letter)
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
            return ReplayReport(
                selected=tuple(selected), replayed=tuple(replayed), failed=tuple(failed)
            )

    def purge(
        self,
        selection: DeadLetterFilter,
        *,
        before_remove: Callable[[DeadLetterMessage], None],
        on_remove_failed: Callable[[DeadLetterMessage], None] | None = None,
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
            selected = _select(session.letters, selection)
            _require_all_found(selection, selected)
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
                        self._record_failed_removal(on_remove_failed, letter)
                    raise
                if removed:
                    purged.append(letter.id)
                    log.info("dlq.purged", message_id=letter.id, reason=letter.reason)
                else:
                    gone.append(letter.id)
                if on_progress is not None:
                    on_progress(done, len(selected))
            return PurgeReport(
                selected=tuple(selected), purged=tuple(purged), already_gone=tuple(gone)
            )

    @staticmethod
    def _record_failed_removal(
        record: Callable[[DeadLetterMessage], None], letter: DeadLetterMessage
    ) -> None:
        try:
            record(letter)
        except Exception as exc:
            # The removal's own error is what the operator must see; this one is logged, and the
            # trail then holds a purge record for a message still queued (`dlq list` shows it).
            log.error(
                "dlq.purge_failure_not_audited",
                message_id=letter.id,
                error_type=type(exc).__name__,
            )

    def _republish(self, publisher: Publisher, letter: DeadLetterMessage) -> None:
        headers: dict[str, HeaderValue] = {REPLAY_COUNT_HEADER: letter.replay_count + 1}
        if letter.first_failed_at is not None:
            headers[FIRST_FAILED_AT_HEADER] = rfc3339_utc(letter.first_failed_at)
        content_type = letter.content_type or CLOUDEVENTS_JSON
        content_encoding = letter.content_encoding or "utf-8"
        if self._spec.embedded:
            # As Publisher.publish_inbound does: the embedded broker's bindings live in the memory
            # of the worker, so the message goes straight to the work queue with its routing key.
            headers[ORIGINAL_ROUTING_KEY_HEADER] = letter.original_routing_key
            publisher.publish(
                exchange="",
                routing_key=self._topology.work_queue,
                body=letter.body,
                headers=headers,
                message_id=letter.message_id,
                content_type=content_type,
                content_encoding=content_encoding,
            )
            return
        publisher.publish(
            # An outcome goes back through the outcomes exchange, as its provider sent it.
            exchange=self._topology.exchange_for(letter.event_type),
            routing_key=letter.original_routing_key,
            body=letter.body,
            headers=headers,
            message_id=letter.message_id,
            content_type=content_type,
            content_encoding=content_encoding,
            mandatory=True,
        )


def counts_by_reason(letters: Iterable[DeadLetterMessage]) -> dict[str, int]:
    """Dead letters per reason code, most frequent first."""
    return dict(Counter(letter.reason for letter in letters).most_common())


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s` or `2w` as a timedelta; raises ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; use a whole number and a unit, e.g. 30d, 12h, 90m"
        )
    amount, unit = match.groups()
    return timedelta(**{_DURATION_UNITS[unit]: int(amount)})


# --- sessions --------------------------------------------------------------------------------


class _AmqpSession:
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
                letters.append(_letter(message, position, shown_routing_keys))
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


class _EmbeddedSession:
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
                letters.append(_letter(message, position, shown_routing_keys))
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


# --- reading a message -----------------------------------------------------------------------


def _letter(
    message: Message, position: int, shown_routing_keys: frozenset[str]
) -> DeadLetterMessage:
    body = message.body
    raw = body if isinstance(body, bytes) else str(body).encode(message.content_encoding or "utf-8")
    headers = dict(message.headers or {})
    failed_at_text = str(headers.get(FAILED_AT_HEADER, ""))
    failed_at = _parse_time(failed_at_text)
    first_failed_at = _parse_time(str(headers.get(FIRST_FAILED_AT_HEADER, ""))) or failed_at
    message_id = (message.properties or {}).get("message_id")
    if isinstance(message_id, str) and _looks_like_an_id(message_id):
        letter_id = message_id
    else:
        digest = hashlib.sha256(failed_at_text.encode() + b"\x00" + raw).hexdigest()
        letter_id = digest[:16]
    reason = headers.get(REASON_HEADER)
    routing_key = str(headers.get(ORIGINAL_ROUTING_KEY_HEADER) or "")
    return DeadLetterMessage(
        id=letter_id,
        position=position,
        body=raw,
        headers=headers,
        message_id=message_id if isinstance(message_id, str) else None,
        content_type=message.content_type or None,
        content_encoding=message.content_encoding or None,
        reason=reason if isinstance(reason, str) and reason in _REASONS else "unknown",
        detail=safe_text(headers.get(DETAIL_HEADER, ""), limit=_MAX_DETAIL),
        failed_at=failed_at,
        first_failed_at=first_failed_at,
        attempts=_int_or_none(headers.get(ATTEMPTS_HEADER)),
        original_routing_key=routing_key,
        shown_routing_key=(
            routing_key if routing_key in shown_routing_keys or not routing_key else NOT_SHOWN
        ),
        replay_count=_int_or_none(headers.get(REPLAY_COUNT_HEADER)) or 0,
        event_type=_event_type(raw),
    )


def _looks_like_an_id(text: str) -> bool:
    if _UUID.fullmatch(text):
        return True
    return bool(
        _SAFE_MESSAGE_ID.fullmatch(text)
        and not _DIGIT_RUN.search(text)
        and safe_text(text, limit=len(text)) == text
    )


def _event_type(body: bytes) -> str | None:
    document = _json_or_none(body)
    if not isinstance(document, dict):
        return None
    value = document.get("type")
    return value if isinstance(value, str) and value in _EVENT_TYPES else None


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not '²'
        return int(value)
    return None


def _iso(moment: datetime | None) -> str | None:
    return rfc3339_utc(moment) if moment is not None else None


def _select(
    letters: Sequence[DeadLetterMessage], selection: DeadLetterFilter
) -> list[DeadLetterMessage]:
    return [letter for letter in letters if selection.matches(letter)]


def _require_all_found(selection: DeadLetterFilter, selected: Sequence[DeadLetterMessage]) -> None:
    missing = selection.ids - {letter.id for letter in selected}
    if missing:
        raise DeadLetterNotFoundError(missing)
