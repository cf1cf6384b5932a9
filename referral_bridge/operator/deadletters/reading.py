"""Reading a dead letter off the broker: a kombu message becomes a DeadLetterMessage.

Anyone who can publish to the broker can set any header, so this is where each value is judged as
it is read: reasons and event types are kept only if they are the contract's, the routing key is
shown only if it is a known one, the message id is the letter's id only if it looks like an id, and
the detail is escaped and scrubbed.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from kombu.message import Message

from referral_bridge.core.events import DeadLetterReason, EventType
from referral_bridge.display import safe_text
from referral_bridge.operator.deadletters.letters import NOT_SHOWN, DeadLetterMessage, json_or_none
from referral_bridge.wire import (
    ATTEMPTS_HEADER,
    DETAIL_HEADER,
    FAILED_AT_HEADER,
    FIRST_FAILED_AT_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    REPLAY_COUNT_HEADER,
)

#: The contract's event types: a body's type is shown only if it is one, and so is a routing key
#: (an inbound event's routing key is its type).
EVENT_TYPES = frozenset(event_type.value for event_type in EventType)

# A message id is used as the dead letter's id only if it looks like an id, not free text: a UUID,
# or a code without a long run of digits (a phone number) or anything else the scrubber masks.
_SAFE_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIGIT_RUN = re.compile(r"\d{7,}")
#: Reason codes are shown only if they are the contract's own.
_REASONS = frozenset(reason.value for reason in DeadLetterReason)
#: Detail headers are at most this long (the dead-letter header schema's maxLength).
_MAX_DETAIL = 2000


def letter_from_message(
    message: Message, position: int, shown_routing_keys: frozenset[str]
) -> DeadLetterMessage:
    """The dead letter `message` holds, at `position` in its session's snapshot."""
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
    document = json_or_none(body)
    if not isinstance(document, dict):
        return None
    value = document.get("type")
    return value if isinstance(value, str) and value in EVENT_TYPES else None


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
