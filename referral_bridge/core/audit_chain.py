"""The audit trail's hash chain: each record's hash covers its fields and the previous hash.

Pure functions of rows: the ledger computes `row_hash` when it appends (under a lock, so the
chain is one line however many workers append) and `referral-bridge audit verify` walks the rows
in id order with `verify_chain`. A record edited, deleted, reordered or slipped in between two
others breaks the chain at the first row after the change. The hash has no key: whoever can write
every row can write a fresh, consistent chain; only a head recorded elsewhere (`--anchor`) or
the server's own clock on PostgreSQL (`server_at`, set by a trigger the bridge cannot alter)
shows that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: The `prev_hash` of the first record.
GENESIS = "0" * 64
#: Bumped if the encoding below ever changes (it is part of every hash).
ENCODING = "rb-audit-1"
#: The fields each hash covers, in this order. Not the id (assigned by the database after the
#: hash is computed) and not `server_at` (set by the database); their order is the chain's.
HASHED_FIELDS = (
    "at",
    "action",
    "actor",
    "message_id",
    "provider",
    "case_ref",
    "victim_id",
    "lawful_basis",
    "consent_state",
    "consent_regime",
    "consent_recorded_at",
    "consent_recorded_by",
    "detail",
)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("audit times are timezone-aware")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def encode(fields: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a record: its hashed fields as compact, sorted JSON."""
    document = {name: _canonical(fields.get(name)) for name in HASHED_FIELDS}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 over the encoding tag, the previous record's hash and this record's fields."""
    digest = hashlib.sha256()
    digest.update(f"{ENCODING}\n{prev_hash}\n".encode())
    digest.update(encode(fields))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first record at which the chain does not hold, and why (no field values: they may
    be what an attacker wrote)."""

    id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What `verify_chain` found: the records checked, the head, and the first break if any."""

    checked: int
    head_id: int | None
    head_hash: str | None
    broken: ChainBreak | None
    #: Records whose claimed time (`at`) is further than the allowed skew from the server's
    #: time when it was written (PostgreSQL only): a backdated (or postdated) insert.
    skewed: tuple[int, ...] = ()

    @property
    def intact(self) -> bool:
        return self.broken is None and not self.skewed


def verify_chain(  # noqa: C901 (one pass; each branch is one kind of break, in order)
    rows: Iterable[Mapping[str, Any]],
    *,
    max_skew: timedelta | None = None,
    anchor: tuple[int, str] | None = None,
) -> ChainReport:
    """Walk `rows` (mappings with id, prev_hash, row_hash, server_at and the hashed fields) in
    id order and report the first record that does not follow from the one before it.

    Checks, per record: it names the previous record's hash (a deleted, inserted or reordered
    record fails this), its own hash matches its fields (an edited one fails this), and where
    the database set `server_at` (PostgreSQL): it never goes back along the chain (records are
    appended one at a time) and, if `max_skew` is given, `at` lies within it. `anchor`, an
    (id, hash) taken earlier and kept elsewhere, must still be in the chain as it was: that
    catches a chain rewritten from that point, and records removed from its end.
    """
    expected = GENESIS
    checked = 0
    last_id: int | None = None
    last_server: datetime | None = None
    seen_server = False
    anchor_found = anchor is None
    skewed: list[int] = []

    def report(broken: ChainBreak | None) -> ChainReport:
        return ChainReport(
            checked, last_id, expected if last_id is not None else None, broken, tuple(skewed)
        )

    for row in rows:
        row_id = int(row["id"])
        if row.get("prev_hash") is None or row.get("row_hash") is None:
            return report(ChainBreak(row_id, "has no chain hash (written without the chain)"))
        if row["prev_hash"] != expected:
            what = "the first record" if expected == GENESIS else f"record {last_id}"
            return report(
                ChainBreak(
                    row_id,
                    f"does not follow {what}: a record before it was deleted, inserted, "
                    "reordered or changed",
                )
            )
        if row_hash(row["prev_hash"], row) != row["row_hash"]:
            return report(ChainBreak(row_id, "its fields do not match its hash: it was edited"))
        server_at: datetime | None = row.get("server_at")
        if server_at is None and seen_server:
            return report(
                ChainBreak(row_id, "has no server time although earlier records have one")
            )
        if server_at is not None:
            seen_server = True
            if last_server is not None and server_at < last_server:
                return report(
                    ChainBreak(
                        row_id,
                        "was written earlier (server time) than the record before it: "
                        "inserted out of turn",
                    )
                )
            last_server = server_at
            if max_skew is not None and abs(row["at"] - server_at) > max_skew:
                skewed.append(row_id)
        if anchor is not None and row_id == anchor[0]:
            if row["row_hash"] != anchor[1]:
                return report(ChainBreak(row_id, "is not the record anchored earlier"))
            anchor_found = True
        expected = row["row_hash"]
        last_id = row_id
        checked += 1
    if not anchor_found:
        assert anchor is not None
        return report(
            ChainBreak(anchor[0], "the anchored record is missing: the chain was cut short")
        )
    return report(None)
