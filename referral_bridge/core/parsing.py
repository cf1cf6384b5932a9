"""Turn an inbound message body into an `InboundEvent`, or say why it cannot be one (contract §6).

Every failure is an `InvalidMessage` carrying a stable dead-letter reason and a detail that is
safe to put in a header or a log: it names *where* the problem is and *what kind* it is, never
the offending value, because bodies carry victims' personal data.

Decisions worth knowing:

- A UTF-8 byte order mark is rejected as `invalid_encoding`: RFC 8259 forbids producers to send
  one, and accepting it would hide a misconfigured producer.
- Duplicate object keys are rejected as `invalid_json`: parsers disagree on which value wins, so
  two systems could read different events from the same bytes.
- `NaN`/`Infinity`, floats that overflow, integers beyond 64 bits, nesting deeper than
  `MAX_DEPTH` and escapes that decode to lone UTF-16 surrogates are `invalid_json`: nothing in the
  contract needs them, and each would fail later in a less explicable place.
- A string containing U+0000 is a `schema_violation`: PostgreSQL text cannot store it.
- `datacontenttype` may carry media-type parameters (`application/json; charset=utf-8`).
- Attribute and field names are case-sensitive, as CloudEvents requires.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from referral_bridge.core.events import (
    DATA_MODELS,
    SUPPORTED_SCHEMA_VERSIONS,
    CloudEvent,
    DeadLetterReason,
    EventType,
    InboundEvent,
)
from referral_bridge.core.limits import MAX_EVENT_BYTES, MAX_JSON_DEPTH
from referral_bridge.wire import JSON_CONTENT

# pydantic's error dicts, typed loosely so the core imports nothing beyond pydantic itself.
_ErrorDetails = Mapping[str, Any]

__all__ = [
    "CONTRACT_FIELD_NAMES",
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "InvalidMessage",
    "parse_inbound",
    "translate_validation_error",
]

DEFAULT_MAX_BYTES = MAX_EVENT_BYTES
MAX_DEPTH = MAX_JSON_DEPTH
#: Problems listed in a detail; the rest are counted, keeping headers short.
MAX_LISTED_PROBLEMS = 10

_INT64_DIGITS = 19
_CORE_ATTRIBUTES = frozenset({"specversion", "id", "source", "type"})
_UTF8_BOM = b"\xef\xbb\xbf"

# A location segment is shown only if it is a field name of the contract's models. Segments that
# come from the input (unknown keys, extra flag names such as `jane_doe_07700900456`) are masked,
# however harmless they look, because a producer could put personal data in a key.
_SAFE_SEGMENT = re.compile(r"[a-z_][a-z0-9_-]{0,39}")
# The json module's messages are fixed phrases ("Expecting ',' delimiter"); this guard keeps a
# future phrase that quotes input from reaching a header.
_SAFE_JSON_MESSAGE = re.compile(r"[A-Za-z0-9 ,':\\-]{1,80}")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Our own wording per pydantic error type. pydantic's `msg` can quote the input (and `ctx` can
# hold it), so neither is ever used.
_ERROR_WORDING: dict[str, str] = {
    # Raised by the contract models' own validators (core/events.py).
    "rfc3339_timestamp": "must be an RFC 3339 timestamp with an offset",
    "iso_date": "must be a date as YYYY-MM-DD",
    "duplicate_victim_id": "the same victim_id is listed twice",
    "missing": "required field missing",
    "extra_forbidden": "unexpected field",
    "string_type": "must be a string",
    "string_too_short": "too short",
    "string_too_long": "too long",
    "string_pattern_mismatch": "does not match the required pattern",
    "string_unicode": "invalid text",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing_size": "integer out of range",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than": "out of range",
    "greater_than_equal": "out of range",
    "less_than": "out of range",
    "less_than_equal": "out of range",
    "bool_type": "must be a boolean",
    "bool_parsing": "must be a boolean",
    "date_type": "invalid date",
    "date_parsing": "invalid date",
    "date_from_datetime_parsing": "invalid date",
    "date_from_datetime_inexact": "invalid date",
    "date_future": "invalid date",
    "date_past": "invalid date",
    "datetime_type": "invalid timestamp",
    "datetime_parsing": "invalid timestamp",
    "datetime_from_date_parsing": "invalid timestamp",
    "datetime_object_invalid": "invalid timestamp",
    "timezone_aware": "timestamp must include a UTC offset",
    "enum": "not one of the allowed values",
    "literal_error": "not one of the allowed values",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "too_short": "too few items",
    "too_long": "too many items",
    "none_required": "must be null",
    "frozen_instance": "must not be changed",
}
_DEFAULT_WORDING = "invalid value"


class InvalidMessage(Exception):  # noqa: N818  # names the outcome, like dramatiq's errors
    """Raised when an inbound body cannot become an `InboundEvent`.

    The message goes to the dead-letter queue with `reason` and `detail` as headers; an operator
    should fix the producer (or the contract) and then replay it. `detail` holds no personal data.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def parse_inbound(body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> InboundEvent:
    """Validate a raw inbound body against the contract; raises only `InvalidMessage`."""
    if len(body) > max_bytes:
        raise InvalidMessage(
            DeadLetterReason.TOO_LARGE, f"body is {len(body)} bytes; the limit is {max_bytes}"
        )
    text = _decode(body)
    document = _load_json(text)
    has_nul = _inspect_structure(document)
    if not isinstance(document, dict):
        raise InvalidMessage(DeadLetterReason.NOT_CLOUDEVENT, "body is not a JSON object")

    envelope, envelope_errors = _validate_envelope(document)
    core_errors = [e for e in envelope_errors if e["loc"][:1] and e["loc"][0] in _CORE_ATTRIBUTES]
    if core_errors:
        raise InvalidMessage(DeadLetterReason.NOT_CLOUDEVENT, _describe(core_errors, prefix=""))

    event_type = _event_type(document["type"])
    schemaversion = _schemaversion(document, event_type)

    if envelope_errors or envelope is None:
        raise InvalidMessage(
            DeadLetterReason.SCHEMA_VIOLATION, _describe(envelope_errors, prefix="")
        )
    _check_content_type(envelope.datacontenttype)
    if has_nul:
        raise InvalidMessage(
            DeadLetterReason.SCHEMA_VIOLATION,
            "a string contains U+0000 (NUL), which the ledger cannot store",
        )

    model = DATA_MODELS[event_type]
    try:
        data = model.model_validate(envelope.data)
        return InboundEvent(
            id=envelope.id,
            source=envelope.source,
            type=event_type,
            time=envelope.time,
            schemaversion=schemaversion,
            data=data,
        )
    except ValidationError as exc:
        raise InvalidMessage(
            DeadLetterReason.SCHEMA_VIOLATION, translate_validation_error(exc, prefix="data")
        ) from None


def translate_validation_error(exc: ValidationError, *, prefix: str) -> str:
    """Describe a pydantic error by location and kind only, e.g. `data.victims[0].kind: ...`."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return _describe(errors, prefix=prefix)


def _describe(errors: Sequence[_ErrorDetails], *, prefix: str) -> str:
    listed = [
        f"{_location(prefix, e['loc'])}: {_ERROR_WORDING.get(e['type'], _DEFAULT_WORDING)}"
        for e in errors[:MAX_LISTED_PROBLEMS]
    ]
    if len(errors) > MAX_LISTED_PROBLEMS:
        listed.append(f"and {len(errors) - MAX_LISTED_PROBLEMS} more problems")
    return "; ".join(listed) or "invalid value"


def _location(prefix: str, loc: Iterable[int | str]) -> str:
    path = prefix
    for segment in loc:
        if isinstance(segment, int):
            path += f"[{segment}]"
            continue
        shown = segment if segment in CONTRACT_FIELD_NAMES else "<key>"
        path = f"{path}.{shown}" if path else shown
    return path or "(body)"


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    """Every field name and alias of `models` and of the models their fields hold."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending = list(models)
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.update(n for n in (name, info.alias) if n and _SAFE_SEGMENT.fullmatch(n))
            pending.extend(_models_in(info.annotation))
    return frozenset(names)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


#: Every field name of the inbound contract's models: the only object keys ever shown.
CONTRACT_FIELD_NAMES = _field_names(CloudEvent, *DATA_MODELS.values())


def _decode(body: bytes) -> str:
    if body.startswith(_UTF8_BOM):
        raise InvalidMessage(
            DeadLetterReason.INVALID_ENCODING, "body starts with a UTF-8 byte order mark"
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(
            DeadLetterReason.INVALID_ENCODING, f"not valid UTF-8 at byte {exc.start}"
        ) from None


class _RejectedError(ValueError):
    """Raised inside the JSON decoder hooks; its message is our own fixed wording."""


def _reject_constant(_name: str) -> Any:
    raise _RejectedError("NaN and Infinity are not JSON")


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _RejectedError("number out of range")
    return value


def _parse_int(literal: str) -> int:
    # Checked before conversion: int() of a very long literal is slow, and Python refuses
    # literals over 4300 digits with a ValueError of its own.
    if len(literal.lstrip("-")) > _INT64_DIGITS or not -(2**63) <= int(literal) < 2**63:
        raise _RejectedError("integer out of range")
    return int(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _RejectedError("duplicate object key")
    return document


def _load_json(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except json.JSONDecodeError as exc:
        message = exc.msg if _SAFE_JSON_MESSAGE.fullmatch(exc.msg) else "malformed JSON"
        detail = f"{message} at line {exc.lineno} column {exc.colno}"
        raise InvalidMessage(DeadLetterReason.INVALID_JSON, detail) from None
    except _RejectedError as exc:
        raise InvalidMessage(DeadLetterReason.INVALID_JSON, str(exc)) from None
    except RecursionError:
        raise InvalidMessage(
            DeadLetterReason.INVALID_JSON, f"nesting deeper than {MAX_DEPTH} levels"
        ) from None


def _inspect_structure(document: Any) -> bool:
    """Reject over-deep nesting and lone surrogates; report whether any string holds a NUL."""
    has_nul = False
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            strings: Iterable[str] = (node,)
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidMessage(
                    DeadLetterReason.INVALID_JSON, f"nesting deeper than {MAX_DEPTH} levels"
                )
            values = node.values() if isinstance(node, dict) else node
            stack.extend((value, depth + 1) for value in values)
            strings = node.keys() if isinstance(node, dict) else ()
        else:
            continue
        for string in strings:
            if _SURROGATE.search(string):
                raise InvalidMessage(
                    DeadLetterReason.INVALID_JSON,
                    "a string escape decodes to a lone UTF-16 surrogate",
                )
            has_nul = has_nul or "\x00" in string
    return has_nul


def _validate_envelope(
    document: dict[str, Any],
) -> tuple[CloudEvent | None, Sequence[_ErrorDetails]]:
    try:
        return CloudEvent.model_validate(document), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return None, errors


def _event_type(value: str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        # The unknown type itself is not echoed: it is input, and could be anything.
        known = ", ".join(sorted(t.value for t in EventType))
        raise InvalidMessage(
            DeadLetterReason.UNKNOWN_TYPE,
            f"the type (not shown; `dlq show --reveal` has it) is not handled; known types: "
            f"{known}",
        ) from None


def _schemaversion(document: dict[str, Any], event_type: EventType) -> int:
    supported = SUPPORTED_SCHEMA_VERSIONS[event_type]
    expected = ", ".join(str(v) for v in sorted(supported))
    value = document.get("schemaversion")
    # bool is an int subclass, and "1" is not the integer the contract asks for.
    if type(value) is not int:
        problem = "missing" if value is None else "not an integer"
        raise InvalidMessage(
            DeadLetterReason.UNSUPPORTED_VERSION,
            f"schemaversion is {problem}; supported for {event_type.value}: {expected}",
        )
    if value not in supported:
        raise InvalidMessage(
            DeadLetterReason.UNSUPPORTED_VERSION,
            f"schemaversion {value} is not supported for {event_type.value}; supported: {expected}",
        )
    return value


def _check_content_type(content_type: str | None) -> None:
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON_CONTENT:
        raise InvalidMessage(
            DeadLetterReason.SCHEMA_VIOLATION,
            f"datacontenttype must be {JSON_CONTENT} for inbound events",
        )
