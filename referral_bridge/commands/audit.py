"""`referral-bridge audit …` (being built: see the issue that introduces it)."""

from __future__ import annotations

from referral_bridge.commands import SubParsers


def register(commands: SubParsers) -> None:
    """Adds nothing yet."""
