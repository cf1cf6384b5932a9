"""What every command module shares: how it registers, and how it loads settings.

Each module exposes `register(commands)`, which adds its sub-parser(s) to the top-level
`argparse` sub-parsers and sets `func` to a function `(args) -> exit code`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from referral_bridge.settings import Settings, load_settings

#: The type argparse gives `add_subparsers()`; private in typeshed, so named once here.
SubParsers = Any


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="configuration file (default: $REFERRAL_BRIDGE_CONFIG)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None)


def operator_settings_from(args: argparse.Namespace) -> Settings:
    """Settings for operator tools that need no key (`dlq`, `audit`): key paths are not checked.

    An operator outside systemd has no `${CREDENTIALS_DIRECTORY}` and may not be able to read the
    key files; neither matters to reading dead letters or the audit trail.
    """
    return load_settings(Path(args.config) if args.config else None, resolve_keys=False)
