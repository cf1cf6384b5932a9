"""The bridge's error tree. Each error says what an operator should do next."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error referral-bridge raises on purpose."""


class ConfigError(BridgeError):
    """Raised when the configuration file, policy or environment is invalid; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class LedgerUnavailableError(BridgeError):
    """Raised when the ledger cannot be reached or written; transient, retried with backoff."""


class LedgerSchemaError(BridgeError):
    """Raised when the ledger's schema is newer than this version of the bridge understands, or
    (where the caller does not migrate) not this version's."""


class LedgerPrivilegeError(BridgeError):
    """Raised when `run`'s PostgreSQL role could rewrite the audit trail: give it a role that
    may only read and append to rb_audit (docs/operations.md, "Two database roles")."""
