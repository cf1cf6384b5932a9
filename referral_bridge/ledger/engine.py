"""Connecting to the ledger's database, and saying in operators' words why it failed.

SQLite (WAL, `BEGIN IMMEDIATE`) serialises every write transaction, which is what a single
worker needs. PostgreSQL serialises per matter with row locks in `rb_locks` (see
`LedgerTransaction.lock`), so several workers can share the work queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from referral_bridge.errors import LedgerUnavailableError
from referral_bridge.files import private_sqlite
from referral_bridge.ledger import schema as t

#: PostgreSQL's SQLSTATE for "permission denied" (and "must be owner").
INSUFFICIENT_PRIVILEGE = "42501"
#: "database or disk is full" (SQLite's primary result code; extended codes share its low byte).
_SQLITE_FULL = 13
#: PostgreSQL's disk_full.
_DISK_FULL_SQLSTATE = "53100"


def create_ledger_engine(url: str) -> Engine:
    """An engine for this URL; LedgerUnavailableError for a bad URL or a missing driver."""
    try:
        if url.startswith("sqlite"):
            return _sqlite_engine(url)
        return create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # noqa: BLE001 (a bad URL or a missing driver)
        raise LedgerUnavailableError(
            f"cannot use ledger URL scheme: {type(exc).__name__}"
        ) from None


def refuse_missing_sqlite_file(url: str) -> None:
    """Raise LedgerUnavailableError if a SQLite URL names a file that does not exist.

    For operator tools: they must not create a SQLite ledger (under sudo its files would
    belong to root).
    """
    if not url.startswith("sqlite"):
        return
    try:
        database = make_url(url).database
    except Exception:  # noqa: BLE001 (a bad URL: reported by create_ledger_engine, as for the daemon)
        database = None
    if database and database != ":memory:" and not Path(database).is_file():
        raise LedgerUnavailableError(
            f"there is no ledger at {database}; check [ledger] url and [bridge] data_dir "
            "(or REFERRAL_BRIDGE_LEDGER_URL), or start the bridge once to create it"
        )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    # Not for a SQLite URI ("file:...?mode=ro&uri=true"): SQLite reads it, it is not a path.
    if database and database != ":memory:" and not database.startswith("file:"):
        private_sqlite(Path(database))  # it holds victims' snapshots: 0600, in a 0700 folder
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below issue BEGIN IMMEDIATE instead of pysqlite's deferred BEGIN,
        # so two processes never both read then fail to upgrade to a write lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def outages_translated(engine: Engine) -> Iterator[None]:
    """Turn a database outage (OperationalError) into LedgerUnavailableError, said for operators."""
    try:
        yield
    except OperationalError as exc:
        raise LedgerUnavailableError(describe(exc, engine)) from None


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only connection; outages surface as LedgerUnavailableError like writes do."""
    with outages_translated(engine), engine.connect() as connection:
        yield connection


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One committed transaction; database outages surface as LedgerUnavailableError."""
    with outages_translated(engine), engine.begin() as connection:
        yield connection


def not_this_version(found: int, dialect: str) -> str:
    """What to do when a ledger opened without migrating is not at this bridge's version."""
    if found > t.SCHEMA_VERSION:
        return (
            f"ledger schema is version {found}, newer than this bridge's {t.SCHEMA_VERSION}: "
            "use the referral-bridge version that wrote it"
        )
    state = "has no tables yet" if found == 0 else f"is at schema version {found}"
    how = (
        "run `referral-bridge migrate` as the ledger's owner role (not the bridge's role)"
        if dialect == "postgresql"
        else "run `referral-bridge migrate` (or start the bridge: it migrates SQLite at start-up)"
    )
    return (
        f"the ledger {state}, this bridge needs version {t.SCHEMA_VERSION} and does not migrate "
        f"it here: {how}, then try again"
    )


def _disk_full(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return True
    return getattr(exc.orig, "sqlstate", None) == _DISK_FULL_SQLSTATE


def describe(exc: DBAPIError, engine: Engine) -> str:
    """A message naming the database host, never the password, and what to do next."""
    url = engine.url
    where = f"{url.get_backend_name()} at {url.host or url.database}"
    if _disk_full(exc):
        # Not an outage to wait out: someone has to make room. Until then nothing is lost.
        return (
            f"ledger unavailable ({where}): its disk is full; free space on it (events are "
            "retried meanwhile and none is acknowledged unrecorded)"
        )
    return (
        f"ledger unavailable ({where}): {type(exc.orig).__name__}; "
        "check the database is running and reachable"
    )
