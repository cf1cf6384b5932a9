"""The consent and routing policy: configuration a data protection officer reads and changes.

The shipped default is `config/policy.toml` (rules.md, version 2). It is validated once, at
start-up, and every problem is reported with the file and key it is in, so it can be fixed
without a debugger.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from referral_bridge.core.events import CaseKind, Relationship, VictimKind

#: Keys of policy version 1 that version 2 renamed: the error says what to write instead.
_RENAMED = {("deadlines", "hold_working_days"): "consent_wait_working_days"}

RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")]
#: A stable snake_case code: rule names, services, categories and flags.
Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
#: A provider id is also an AMQP routing key, so no wildcards (`*`, `#`) or spaces.
ProviderId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,63}$")]
HoClass = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z/]{1,16}$")]
#: A lawful basis as a data protection officer writes it, e.g. "UK GDPR Art 6(1)(e); DPA 2018 s8".
LawfulBasis = Annotated[str, StringConstraints(min_length=3, max_length=200)]
Need = Literal["vulnerable", "intimidated", "persistently_targeted"]
WorkingDays = Annotated[int, Field(ge=1, le=30)]


class PolicyError(Exception):
    """Raised when the policy file is not valid: fix each listed key and start again.

    `problems` holds one line per problem, "SOURCE: key.path: what is wrong". Rule blocks are
    counted from 1 in the order they appear, so `rules[3]` is the third `[[rules]]` block.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "the consent policy is not valid; fix these and start again:\n  "
            + "\n  ".join(self.problems)
        )


class Regime(StrEnum):
    """How consent turns into an outcome (rules.md, "Regimes")."""

    EXPLICIT = "explicit"
    OPT_OUT = "opt_out"
    INCIDENT = "incident"
    NONE = "none"


class _Config(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored would change who is referred.
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conditions(_Config):
    """What a rule looks at. No conditions at all makes the rule a catch-all."""

    victim_kind: VictimKind | None = None
    deceased: bool | None = None
    categories: tuple[Code, ...] = ()
    relationships: tuple[Relationship, ...] = ()
    flags: tuple[Code, ...] = ()
    #: Matches a victim younger than this on the local date of `reported_at`.
    under_age: Annotated[int, Field(ge=1, le=25)] | None = None
    #: Matches a parent or guardian on a case with a victim younger than this (rules.md rule 7).
    guardian_of_under_age: Annotated[int, Field(ge=1, le=25)] | None = None

    def is_empty(self) -> bool:
        return self == Conditions()


class Rule(_Config):
    """One row of the rules table; the first rule that matches a victim decides."""

    id: RuleId
    name: Code
    applies_to: tuple[CaseKind, ...] = Field(min_length=1)
    #: "any": one listed condition is enough; "all": every listed condition must hold.
    match: Literal["any", "all"] = "any"
    when: Conditions = Conditions()
    provider: ProviderId | None = None
    service: Code | None = None
    regime: Regime
    requires_safe_to_contact: bool = False
    requires_contact_person: bool = False
    #: Why the bridge may disclose the victim's details to the provider (UK GDPR / DPA 2018).
    lawful_basis: LawfulBasis | None = None
    #: Regime "none" only: if no victim of the case is a bereaved relative, one
    #: `bereaved_not_recorded` leaflet task per case, giving this provider's details.
    bereaved_task_provider: ProviderId | None = None

    @model_validator(mode="after")
    def _makes_sense(self) -> Rule:
        if self.regime is Regime.NONE:
            if self.provider is not None or self.service is not None:
                raise ValueError("regime 'none' sends nothing, so leave out provider and service")
            if self.lawful_basis is not None:
                raise ValueError("regime 'none' discloses nothing, so leave out lawful_basis")
        elif self.provider is None or self.service is None:
            raise ValueError(f"regime {self.regime.value!r} needs both a provider and a service")
        elif self.lawful_basis is None:
            raise ValueError(
                f"regime {self.regime.value!r} discloses personal data, so name its lawful_basis"
            )
        if self.bereaved_task_provider is not None and self.regime is not Regime.NONE:
            raise ValueError("bereaved_task_provider only makes sense with regime 'none'")
        if self.requires_contact_person and self.regime is not Regime.EXPLICIT:
            raise ValueError("requires_contact_person only makes sense with regime 'explicit'")
        if len(set(self.applies_to)) != len(self.applies_to):
            raise ValueError("applies_to lists the same kind twice")
        return self

    def is_catch_all(self) -> bool:
        return self.when.is_empty()


class Deadlines(_Config):
    """Victims' Code time limits, in England and Wales working days from `reported_at`."""

    referral_working_days: WorkingDays
    #: How long a hold waits for explicit consent (`consent_wait`, rules.md).
    consent_wait_working_days: WorkingDays
    leaflet_working_days: WorkingDays
    leaflet_enhanced_working_days: WorkingDays


class EnhancedRights(_Config):
    """Victims entitled to enhanced rights: shorter leaflet deadlines."""

    categories: tuple[Code, ...] = ()
    flags: tuple[Code, ...] = ()
    ho_classes: tuple[HoClass, ...] = ()
    under_age: Annotated[int, Field(ge=1, le=25)] = 18
    needs: tuple[Need, ...] = ()
    relationships: tuple[Relationship, ...] = ()


class CrimeRecording(_Config):
    """Crime data integrity: a disclosed crime must become a crime record (rules.md)."""

    #: An incident with a crime disclosed and no crime linked this long after it was opened
    #: gives one crime-review task for the force crime registrar.
    review_after_hours: Annotated[int, Field(ge=1, le=720)] = 24
    review_due_working_days: WorkingDays = 1


_CLASS_NUMBER = re.compile(r"^0*([0-9]+)([A-Z]*)$")


def normalise_class(ho_class: str) -> str:
    """Home Office classes compare upper case without leading zeros: `05a` = `5A`, `N100` as is."""
    value = ho_class.strip().upper()
    match = _CLASS_NUMBER.match(value)
    if match is None:
        return value
    return f"{int(match.group(1))}{match.group(2)}"


class _CrossFieldError(ValueError):
    """Cross-field problems found after each part was valid on its own."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {what}" for path, what in problems))


class Policy(_Config):
    """The whole policy. Build it with `load_policy_text`, which reports problems readably."""

    deadlines: Deadlines
    enhanced_rights: EnhancedRights
    #: Offence category -> Home Office classes that always count as it, whatever was sent.
    class_categories: dict[Code, tuple[HoClass, ...]] = {}
    #: Incident category -> the crime flag it stands for when a crime is disclosed.
    incident_flags: dict[Code, Code] = {}
    crime_recording: CrimeRecording = CrimeRecording()
    rules: tuple[Rule, ...] = Field(min_length=1)

    def category_of_class(self, ho_class: str | None) -> str | None:
        """The category the policy maps this class to (compared normalised), if any."""
        if not ho_class:
            return None
        return self._class_map().get(normalise_class(ho_class))

    def _class_map(self) -> dict[str, str]:
        return {
            normalise_class(ho_class): category
            for category, classes in self.class_categories.items()
            for ho_class in classes
        }

    @model_validator(mode="after")
    def _makes_sense(self) -> Policy:  # noqa: C901 (independent policy checks, one branch each)
        problems: list[tuple[str, str]] = []
        mapped: dict[str, str] = {}
        for category, classes in self.class_categories.items():
            for ho_class in classes:
                key = normalise_class(ho_class)
                if mapped.setdefault(key, category) != category:
                    problems.append(
                        (
                            f"class_categories.{category}",
                            f"class {ho_class!r} is already mapped to {mapped[key]!r}",
                        )
                    )
        for key in ("id", "name"):
            seen: dict[str, int] = {}
            for number, rule in enumerate(self.rules, start=1):
                value = getattr(rule, key)
                if value in seen:
                    problems.append(
                        (
                            f"rules[{number}].{key}",
                            f"{value!r} is already used by rules[{seen[value]}]",
                        )
                    )
                seen.setdefault(value, number)
        catch_all: dict[CaseKind, int] = {}
        for number, rule in enumerate(self.rules, start=1):
            if all(kind in catch_all for kind in rule.applies_to):
                earlier = ", ".join(f"rules[{catch_all[k]}]" for k in rule.applies_to)
                problems.append(
                    (f"rules[{number}]", f"can never match: {earlier} before it matches everything")
                )
            if rule.is_catch_all():
                for kind in rule.applies_to:
                    catch_all.setdefault(kind, number)
        for kind in CaseKind:
            if kind not in catch_all:
                problems.append(
                    (
                        "rules",
                        f"no rule without conditions applies to {kind.value!r}: add a last rule "
                        "so that every victim is decided",
                    )
                )
        if problems:
            raise _CrossFieldError(problems)
        return self

    def providers(self) -> frozenset[str]:
        """The provider ids the rules can refer to; each needs keys and a delivery route."""
        return frozenset(rule.provider for rule in self.rules if rule.provider is not None)


def load_policy_text(text: str, *, source: str) -> Policy:
    """Parse and validate a policy file's text; `source` names the file in error messages.

    Raises PolicyError listing every problem. Input values are never echoed, only keys.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give a position, never the file's content.
        raise PolicyError([f"{source}: (file): not valid TOML: {exc}"]) from None
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        path = _path(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _CrossFieldError):
            lines.extend(f"{source}: {_join(path, sub)}: {what}" for sub, what in cause.problems)
            continue
        lines.append(f"{source}: {path or '(top level)'}: {_message(error['type'], error, cause)}")
    return lines


def _message(kind: str, error: Any, cause: object) -> str:
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        renamed = _RENAMED.get(tuple(str(p) for p in error["loc"][-2:]))  # type: ignore[arg-type]
        if renamed is not None:
            return f"was renamed in policy version 2: write {renamed} instead"
        return "is not a known setting (check the spelling against the shipped policy)"
    if isinstance(cause, ValueError):
        return str(cause)
    return str(error["msg"])


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part + 1}]"
        else:
            path += f".{part}" if path else part
    return path


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path
