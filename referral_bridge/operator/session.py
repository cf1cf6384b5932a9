"""One way in for operator tools: settings without keys, the ledger unmigrated, and who is asking.

Every operator command (`dlq`, `audit`, `report`, `retention`, `provider deliveries` and
`resend`) starts here, so that all of them behave alike on an operator's shell:

- settings are loaded without resolving key paths: an operator outside systemd has no
  `${CREDENTIALS_DIRECTORY}` and may not be able to read the key files, and none of these
  commands seals or opens anything;
- the ledger is opened without migrating, and only when a command first needs it: an operator
  tool must never change the schema under running workers, nor create a SQLite ledger (under
  sudo its files would belong to root); a ledger at another schema version is refused;
- the actor is the operating system's user for the real uid, never `LOGNAME` or `USER`;
- what an operator does is recorded in the audit trail by `record`, the one writer of operator
  actions, which stamps each record with that actor.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from referral_bridge.settings import Settings, load_settings

if TYPE_CHECKING:
    from referral_bridge.ledger import Ledger
    from referral_bridge.operator.audit import AuditTrail, OperatorAction

__all__ = ["OperatorSession", "operator_name"]

_MAX_CLAIMED_NAME = 64


class OperatorSession:
    """What an operator command works with; a context manager that closes what it opened."""

    def __init__(self, settings: Settings, *, actor: str | None = None) -> None:
        self.settings = settings
        #: Who is asking, as recorded in the audit trail (`operator_name()` unless given).
        self.actor = actor if actor is not None else operator_name()
        self._ledger: Ledger | None = None

    @classmethod
    def start(cls, config: Path | None) -> OperatorSession:
        """A session on the configuration file (None: `$REFERRAL_BRIDGE_CONFIG`), keys unread."""
        return cls(load_settings(config, resolve_keys=False))

    @property
    def ledger(self) -> Ledger:
        """The configured ledger, opened on first use (`open_ledger`)."""
        return self.open_ledger()

    def open_ledger(self) -> Ledger:
        """The configured ledger, never migrated; opened once, by the first call.

        Raises LedgerUnavailableError (no ledger there, or unreachable) or LedgerSchemaError (not
        at this version's schema: `referral-bridge migrate` is the one command that changes it).
        """
        if self._ledger is None:
            from referral_bridge.ledger import Ledger

            self._ledger = Ledger.open(self.settings.ledger_url, migrate=False)
        return self._ledger

    @property
    def audit_trail(self) -> AuditTrail:
        from referral_bridge.operator.audit import AuditTrail

        return AuditTrail(self.ledger.engine)

    def record(self, actions: Sequence[OperatorAction], *, at: datetime | None = None) -> list[int]:
        """Append what the operator did, by this session's actor, in one transaction.

        Returns the records' ids once committed. Call it *before* the action it records, so
        that nothing happens unaudited. `at` defaults to now.
        """
        from referral_bridge.operator.audit import AuditRecord

        now = at if at is not None else datetime.now(UTC)
        return self.audit_trail.append_all(
            [
                AuditRecord(
                    at=now,
                    actor=self.actor,
                    action=action.action,
                    message_id=action.message_id,
                    provider=action.provider,
                    case_ref=action.case_ref,
                    victim_id=action.victim_id,
                    detail=action.detail,
                )
                for action in actions
            ]
        )

    def on_behalf_of(self, name: str | None) -> str:
        """The actor, with a name the operator typed beside it as a claim, never in its place."""
        claimed = _printable(name or "")
        return f"{self.actor} (on behalf of {claimed})" if claimed else self.actor

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.dispose()
            self._ledger = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def operator_name() -> str:
    """Who is running an operator tool: the real user's login name, plus who ran sudo.

    The name comes from the password database for the real uid, not from LOGNAME or USER, which
    anyone can set. Behind sudo that is root (or the target user), and `SUDO_USER`, which sudo
    sets, is appended as "(sudo by NAME)": an environment variable, so a claim recorded beside
    the uid's own name rather than in its place.
    """
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (e.g. an arbitrary uid in a container)
        name = f"uid {uid}"
    sudo_user = _printable(os.environ.get("SUDO_USER", ""))
    if sudo_user:
        return f"{name} (sudo by {sudo_user})"
    return name


def _printable(claimed: str) -> str:
    return "".join(c for c in claimed if c.isprintable()).strip()[:_MAX_CLAIMED_NAME]
