"""Mask the personal fields of an inbound message body, driven by the contract's models.

Operators look at dead letters to find out what is wrong with them; they must not see a victim's
name, date of birth or contact details while doing so. Which fields are personal is said once, in
`PERSONAL_FIELDS`, as (model, field) pairs of `core/events.py`. The masker walks a body alongside
the models:

- under a personal field, every value except null is masked (strings, numbers and booleans
  alike), keeping only the shape: object keys that are contract field names, list lengths;
- a value is shown only where the models positively say the field is not personal and the value
  is a scalar where a scalar is expected;
- anything the models do not know (extra fields of a body that fails validation, `data` of an
  unknown event type, an object where a string was expected) is masked as if it were personal;
- object keys that do not look like contract field names are masked too, because a producer could
  put personal data in a key by mistake (the same rule as the dead-letter detail's, parsing.py).

A body that is not UTF-8 JSON cannot be walked and is described by its size and SHA-256 only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

from referral_bridge.core.events import (
    DATA_MODELS,
    CloudEvent,
    ConsentUpdated,
    EventType,
    Needs,
    Officer,
    Victim,
    VictimConsent,
)

__all__ = [
    "MASKED",
    "MASKED_UNKNOWN",
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
    }
)

# The same rule as parsing.py's for locations: a key is shown only if it looks like a field name.
_SAFE_KEY = re.compile(r"[a-z_][a-z0-9_-]{0,39}")


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
    except (UnicodeDecodeError, ValueError, RecursionError):
        return MaskedBody(size=size, sha256=digest)
    return MaskedBody(size=size, sha256=digest, document=mask_document(document), is_json=True)


def mask_document(document: Any) -> Any:
    """A copy of a parsed inbound body with every value not known to be non-personal masked.

    The envelope is walked with `CloudEvent`; `data` with the model of the body's `type`, or
    masked whole when the type is not one the bridge knows.
    """
    if not isinstance(document, dict):
        return _mask_subtree(document, MASKED_UNKNOWN)
    event_type = document.get("type")
    data_model: type[BaseModel] | None = None
    if isinstance(event_type, str) and event_type in {t.value for t in EventType}:
        data_model = DATA_MODELS[EventType(event_type)]
    masked = _mask_model(document, CloudEvent, skip=frozenset({"data"}))
    if "data" in document:
        data = document["data"]
        masked["data"] = (
            _mask_value(data, data_model)
            if data_model is not None
            else _mask_subtree(data, MASKED_UNKNOWN)
        )
    return masked


def _mask_model(
    value: dict[str, Any], model: type[BaseModel], *, skip: frozenset[str] = frozenset()
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
            masked[key] = (
                _mask_subtree(item, MASKED)
                if is_personal(model, key)
                else _mask_value(item, info.annotation)
            )
            continue
        shown_key = key if _SAFE_KEY.fullmatch(key) else None
        if shown_key is None:
            hidden_keys += 1
            shown_key = f"[masked key {hidden_keys}]"
        # Extra fields the model allows (flags) are typed; any other extra field is unknown.
        masked[shown_key] = (
            _mask_value(item, extra) if extra is not None else _mask_subtree(item, MASKED_UNKNOWN)
        )
    return masked


def _mask_value(value: Any, annotation: Any) -> Any:
    """Show `value` only as far as `annotation` (a non-personal field's type) vouches for it."""
    annotation = _strip_annotated(annotation)
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        alternatives = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(alternatives) == 1:
            return _mask_value(value, alternatives[0])
        if any(_is_scalar_type(a) and _fits(value, a) for a in alternatives):
            return value
        return _mask_subtree(value, MASKED_UNKNOWN)
    if origin in (tuple, list, frozenset, set):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, list) or len(args) != 1:
            return _mask_subtree(value, MASKED_UNKNOWN)
        return [_mask_value(item, args[0]) for item in value]
    if origin is dict:
        _, item_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            return _mask_subtree(value, MASKED_UNKNOWN)
        return _mask_mapping(value, lambda item: _mask_value(item, item_type))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return _mask_subtree(value, MASKED_UNKNOWN)
        return _mask_model(value, annotation)
    if _is_scalar_type(annotation) and _fits(value, annotation):
        return value
    return _mask_subtree(value, MASKED_UNKNOWN)


def _mask_subtree(value: Any, label: str) -> Any:
    """Mask every value below here except null; keep the shape (safe keys, list lengths)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_mask_subtree(item, label) for item in value]
    if isinstance(value, dict):
        return _mask_mapping(value, lambda item: _mask_subtree(item, label))
    return label


def _mask_mapping(value: dict[str, Any], mask: typing.Callable[[Any], Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    hidden_keys = 0
    for key, item in value.items():
        if not _SAFE_KEY.fullmatch(key):
            hidden_keys += 1
            key = f"[masked key {hidden_keys}]"
        masked[key] = mask(item)
    return masked


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON scalar is of the kind a scalar field expects (a string is not a flag)."""
    annotation = _strip_annotated(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    # Strings, enums, dates, timestamps and literals all arrive as JSON strings.
    return isinstance(value, str)


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
