"""The ledger as a whole: opening it, migrating it, and one transaction per inbound message.

`Ledger` is one object for its callers, built from one base class per job: the outbox's
delivery writes (outbox.py), what has come due (due.py), operators' queries
(operator_queries.py) and the unsettled deliveries of a classic queue (redeliveries.py). Each
base needs only `engine`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from referral_bridge.errors import (
    LedgerPrivilegeError,
    LedgerSchemaError,
    LedgerUnavailableError,
)
from referral_bridge.ledger import schema as t
from referral_bridge.ledger.due import DueWork
from referral_bridge.ledger.engine import (
    INSUFFICIENT_PRIVILEGE,
    create_ledger_engine,
    describe,
    not_this_version,
    reading,
    refuse_missing_sqlite_file,
    writing,
)
from referral_bridge.ledger.migrations import current_version, migrate
from referral_bridge.ledger.operator_queries import OperatorQueries
from referral_bridge.ledger.outbox import OutboxDeliveries
from referral_bridge.ledger.redeliveries import RedeliveryCounts
from referral_bridge.ledger.roles import audit_powers
from referral_bridge.ledger.transaction import LedgerTransaction


class Ledger(OutboxDeliveries, DueWork, OperatorQueries, RedeliveryCounts):
    """The ledger: transactions, the outbox's delivery state, due work, operators' queries and
    the unsettled deliveries of a classic queue."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Ledger:
        """Connect and migrate; raises LedgerUnavailableError or LedgerSchemaError.

        `migrate=False` is for operator tools (`dlq`, `audit`): they must not change the schema
        under running workers, nor create a SQLite ledger (under sudo its files would belong to
        root). The schema must then be exactly this version's, else LedgerSchemaError.
        """
        if not migrate:
            refuse_missing_sqlite_file(url)
        ledger = cls(create_ledger_engine(url))
        try:
            if migrate:
                ledger.migrate()
            else:
                with reading(ledger.engine) as connection:
                    found = current_version(connection)
                if found != t.SCHEMA_VERSION:
                    raise LedgerSchemaError(not_this_version(found, ledger.dialect))
        except BaseException:
            ledger.dispose()  # no pooled connection may outlive a failed start
            raise
        return ledger

    @classmethod
    def open_for_worker(cls, url: str) -> Ledger:
        """The ledger as `run` opens it.

        SQLite: migrated at start-up, as ever (one machine, one file: `make demo` and a first
        run just work). PostgreSQL: never migrated by the worker (that is `referral-bridge
        migrate`, run by the owner role); the schema must be this version's, and the worker's
        role must not be able to alter the audit trail, else LedgerPrivilegeError.
        """
        if url.startswith("sqlite"):
            return cls.open(url)
        ledger = cls.open(url, migrate=False)
        try:
            with reading(ledger.engine) as connection:
                powers = audit_powers(connection)
        except BaseException:
            ledger.dispose()
            raise
        if powers:
            ledger.dispose()
            raise LedgerPrivilegeError(
                "refusing to start: the ledger role could rewrite the audit trail ("
                + "; ".join(powers)
                + "). Run the bridge as a role that may only SELECT and INSERT on rb_audit: "
                "`referral-bridge migrate --grant ROLE` as the owner role grants exactly that "
                '(docs/operations.md, "Two database roles")'
            )
        return ledger

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> int:
        try:
            with self.engine.begin() as connection:
                return migrate(connection)
        except LedgerSchemaError:
            raise
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
                raise LedgerPrivilegeError(
                    "this ledger role may not create or change the schema: run `referral-bridge "
                    "migrate` with REFERRAL_BRIDGE_LEDGER_URL naming the ledger's owner role"
                ) from None
            raise LedgerUnavailableError(describe(exc, self.engine)) from None

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """One atomic unit of work; database outages surface as LedgerUnavailableError."""
        with writing(self.engine) as connection:
            yield LedgerTransaction(connection)

    def dispose(self) -> None:
        self.engine.dispose()
