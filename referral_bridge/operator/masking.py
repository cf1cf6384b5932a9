"""Mask the personal fields of an inbound message body, driven by the contract's models.

Operators look at dead letters to find out what is wrong with them; they must not see a victim's
name, date of birth or contact details while doing so. Which fields are personal is said once, in
`PERSONAL_FIELDS`, as (model, field) pairs of `core/events.py`. The masker walks a body alongside
the models:

- under a personal field, every value except null is masked (strings, numbers and booleans
  alike), keeping only the shape: object keys that are contract field names, list lengths;
- a value is shown only where the models positively say the field is not personal *and* the value
  is valid for that field's own type: an enum or literal member, a `Ref` matching its pattern, an
  RFC 3339 timestamp, a boolean, a small whole number, or, for a field typed as plain text, one
  code-like token (no spaces; see `_CODE_LIKE`). A body that fails validation is exactly one whose
  producer may have put a name or a phone number in the wrong field, so a value that does not fit
  its field is masked (`MASKED_INVALID`), and so is free text with spaces (`MASKED_FREE_TEXT`),
  which can name anyone. `offence.label` (`FREE_TEXT_FIELDS`) is masked whatever it holds: it is
  the force's description, not victim data, but it is text by design and a misplaced surname
  would be one word; `ho_class` and `category` identify the offence, and the detail header
  names the failing field;
- anything the models do not know (extra fields of a body that fails validation, `data` of an
  unknown event type, an object where a string was expected) is masked as if it were personal;
- object keys the contract does not define are masked too (`[masked key N]`), extra flag names
  included, because a producer could put personal data in a key by mistake;
- nesting deeper than `MAX_DEPTH` is masked whole, so a hostile body cannot exhaust the stack.

A body that is not UTF-8 JSON cannot be walked and is described by its size and SHA-256 only.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from referral_bridge.core.events import (
    DATA_MODELS,
    CloudEvent,
    ConsentUpdated,
    EventType,
    Needs,
    Offence,
    Officer,
    TaskCompleted,
    Victim,
    VictimConsent,
)
from referral_bridge.core.parsing import CONTRACT_FIELD_NAMES
from referral_bridge.logging import scrub

__all__ = [
    "FREE_TEXT_FIELDS",
    "MASKED",
    "MASKED_FREE_TEXT",
    "MASKED_INVALID",
    "MASKED_LOOKS_PERSONAL",
    "MASKED_TOO_DEEP",
    "MASKED_UNKNOWN",
    "MAX_DEPTH",
    "PERSONAL_FIELDS",
    "MaskedBody",
    "is_personal",
    "mask_body",
    "mask_document",
]

#: What a value under a personal field is shown as.
MASKED = "[masked: personal]"
#: What a value the contract does not describe is shown as (it might be personal).
MASKED_UNKNOWN = "[masked: not in the contract]"
#: A value in a non-personal field that is not valid for that field (it might be misplaced data).
MASKED_INVALID = "[masked: not valid for this field]"
#: Free text (more than one code-like token) in a non-personal field: it could name anyone.
MASKED_FREE_TEXT = "[masked: free text]"
#: A value that fits its field but looks like an e-mail, phone number, postcode, date or number.
MASKED_LOOKS_PERSONAL = "[masked: looks personal]"
#: Whatever lies deeper than MAX_DEPTH levels.
MASKED_TOO_DEEP = "[masked: nested too deep]"
#: Levels of nesting walked; the contract needs fewer than ten.
MAX_DEPTH = 32

#: Every personal field of an inbound event, as (model, field name); everything below it is masked.
PERSONAL_FIELDS: frozenset[tuple[type[BaseModel], str]] = frozenset(
    {
        (Victim, "name"),
        (Victim, "date_of_birth"),
        (Victim, "contact"),
        # Needs can reveal health or ethnicity (special category data).
        (Needs, "language"),
        (Needs, "accessibility"),
        # Officers are people too; their collar number and unit identify them well enough here.
        (Officer, "name"),
        (Officer, "email"),
        # Free text that may name whoever recorded consent.
        (VictimConsent, "recorded_by"),
        (ConsentUpdated, "recorded_by"),
        # Who completed an officer task: a collar number, but free text from the task system.
        (TaskCompleted, "completed_by"),
    }
)

#: Non-personal fields that are descriptive text by design: masked whatever their shape, since
#: even one word there could be a misplaced surname (the other plain-text fields hold codes).
FREE_TEXT_FIELDS: frozenset[tuple[type[BaseModel], str]] = frozenset({(Offence, "label")})

#: A plain-text value is shown only as one token like an id, code or URN: no spaces, no '@'.
_CODE_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]{0,199}")
#: As many digits in a row as a UK phone number has (ids and refs have fewer), and a UUID.
_PHONE_LIKE_DIGITS = re.compile(r"\d{10,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
#: Whole numbers are shown only below this: a phone number or a date as digits is longer.
_MAX_SHOWN_NUMBER = 1_000_000


@dataclass(frozen=True, kw_only=True)
class MaskedBody:
    """A body as an operator may see it: size, hash and, if it is JSON, the masked document."""

    size: int
    sha256: str
    #: The masked JSON document; None when the body is not UTF-8 JSON (nothing of it is shown).
    document: Any = field(default=None)
    is_json: bool = False


def is_personal(model: type[BaseModel], field_name: str) -> bool:
    """Whether `field_name` of `model` is marked personal (everything under it is masked)."""
    return (model, field_name) in PERSONAL_FIELDS


def mask_body(body: bytes) -> MaskedBody:
    """Size, SHA-256 and, when the body parses as UTF-8 JSON, its masked document."""
    size, digest = len(body), hashlib.sha256(body).hexdigest()
    try:
        document = json.loads(body.decode("utf-8"))
        masked = mask_document(document)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return MaskedBody(size=size, sha256=digest)
    return MaskedBody(size=size, sha256=digest, document=masked, is_json=True)


def mask_document(document: Any) -> Any:
    """A copy of a parsed inbound body with every value not known to be non-personal masked.

    The envelope is walked with `CloudEvent`; `data` with the model of the body's `type`, or
    masked whole when the type is not one the bridge knows.
    """
    if not isinstance(document, dict):
        return _mask_subtree(document, MASKED_UNKNOWN, 0)
    event_type = document.get("type")
    data_model: type[BaseModel] | None = None
    if isinstance(event_type, str) and event_type in {t.value for t in EventType}:
        data_model = DATA_MODELS[EventType(event_type)]
    masked = _mask_model(document, CloudEvent, 0, skip=frozenset({"data"}))
    if "type" in masked and data_model is None:
        # A type the bridge does not know is input like any other text (issue 10).
        masked["type"] = MASKED_UNKNOWN
    if "data" in document:
        data = document["data"]
        masked["data"] = (
            _mask_value(data, data_model, 1)
            if data_model is not None
            else _mask_subtree(data, MASKED_UNKNOWN, 1)
        )
    return masked


def _mask_model(
    value: dict[str, Any],
    model: type[BaseModel],
    depth: int,
    *,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    fields = model.model_fields
    extra = _extra_annotation(model)
    masked: dict[str, Any] = {}
    hidden_keys = 0
    for key, item in value.items():
        if key in skip:
            continue
        info = fields.get(key)
        if info is not None:
            if is_personal(model, key):
                masked[key] = _mask_subtree(item, MASKED, depth + 1)
            elif (model, key) in FREE_TEXT_FIELDS and item is not None:
                masked[key] = _mask_subtree(item, MASKED_FREE_TEXT, depth + 1)
            else:
                masked[key] = _mask_value(item, _field_annotation(info), depth + 1)
            continue
        # A key the model does not define: its name could be data (e.g. an extra flag's name).
        hidden_keys += 1
        masked[f"[masked key {hidden_keys}]"] = (
            _mask_value(item, extra, depth + 1)
            if extra is not None
            else _mask_subtree(item, MASKED_UNKNOWN, depth + 1)
        )
    return masked


def _mask_value(value: Any, annotation: Any, depth: int) -> Any:  # noqa: C901 (one branch per JSON shape the models allow)
    """Show `value` only as far as `annotation` (a non-personal field's type) vouches for it."""
    if value is None:
        return None
    if depth > MAX_DEPTH:
        return MASKED_TOO_DEEP
    bare = _strip_annotated(annotation)
    origin = typing.get_origin(bare)
    if origin in (Union, types.UnionType):
        alternatives = [a for a in typing.get_args(bare) if a is not type(None)]
        if len(alternatives) == 1:
            return _mask_value(value, alternatives[0], depth)
        for alternative in alternatives:
            if _is_scalar_type(alternative) and _valid(value, alternative):
                return _scalar(value, alternative)
        return _mask_subtree(value, MASKED_UNKNOWN, depth)
    if origin in (tuple, list, frozenset, set):
        args = [a for a in typing.get_args(bare) if a is not Ellipsis]
        if not isinstance(value, list) or len(args) != 1:
            return _mask_subtree(value, MASKED_UNKNOWN, depth)
        return [_mask_value(item, args[0], depth + 1) for item in value]
    if origin is dict:
        _, item_type = typing.get_args(bare)
        if not isinstance(value, dict):
            return _mask_subtree(value, MASKED_UNKNOWN, depth)
        return _mask_mapping(value, lambda item: _mask_value(item, item_type, depth + 1))
    if isinstance(bare, type) and issubclass(bare, BaseModel):
        if not isinstance(value, dict):
            return _mask_subtree(value, MASKED_UNKNOWN, depth)
        return _mask_model(value, bare, depth)
    if not _is_scalar_type(bare) or isinstance(value, dict | list):
        return _mask_subtree(value, MASKED_UNKNOWN, depth)
    return _scalar(value, annotation)


def _scalar(value: Any, annotation: Any) -> Any:
    """A JSON scalar in a non-personal field: the value if it fits the field and looks safe."""
    if not _valid(value, annotation):
        return MASKED_INVALID
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value if abs(value) < _MAX_SHOWN_NUMBER else MASKED_LOOKS_PERSONAL
    if not isinstance(value, str):
        return MASKED_INVALID
    if _is_closed_set_or_time(annotation):
        return value  # an enum or literal member, or a timestamp: nothing else validates
    if not _CODE_LIKE.fullmatch(value):
        return MASKED_FREE_TEXT if _is_plain_text(annotation) else MASKED_LOOKS_PERSONAL
    if _PHONE_LIKE_DIGITS.search(value) and not _UUID.fullmatch(value):
        return MASKED_LOOKS_PERSONAL  # e.g. "jane.doe.07700900456": the scrubber needs a gap
    return value if scrub(value) == value else MASKED_LOOKS_PERSONAL


def _mask_subtree(value: Any, label: str, depth: int) -> Any:
    """Mask every value below here except null; keep the shape (contract keys, list lengths)."""
    if value is None:
        return None
    if depth > MAX_DEPTH:
        return MASKED_TOO_DEEP
    if isinstance(value, list):
        return [_mask_subtree(item, label, depth + 1) for item in value]
    if isinstance(value, dict):
        return _mask_mapping(value, lambda item: _mask_subtree(item, label, depth + 1))
    return label


def _mask_mapping(value: dict[str, Any], mask: typing.Callable[[Any], Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    hidden_keys = 0
    for key, item in value.items():
        if key not in CONTRACT_FIELD_NAMES:
            hidden_keys += 1
            key = f"[masked key {hidden_keys}]"
        masked[key] = mask(item)
    return masked


def _field_annotation(info: FieldInfo) -> Any:
    """A field's type with its constraints: pydantic moves them from the annotation to metadata."""
    if not info.metadata:
        return info.annotation
    return Annotated[(info.annotation, *info.metadata)]


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _valid(value: Any, annotation: Any) -> bool:
    """Whether a JSON scalar validates against a field's own type and constraints.

    As the bridge validates a body (parsing.py): the parsed JSON in pydantic's Python mode.
    """
    adapter = _adapter(annotation)
    if adapter is None:
        return False
    try:
        adapter.validate_python(value)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _cached_adapter(annotation: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 (a type pydantic cannot validate on its own: show nothing of it)
        return None


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    try:
        return _cached_adapter(annotation)
    except TypeError:  # unhashable metadata: build it each time (rare, and only in the CLI)
        return _cached_adapter.__wrapped__(annotation)


def _is_plain_text(annotation: Any) -> bool:
    """A `str` field with no pattern: its values are free text unless proven otherwise."""
    if _strip_annotated(annotation) is not str:
        return False
    return not any(getattr(m, "pattern", None) for m in _metadata(annotation))


def _is_closed_set_or_time(annotation: Any) -> bool:
    bare = _strip_annotated(annotation)
    if typing.get_origin(bare) is Literal:
        return True
    return isinstance(bare, type) and issubclass(bare, enum.Enum | datetime | date)


def _metadata(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Annotated:
        return tuple(typing.get_args(annotation)[1:])
    return ()


def _is_scalar_type(annotation: Any) -> bool:
    """Strings, numbers, booleans, dates, enums and literals: anything but containers and Any."""
    annotation = _strip_annotated(annotation)
    if annotation is Any:
        return False
    if typing.get_origin(annotation) is Literal:
        return True
    if typing.get_origin(annotation) is not None:
        return False
    return isinstance(annotation, type) and not issubclass(annotation, BaseModel)


@functools.cache
def _extra_annotation(model: type[BaseModel]) -> Any:
    """The type of extra fields a model allows (e.g. flags are booleans), else None."""
    if model.model_config.get("extra") != "allow":
        return None
    extra = typing.get_type_hints(model, include_extras=True).get("__pydantic_extra__")
    if typing.get_origin(extra) is dict:
        return typing.get_args(extra)[1]
    return Any
