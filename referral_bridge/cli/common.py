"""What every command module shares: how it registers, loads settings and reads a moment.

Each module exposes `register(commands)`, which adds its sub-parser(s) to the top-level
`argparse` sub-parsers and sets `func` to a function `(args) -> exit code`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from referral_bridge.settings import Settings, load_settings

if TYPE_CHECKING:
    from referral_bridge.operator.session import OperatorSession

#: The type argparse gives `add_subparsers()`; private in typeshed, so named once here.
SubParsers = Any


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="configuration file (default: $REFERRAL_BRIDGE_CONFIG)")
    return parser


def config_path(args: argparse.Namespace) -> Path | None:
    return Path(args.config) if args.config else None


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings with their keys resolved: for the commands that seal, open or check keys."""
    return load_settings(config_path(args))


def operator_session(args: argparse.Namespace) -> OperatorSession:
    """The one way in for operator commands: keys unread, ledger unmigrated, the OS user."""
    from referral_bridge.operator.session import OperatorSession

    return OperatorSession.start(config_path(args))


def parse_when(text: str) -> datetime:
    """A moment: RFC 3339 / ISO 8601 (UTC if no offset), a date (midnight UTC) or `7d` ago."""
    from referral_bridge.operator.deadletters import parse_duration

    value = text.strip()
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; use e.g. 2026-11-23, 2026-11-23T09:00:00Z or 24h (ago)"
        ) from None
    if len(value) == 10:  # a bare date
        return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
