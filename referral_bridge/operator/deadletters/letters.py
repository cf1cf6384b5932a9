"""Dead letters as records: what one holds, which ones an operation applies to, what may be shown.

`DeadLetterMessage.summary()`, `safe_headers()` and `show_document(..., reveal=False)` are the only
views fit to show without `--reveal`; reading.py decides, as a message is read, which of its values
are safe to put in the shown fields.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from referral_bridge.display import safe_text
from referral_bridge.errors import BridgeError
from referral_bridge.operator.masking import mask_body
from referral_bridge.transport.consumer import rfc3339_utc
from referral_bridge.wire import (
    ATTEMPTS_HEADER,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    FIRST_FAILED_AT_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    REPLAY_COUNT_HEADER,
)

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

# The contract's Ref: case and victim ids, which audit records may hold.
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:-]{0,63}")
_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: Called after each message an operation handled: (done, total).
Progress = Callable[[int, int], None]


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
        document = json_or_none(self.body)
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


def show_document(letter: DeadLetterMessage, *, reveal: bool) -> dict[str, Any]:
    """What `dlq show --json` prints: the body masked, or (`reveal`, audited first) as it came."""
    masked = mask_body(letter.body)
    body: dict[str, Any] = {"size": masked.size, "sha256": masked.sha256}
    if reveal:
        body["original_base64"] = base64.b64encode(letter.body).decode("ascii")
        try:
            body["original_text"] = letter.body.decode("utf-8")
        except UnicodeDecodeError:
            body["original_text"] = None
    else:
        body["is_json"] = masked.is_json
        body["masked"] = masked.document
    return {
        **letter.summary(),
        "detail": letter.detail,
        "headers": dict(letter.headers) if reveal else letter.safe_headers(),
        "body": body,
    }


def select_letters(
    letters: Sequence[DeadLetterMessage], selection: DeadLetterFilter
) -> list[DeadLetterMessage]:
    """The letters `selection` matches, in queue order."""
    return [letter for letter in letters if selection.matches(letter)]


def require_all_found(selection: DeadLetterFilter, selected: Sequence[DeadLetterMessage]) -> None:
    """Raise DeadLetterNotFoundError if an id the operator named is not among `selected`."""
    missing = selection.ids - {letter.id for letter in selected}
    if missing:
        raise DeadLetterNotFoundError(missing)


def json_or_none(body: bytes) -> Any:
    """The body parsed as UTF-8 JSON, or None if it is not."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _iso(moment: datetime | None) -> str | None:
    return rfc3339_utc(moment) if moment is not None else None
