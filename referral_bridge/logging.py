"""Structured logging set-up, and the redaction that keeps victims' personal data out of logs.

Redaction is by allow-list: a log event keeps the value of a key only if the key is in
`ALLOWED_KEYS`; any other value becomes "[redacted]", so a new key leaks nothing until someone
decides it is safe. Allowed string values are still scrubbed of things that look like e-mail
addresses, UK phone numbers, UK postcodes and dates, as a second line of defence. Exceptions are
reduced to their type name and a scrubbed message: tracebacks (and their locals) never reach
the output, and a pydantic `ValidationError`, whose text quotes its input, is replaced by its
location-only translation.

Standard-library records (kombu, amqp) pass through the same processors. Their message template
is kept, but only numbers and exceptions are interpolated into it: kombu, for one, puts raw
message bodies into its log arguments.
"""

from __future__ import annotations

import enum
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import IO, Any
from uuid import UUID

import structlog
from pydantic import ValidationError

from referral_bridge.core.parsing import translate_validation_error

__all__ = [
    "ALLOWED_KEYS",
    "REDACTED",
    "configure_logging",
    "describe_exception",
    "redact",
    "render_exception",
    "scrub",
]

REDACTED = "[redacted]"

#: Keys whose values may be logged. Identifiers (case, victim, record, referral, task ids) are
#: pseudonymous references that operators need to trace a case; names, dates of birth and
#: contact details never have a key here. tests/unit/test_log_keys.py checks that every keyword the
#: package passes to a logger is listed (or it would be logged as "[redacted]").
ALLOWED_KEYS: frozenset[str] = frozenset(
    {
        # Added by the processors themselves.
        "event",
        "level",
        "timestamp",
        "logger",
        "error_type",
        "error",
        # Messages and cases.
        "event_id",
        "event_type",
        "source",
        "schemaversion",
        "case_ref",
        "case_kind",
        "victim_id",
        "record_ref",
        "incident_ref",
        "version",
        "referral_id",
        "task_id",
        "message_id",
        "outbox_id",
        # Decisions.
        "outcome",
        "reason",
        "rule",
        "regime",
        "provider",
        "service",
        "deadline",
        "due_by",
        # Tasks and crime reviews: enum values, a flag and a derived id.
        "task_kind",
        "result",
        "late",
        "resolution",
        "escalation_id",
        # Transport and delivery.
        "transport",
        "queue",
        "exchange",
        "routing_key",
        "delivery_tag",
        "redelivered",
        "size",
        "count",
        "delivered",
        "attempts",
        "retry_in_s",
        "retry_at",
        "attempts_in_place",
        "attempt_s",
        "budget_s",
        "duration_ms",
        "status",
        "status_code",
        "url_host",
        # Keys and files.
        "kid",
        "path",
        # The provider's web inbox: a staff account's name (never a victim's; a name no account
        # has is logged as "(unknown)": it may be a password typed in the wrong box).
        "username",
        # Process.
        "pid",
        "worker",
        "step",
        "command",
        "exit_code",
        "detail",
        "dry_run",
    }
)

# Written by the processors, never by callers, and an ISO timestamp would otherwise lose its
# date part to the date pattern.
_NOT_SCRUBBED = frozenset({"timestamp", "level", "logger"})
# Added by structlog's ProcessorFormatter and removed by it before rendering.
_PROCESSOR_META = frozenset({"_record", "_from_structlog"})
_MAX_MESSAGE_CHARS = 500
_MAX_NESTING = 3
_NOISY_LIBRARIES = ("kombu", "amqp")
_HANDLER_NAME = "referral-bridge"

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
# A bare date; a date followed by a time of day is a timestamp, not a date of birth.
_DATE = (
    r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![T ]\d{2}:)|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})(?!\d)"
)
# 0 or +44/0044 (optionally "(0)"), then 9-10 digits with spaces, dashes or ")" between them.
_UK_PHONE = (
    r"(?<![\w+.])(?:(?:\+|00)44[\s-]?(?:\(0\)[\s-]?)?|\(?0)\d(?:[\s-]?\)?[\s-]?\d){8,9}(?!\w)"
)
# The inward code's letters never include C, I, K, M, O or V, which spares "A256KW" and friends.
_UK_POSTCODE = r"(?<![\w+])[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}(?!\w)"
_SCRUB_PATTERNS = tuple(
    re.compile(pattern, re.IGNORECASE) for pattern in (_EMAIL, _DATE, _UK_PHONE, _UK_POSTCODE)
)


def scrub(text: str) -> str:
    """Replace anything in `text` that looks like an e-mail, UK phone, UK postcode or date."""
    for pattern in _SCRUB_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def describe_exception(exc: BaseException) -> str:
    """Say what went wrong without tracebacks, locals or a ValidationError's quoted input."""
    if isinstance(exc, ValidationError):
        return translate_validation_error(exc, prefix="")
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 (a broken __str__ must not break logging)
        return "(message unavailable)"
    return scrub(message[:_MAX_MESSAGE_CHARS])


def redact(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: keep allow-listed keys (scrubbed), redact every other value."""
    redacted: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key in _PROCESSOR_META:
            redacted[key] = value
        elif key in ALLOWED_KEYS:
            redacted[key] = _safe_value(key, value, 0)
        else:
            redacted[key] = REDACTED
    return redacted


def render_exception(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: turn `exc_info` into `error_type` and a safe `error` message."""
    exc = _resolve_exception(event_dict.pop("exc_info", None))
    # A stack is as revealing as a traceback: frames show the values passed around.
    event_dict.pop("stack_info", None)
    event_dict.pop("stack", None)
    if exc is not None:
        event_dict["error_type"] = type(exc).__name__
        event_dict["error"] = describe_exception(exc)
    return event_dict


def configure_logging(
    *, json: bool | None = None, level: str = "INFO", stream: IO[str] | None = None
) -> None:
    """Send structlog and stdlib logs, redacted, to `stream` (default: stderr at call time).

    `json=None` picks JSON lines when `stream` is not a terminal (journald, containers) and a
    human-readable console format when it is. Calling it again replaces the earlier set-up.
    """
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(
            f"unknown log level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    stream = sys.stderr if stream is None else stream
    if json is None:
        json = not _is_tty(stream)

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        render_exception,
        redact,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=_is_tty(stream))
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_render_foreign_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        # The message template alone is taken from stdlib records; arguments are added by
        # _render_foreign_message, which knows which ones are safe.
        use_get_message=False,
        pass_foreign_args=True,
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _NOISY_LIBRARIES:
        # Their INFO/DEBUG output is per connection and per message: noise at our volume.
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Cached loggers would ignore structlog.testing.capture_logs() in tests.
        cache_logger_on_first_use=False,
    )


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def _resolve_exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:  # sys.exc_info() shape
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None


def _safe_value(key: str, value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and key in _NOT_SCRUBBED:
        return value
    if isinstance(value, enum.Enum):
        return _safe_value(key, value.value, depth)
    if isinstance(value, str | datetime | date | time | UUID | PurePath | Decimal):
        return scrub(str(value))
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {describe_exception(value)}"
    if isinstance(value, list | tuple | set | frozenset) and depth < _MAX_NESTING:
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_safe_value(key, item, depth + 1) for item in items]
    # Mappings, models, bytes and other objects: their text could hold anything.
    return REDACTED


def _render_foreign_message(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Rebuild a stdlib record's message from its template and only its safe arguments."""
    args = event_dict.pop("positional_args", ())
    record = event_dict.get("_record")
    template: Any = record.msg if isinstance(record, logging.LogRecord) else event_dict["event"]
    if isinstance(template, BaseException):
        event_dict["event"] = f"{type(template).__name__}: {describe_exception(template)}"
        return event_dict
    if not isinstance(template, str):
        event_dict["event"] = REDACTED
        return event_dict
    message = template
    if args:
        safe_args: Any = (
            {k: _safe_argument(v) for k, v in args.items()}
            if isinstance(args, Mapping)
            else tuple(_safe_argument(arg) for arg in args)
        )
        try:
            message = template % safe_args
        except (TypeError, ValueError, KeyError):
            message = template  # e.g. "%d" given "[redacted]": the template alone still helps
    event_dict["event"] = message
    return event_dict


def _safe_argument(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {describe_exception(value)}"
    return REDACTED
