"""The web inbox's tables, in the receiver's own SQLite file (`InboxStore`), so that receiving,
withdrawing and recording an outcome share one database and one lock.

Nothing here holds personal data in plain text: sessions are kept as digests of their ids,
the view record and the outcome outbox hold usernames, referral ids, outcomes and times.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from referral_bridge.core.intake import IntakeState, state_of
from referral_bridge.provider.inbox import InboxStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS staff_sessions (
    id_digest    TEXT PRIMARY KEY,
    username     TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sign_in_failures (
    name_digest TEXT NOT NULL,
    failed_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sign_in_failures_by_name ON sign_in_failures (name_digest);
CREATE TABLE IF NOT EXISTS referral_views (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    viewed_at   TEXT NOT NULL,
    username    TEXT NOT NULL,
    referral_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcome_outbox (
    event_id        TEXT PRIMARY KEY,
    referral_id     TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    at              TEXT NOT NULL,
    recorded_by     TEXT NOT NULL,
    sent_at         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outcome_outbox_by_referral ON outcome_outbox (referral_id);
"""

#: A session unused this long ends; so does any session this old.
SESSION_IDLE = timedelta(minutes=30)
SESSION_LONGEST = timedelta(hours=12)


def _digest(text: str) -> str:
    """Session ids, and names tried at sign-in (which may be a password typed in the wrong
    box), are kept as digests only."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    csrf_token: str


@dataclass(frozen=True, slots=True)
class ListedReferral:
    """A row of the intake list: no personal data, nothing decrypted."""

    referral_id: str
    service: str | None
    deadline: datetime | None
    received_at: datetime | None
    updated: bool
    state: IntakeState
    #: Whether the latest recorded outcome has been confirmed by the force's broker.
    outcome_sent: bool | None


@dataclass(frozen=True, slots=True)
class HeldReferral:
    listed: ListedReferral
    #: The sealed token of the current revision; empty once withdrawn.
    token: str
    revision: int


@dataclass(frozen=True, slots=True)
class PendingOutcome:
    event_id: str
    referral_id: str
    outcome: str
    at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class View:
    viewed_at: datetime
    username: str
    referral_id: str


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


_LIST_COLUMNS = """
    r.referral_id, r.service, r.deadline, r.received_at, r.revision, r.withdrawn_at, r.outcome,
    (SELECT o.sent_at IS NOT NULL FROM outcome_outbox o WHERE o.referral_id = r.referral_id
     ORDER BY o.at DESC, o.rowid DESC LIMIT 1)
"""


def _listed(row: tuple[object, ...]) -> ListedReferral:
    referral_id, service, deadline, received, revision, withdrawn, outcome, sent = row
    return ListedReferral(
        referral_id=str(referral_id),
        service=str(service) if service is not None else None,
        deadline=_time(str(deadline) if deadline else None),
        received_at=_time(str(received) if received else None),
        updated=int(str(revision)) > 1,
        state=state_of(str(outcome) if outcome else None, withdrawn is not None),
        outcome_sent=None if sent is None else bool(sent),
    )


class IntakeStore:
    """Sessions, sign-in failures, the record of views and the outcome outbox."""

    def __init__(self, inbox: InboxStore) -> None:
        self.inbox = inbox
        with inbox.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # --- the intake list and one referral ---

    def referrals(
        self, *, services: Collection[str] | None, states: Collection[IntakeState] = ()
    ) -> list[ListedReferral]:
        """Newest first; `services` None means every team (an administrator's list)."""
        # Only our own column list and "?" placeholders are formatted in; values are bound.
        query = f"SELECT {_LIST_COLUMNS} FROM referrals r"  # noqa: S608
        parameters: list[str] = []
        if services is not None:
            if not services:
                return []
            query += f" WHERE r.service IN ({', '.join('?' * len(services))})"
            parameters += sorted(services)
        query += " ORDER BY coalesce(r.received_at, '') DESC, r.referral_id"
        with self.inbox.transaction() as db:
            rows = db.execute(query, parameters).fetchall()
        listed = [_listed(row) for row in rows]
        return [r for r in listed if r.state in states] if states else listed

    def referral(self, referral_id: str) -> HeldReferral | None:
        with self.inbox.transaction() as db:
            row = db.execute(
                f"SELECT {_LIST_COLUMNS}, i.token, r.revision FROM referrals r "  # noqa: S608
                "JOIN inbox i ON i.message_id = r.current_message_id WHERE r.referral_id = ?",
                (referral_id,),
            ).fetchone()
        if row is None:
            return None
        return HeldReferral(listed=_listed(row[:8]), token=str(row[8]), revision=int(row[9]))

    def services(self) -> list[str]:
        with self.inbox.transaction() as db:
            rows = db.execute(
                "SELECT DISTINCT service FROM referrals WHERE service IS NOT NULL ORDER BY 1"
            ).fetchall()
        return [str(row[0]) for row in rows]

    # --- who opened what ---

    def record_view(self, username: str, referral_id: str, at: datetime) -> None:
        with self.inbox.transaction() as db:
            db.execute(
                "INSERT INTO referral_views (viewed_at, username, referral_id) VALUES (?, ?, ?)",
                (at.isoformat(), username, referral_id),
            )

    def views(self, *, limit: int = 500) -> list[View]:
        with self.inbox.transaction() as db:
            rows = db.execute(
                "SELECT viewed_at, username, referral_id FROM referral_views "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [View(datetime.fromisoformat(r[0]), str(r[1]), str(r[2])) for r in rows]

    # --- sessions and sign-in failures ---

    def create_session(self, username: str, now: datetime) -> tuple[str, Session]:
        """A new session (its id goes in the cookie; only a digest of it is stored)."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.inbox.transaction() as db:
            db.execute(
                "INSERT INTO staff_sessions VALUES (?, ?, ?, ?, ?)",
                (_digest(session_id), username, csrf, now.isoformat(), now.isoformat()),
            )
        return session_id, Session(username, csrf)

    def session(self, session_id: str, now: datetime) -> Session | None:
        """The live session with this id (and it is marked used now), or None."""
        digest = _digest(session_id)
        with self.inbox.transaction() as db:
            row = db.execute(
                "SELECT username, csrf_token, created_at, last_seen_at FROM staff_sessions "
                "WHERE id_digest = ?",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            created, seen = datetime.fromisoformat(row[2]), datetime.fromisoformat(row[3])
            if now - seen > SESSION_IDLE or now - created > SESSION_LONGEST:
                db.execute("DELETE FROM staff_sessions WHERE id_digest = ?", (digest,))
                return None
            db.execute(
                "UPDATE staff_sessions SET last_seen_at = ? WHERE id_digest = ?",
                (now.isoformat(), digest),
            )
        return Session(str(row[0]), str(row[1]))

    def end_session(self, session_id: str) -> None:
        with self.inbox.transaction() as db:
            db.execute("DELETE FROM staff_sessions WHERE id_digest = ?", (_digest(session_id),))

    def end_sessions_of(self, username: str) -> None:
        with self.inbox.transaction() as db:
            db.execute("DELETE FROM staff_sessions WHERE username = ?", (username,))

    def record_failure(self, username: str, at: datetime) -> None:
        with self.inbox.transaction() as db:
            db.execute(
                "INSERT INTO sign_in_failures VALUES (?, ?)", (_digest(username), at.isoformat())
            )

    def failures(self, username: str, since: datetime) -> list[datetime]:
        with self.inbox.transaction() as db:
            rows = db.execute(
                "SELECT failed_at FROM sign_in_failures WHERE name_digest = ? AND failed_at >= ?",
                (_digest(username), since.isoformat()),
            ).fetchall()
        return [datetime.fromisoformat(r[0]) for r in rows]

    def clear_failures(self, username: str) -> None:
        with self.inbox.transaction() as db:
            db.execute("DELETE FROM sign_in_failures WHERE name_digest = ?", (_digest(username),))

    # --- the outcome outbox ---

    def record_outcome(
        self, referral_id: str, outcome: str, *, at: datetime, recorded_by: str
    ) -> str | None:
        """Set the referral's outcome and queue it for the force, in one transaction.

        Returns the outcome's CloudEvent id (sending it again is harmless), or None when the
        referral is not held or was withdrawn (nothing recorded).
        """
        event_id = str(uuid.uuid4())
        with self.inbox.transaction() as db:
            changed = db.execute(
                "UPDATE referrals SET outcome = ?, outcome_at = ? "
                "WHERE referral_id = ? AND withdrawn_at IS NULL",
                (outcome, at.isoformat(), referral_id),
            ).rowcount
            if changed != 1:
                return None
            db.execute(
                "INSERT INTO outcome_outbox (event_id, referral_id, outcome, at, recorded_by, "
                "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, referral_id, outcome, at.isoformat(), recorded_by, at.isoformat()),
            )
        return event_id

    def due_outcomes(self, now: datetime, *, limit: int = 50) -> list[PendingOutcome]:
        with self.inbox.transaction() as db:
            rows = db.execute(
                "SELECT event_id, referral_id, outcome, at, attempts FROM outcome_outbox "
                "WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY at LIMIT ?",
                (now.isoformat(), limit),
            ).fetchall()
        return [
            PendingOutcome(str(r[0]), str(r[1]), str(r[2]), datetime.fromisoformat(r[3]), int(r[4]))
            for r in rows
        ]

    def unsent_count(self) -> int:
        with self.inbox.transaction() as db:
            row = db.execute("SELECT count(*) FROM outcome_outbox WHERE sent_at IS NULL")
            return int(row.fetchone()[0])

    def outcome_sent(self, event_id: str, at: datetime) -> None:
        with self.inbox.transaction() as db:
            db.execute(
                "UPDATE outcome_outbox SET sent_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE event_id = ?",
                (at.isoformat(), event_id),
            )

    def outcome_failed(self, event_id: str, *, error: str, retry_at: datetime) -> None:
        """`error`: the exception's kind only, never its text."""
        with self.inbox.transaction() as db:
            db.execute(
                "UPDATE outcome_outbox SET attempts = attempts + 1, last_error = ?, "
                "next_attempt_at = ? WHERE event_id = ?",
                (error, retry_at.isoformat(), event_id),
            )
