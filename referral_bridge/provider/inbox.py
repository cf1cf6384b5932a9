"""The reference HTTPS receiver a provider (or a test) runs: `referral-bridge provider inbox`.

It shows the provider's side of contract §4 working end to end: it verifies each message's
signature against the force's public key set, decrypts it with the provider's own key set
(chosen by `kid`), checks that the signed payload is addressed to this provider and matches the
(unsigned) envelope's type and id, drops repeats by id (409), and stores each accepted message
durably in SQLite *as the sealed token* before answering 201. Plain text reaches the disk only when
`store_plaintext` is asked for. An update replaces what is held for its referral (the latest
revision is current) and is refused for a referral not held; a withdrawal marks the referral
withdrawn. Answers: 201 accepted, 409 already held, 4xx refused for good (for a referral, the
bridge then gives the officer a leaflet task), 503 when it cannot store right now.

This module holds what a referral means to the provider, with no HTTP in it; `inbox_app` serves
it over HTTPS on the bounded server.

Long on purpose: the reference receiver's whole contract side (open, verify, store, answer each
kind of message) reads best in one place, as a provider implementing their own would read it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from referral_bridge.core import ids
from referral_bridge.core.limits import MAX_SEALED_EVENT_BYTES
from referral_bridge.files import private_dir
from referral_bridge.sealing import KeySet, SealingError, open_event
from referral_bridge.wire import CLOUDEVENTS_JSON

log = structlog.get_logger("referral_bridge.provider.inbox")

REFERRAL_CREATED = "victim.referral.created"
REFERRAL_UPDATED = "victim.referral.updated"
REFERRAL_WITHDRAWN = "victim.referral.withdrawn"
REFERRAL_TYPES = (REFERRAL_CREATED, REFERRAL_UPDATED, REFERRAL_WITHDRAWN)
#: The largest referral event the bridge can send (core/limits.py); anything larger is not one.
MAX_BODY_BYTES = MAX_SEALED_EVENT_BYTES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    message_id   TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    referral_id  TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    recipient_kid TEXT NOT NULL,
    envelope     TEXT NOT NULL,
    token        TEXT NOT NULL,
    plaintext    TEXT
);
CREATE TABLE IF NOT EXISTS referrals (
    referral_id  TEXT PRIMARY KEY,
    current_message_id TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    withdrawn_at TEXT
)
"""

#: Added for the web inbox (issue 13): what the intake list shows without opening anything. None
#: of it is personal data: the team (service), the Victims' Code deadline, when it arrived, and
#: the outcome recorded. Added to older stores by `_add_columns`.
_REFERRAL_COLUMNS = {
    "service": "TEXT",
    "deadline": "TEXT",
    "received_at": "TEXT",
    "updated_at": "TEXT",
    "outcome": "TEXT",
    "outcome_at": "TEXT",
}


@dataclass(frozen=True, slots=True)
class InboxRecord:
    """One accepted referral or withdrawal, as stored: sealed, with PII-free metadata."""

    message_id: str
    event_type: str
    #: The referral's id; for a withdrawal, the referral it withdraws.
    referral_id: str
    received_at: datetime
    #: The provider key the referral was encrypted to (its kid).
    recipient_kid: str
    envelope: str
    token: str
    plaintext: str | None = None


@dataclass(frozen=True, slots=True)
class ReferralFacts:
    """What the intake list shows of a referral without opening it: no personal data."""

    service: str | None = None
    deadline: str | None = None

    @classmethod
    def of(cls, payload: dict[str, Any]) -> ReferralFacts:
        service, deadline = payload.get("service"), payload.get("deadline")
        return cls(
            service=service if isinstance(service, str) else None,
            deadline=deadline if isinstance(deadline, str) else None,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status and a small JSON body (codes and ids only)."""

    status: int
    code: str
    message_id: str | None = None

    def body(self) -> bytes:
        document: dict[str, Any] = {"status": self.code}
        if self.message_id is not None:
            document["id"] = self.message_id
        return json.dumps(document).encode()


class InboxStore:
    """Accepted messages in SQLite (WAL, synchronous=FULL): committed before 201 is answered."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent, tighten_existing=False)
        self._lock = threading.Lock()
        # The files hold sealed tokens (and plain text if asked): owner-only, like a key file.
        # Created under umask 077, so the -wal and -shm files SQLite makes are 0600 from the
        # start; files left by an older version are tightened.
        previous = os.umask(0o077)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._add_columns()
        finally:
            os.umask(previous)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").chmod(0o600)

    def _add_columns(self) -> None:
        held = {row[1] for row in self._db.execute("PRAGMA table_info(referrals)")}
        for name, kind in _REFERRAL_COLUMNS.items():
            if name not in held:
                self._db.execute(f"ALTER TABLE referrals ADD COLUMN {name} {kind}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The store's connection inside one immediate transaction, under the store's lock.

        For what shares this file (the web inbox's staff tables, `intake.store`): committed when
        the block ends, rolled back if it raises.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(
        self,
        record: InboxRecord,
        *,
        revision: int | None = None,
        facts: ReferralFacts | None = None,
    ) -> str:
        """Store the record and apply it to the referral it concerns, in one transaction.

        Returns `accepted`, `duplicate` (a message with its id is held), `unknown_referral` (an
        update for a referral not held) or `referral_withdrawn` (an update after a withdrawal).
        A withdrawal deletes the sealed referral and updates it withdraws (the personal details),
        in the same transaction.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                outcome = self._add(record, revision, facts or ReferralFacts())
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT" if outcome == "accepted" else "ROLLBACK")
            return outcome

    def _add(self, record: InboxRecord, revision: int | None, facts: ReferralFacts) -> str:
        state = self._db.execute(
            "SELECT revision, withdrawn_at FROM referrals WHERE referral_id = ?",
            (record.referral_id,),
        ).fetchone()
        if record.event_type == REFERRAL_UPDATED:
            if state is None:
                return "unknown_referral"
            if state[1] is not None:
                return "referral_withdrawn"
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.message_id,
                record.event_type,
                record.referral_id,
                record.received_at.isoformat(),
                record.recipient_kid,
                record.envelope,
                record.token,
                record.plaintext,
            ),
        )
        if cursor.rowcount != 1:
            return "duplicate"
        received = record.received_at.isoformat()
        if record.event_type == REFERRAL_CREATED:
            self._db.execute(
                "INSERT OR IGNORE INTO referrals (referral_id, current_message_id, revision, "
                "service, deadline, received_at, updated_at) VALUES (?, ?, 1, ?, ?, ?, ?)",
                (
                    record.referral_id,
                    record.message_id,
                    facts.service,
                    facts.deadline,
                    received,
                    received,
                ),
            )
            # A withdrawal that overtook its referral: the referral arrives withdrawn.
            withdrawn = self._db.execute(
                "SELECT received_at FROM inbox WHERE referral_id = ? AND event_type = ?",
                (record.referral_id, REFERRAL_WITHDRAWN),
            ).fetchone()
            if withdrawn is not None:
                self._withdraw(record.referral_id, str(withdrawn[0]))
        elif record.event_type == REFERRAL_UPDATED and revision is not None:
            # Revisions may arrive out of order: the highest one is what the provider holds.
            self._db.execute(
                "UPDATE referrals SET current_message_id = ?, revision = ?, "
                "service = coalesce(?, service), deadline = coalesce(?, deadline), "
                "updated_at = ? WHERE referral_id = ? AND revision < ?",
                (
                    record.message_id,
                    revision,
                    facts.service,
                    facts.deadline,
                    received,
                    record.referral_id,
                    revision,
                ),
            )
        else:
            self._withdraw(record.referral_id, received)
        return "accepted"

    def _withdraw(self, referral_id: str, at: str) -> None:
        """Mark the referral withdrawn and delete its personal details (the sealed tokens of
        the referral and its updates, and any plain text) at once."""
        self._db.execute(
            "UPDATE referrals SET withdrawn_at = coalesce(withdrawn_at, ?) WHERE referral_id = ?",
            (at, referral_id),
        )
        self._db.execute(
            "UPDATE inbox SET token = '', plaintext = NULL WHERE referral_id = ? "
            "AND event_type != ?",
            (referral_id, REFERRAL_WITHDRAWN),
        )

    def current(self, referral_id: str) -> tuple[str, int, bool] | None:
        """(message id of the current revision, revision, withdrawn) of a referral held."""
        with self._lock:
            row = self._db.execute(
                "SELECT current_message_id, revision, withdrawn_at FROM referrals "
                "WHERE referral_id = ?",
                (referral_id,),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), row[2] is not None)

    def message_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT message_id FROM inbox ORDER BY received_at").fetchall()
        return [str(row[0]) for row in rows]

    def get(self, message_id: str) -> InboxRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM inbox WHERE message_id = ?", (message_id,)
            ).fetchone()
        if row is None:
            return None
        return InboxRecord(
            message_id=row[0],
            event_type=row[1],
            referral_id=row[2],
            received_at=datetime.fromisoformat(row[3]),
            recipient_kid=row[4],
            envelope=row[5],
            token=row[6],
            plaintext=row[7],
        )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM inbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ReferralInbox:
    """What the receiver does with one request body, independent of HTTP."""

    def __init__(
        self,
        *,
        provider: str,
        decryption_keys: KeySet,
        verification_keys: KeySet,
        store: InboxStore,
        store_plaintext: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not decryption_keys.is_private:
            raise ValueError("the inbox needs the provider's private key set to decrypt")
        #: This provider's id: a referral addressed to another provider is refused.
        self.provider = provider
        self._decryption_keys = decryption_keys
        self._verification_keys = verification_keys
        self._store = store
        self._store_plaintext = store_plaintext
        self._clock = clock

    def receive(  # noqa: C901 (the contract's checks in its section 6 order)
        self, body: bytes, *, content_type: str | None, idempotency_key: str | None
    ) -> Answer:
        media_type = (content_type or "").split(";")[0].strip().lower()
        if media_type != CLOUDEVENTS_JSON:
            return Answer(415, "unsupported_media_type")
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
            return Answer(400, "invalid_json")
        if not isinstance(event, dict) or event.get("specversion") != "1.0":
            return Answer(400, "not_cloudevent")
        message_id, event_type = event.get("id"), event.get("type")
        if not isinstance(message_id, str) or not message_id:
            return Answer(400, "not_cloudevent")
        if event_type not in REFERRAL_TYPES:
            return Answer(400, "unknown_type", message_id)
        if idempotency_key is not None and idempotency_key != message_id:
            return Answer(400, "idempotency_key_mismatch", message_id)
        try:
            _, payload = open_event(
                body,
                decryption_keys=self._decryption_keys,
                verification_keys=self._verification_keys,
            )
        except SealingError as exc:
            # The error's class says what failed (unknown key, tampering, bad signature…).
            return Answer(400, _code(exc), message_id)
        refusal = self._check_payload(payload, event_type, message_id)
        if refusal is not None:
            return Answer(400, refusal, message_id)
        referral_id = str(payload["referral_id"])
        token = str(event["data"])
        record = InboxRecord(
            message_id=message_id,
            event_type=event_type,
            referral_id=referral_id,
            received_at=self._clock(),
            recipient_kid=_kid(token),
            envelope=json.dumps({k: v for k, v in event.items() if k != "data"}),
            token=token,
            plaintext=json.dumps(payload) if self._store_plaintext else None,
        )
        revision = payload.get("revision") if event_type == REFERRAL_UPDATED else None
        try:
            outcome = self._store.add(record, revision=revision, facts=ReferralFacts.of(payload))
        except sqlite3.Error as exc:
            log.error("inbox.store_failed", message_id=message_id, error_type=type(exc).__name__)
            return Answer(503, "store_unavailable", message_id)
        if outcome == "duplicate":
            return Answer(409, "duplicate", message_id)
        if outcome != "accepted":
            return Answer(422, outcome, message_id)
        return Answer(201, "accepted", message_id)

    def _check_payload(self, payload: Any, event_type: str, message_id: str) -> str | None:
        """Why the signed payload does not fit the envelope or this provider, or None.

        The envelope (type and id) is not signed, so it is checked against what is: a sealed
        referral replayed as a withdrawal, or a referral another provider re-encrypted to us,
        must be refused.
        """
        if not isinstance(payload, dict):
            return "not_a_referral"
        referral_id = payload.get("referral_id")
        if not isinstance(referral_id, str) or not referral_id:
            return "no_referral_id"
        if _shape(payload) != event_type:
            return "type_mismatch"
        # Every message names its provider in the signed payload (contract version 2: a
        # withdrawal too, so one provider cannot replay another's withdrawal to it).
        if "provider" not in payload:
            return "no_provider"
        if payload.get("provider") != self.provider:
            return "wrong_provider"
        if event_type == REFERRAL_CREATED:
            expected_id = referral_id
        elif event_type == REFERRAL_UPDATED:
            revision = payload.get("revision")
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 2:
                return "no_revision"
            expected_id = ids.update_id(referral_id, revision)
        else:
            expected_id = ids.withdrawal_id(referral_id)
        if message_id != expected_id:
            return "id_mismatch"
        return None


def _shape(payload: dict[str, Any]) -> str:
    """The message type a signed payload's fields say it is."""
    if "withdrawn_at" in payload and "victim" not in payload:
        return REFERRAL_WITHDRAWN
    return REFERRAL_UPDATED if "revision" in payload else REFERRAL_CREATED


def _code(exc: SealingError) -> str:
    """`UnknownKeyError` -> `unknown_key`: a stable, PII-free refusal reason."""
    name = type(exc).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _kid(token: str) -> str:
    """The kid in a JWE compact token's protected header (open_event has checked it)."""
    segment = token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return str(header.get("kid", ""))
