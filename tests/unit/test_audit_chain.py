"""The audit trail's hash chain as pure functions: hashing a record, verifying a chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_bridge.core.audit_chain import (
    GENESIS,
    HASHED_FIELDS,
    ChainReport,
    encode,
    row_hash,
    verify_chain,
)

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


def record(n: int, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "at": AT + timedelta(minutes=n),
        "action": "referral_sent",
        "actor": "referral-bridge",
        "message_id": f"R-{n}",
        "provider": "lancs",
        "case_ref": "LC-1",
        "victim_id": f"P-{n}",
        "lawful_basis": "consent",
        "consent_state": "given",
        "consent_regime": "explicit",
        "consent_recorded_at": AT,
        "consent_recorded_by": "PC 4412",
        "detail": "delivered by amqp",
    }
    fields.update(changes)
    return fields


def chain(count: int, *, server: bool = False) -> list[dict[str, Any]]:
    """`count` rows as `append_audit` leaves them (ids 1..count); `server`: PostgreSQL's time."""
    rows, prev = [], GENESIS
    for n in range(1, count + 1):
        fields = record(n)
        digest = row_hash(prev, fields)
        server_at = fields["at"] + timedelta(seconds=1) if server else None
        rows.append(
            {**fields, "id": n, "prev_hash": prev, "row_hash": digest, "server_at": server_at}
        )
        prev = digest
    return rows


def rehash(rows: list[dict[str, Any]], start: int) -> None:
    """What an attacker who can write every row does: recompute the chain from `start` on."""
    prev = rows[start - 1]["row_hash"] if start else GENESIS
    for row in rows[start:]:
        row["prev_hash"] = prev
        row["row_hash"] = prev = row_hash(prev, row)


class TestHashing:
    def test_the_same_fields_after_the_same_record_give_the_same_hash(self) -> None:
        assert row_hash(GENESIS, record(1)) == row_hash(GENESIS, dict(record(1)))

    @pytest.mark.parametrize("name", HASHED_FIELDS)
    def test_every_hashed_field_changes_the_hash(self, name: str) -> None:
        original = record(1)
        changed = {**original, name: AT - timedelta(days=1) if name.endswith("at") else "other"}

        assert row_hash(GENESIS, changed) != row_hash(GENESIS, original)

    def test_the_previous_hash_is_part_of_it(self) -> None:
        assert row_hash(GENESIS, record(1)) != row_hash("f" * 64, record(1))

    def test_a_time_is_hashed_as_the_same_instant_in_any_zone(self) -> None:
        from zoneinfo import ZoneInfo

        london = record(1, at=record(1)["at"].astimezone(ZoneInfo("Europe/London")))

        assert row_hash(GENESIS, london) == row_hash(GENESIS, record(1))

    def test_none_and_a_missing_field_are_the_same(self) -> None:
        """A column left out of an insert is stored NULL: the hash must agree with the row."""
        fields = record(1, detail=None)
        del fields["consent_regime"]

        assert row_hash(GENESIS, fields) == row_hash(GENESIS, {**fields, "consent_regime": None})

    def test_the_id_and_the_server_time_are_not_hashed(self) -> None:
        """Both are set by the database after the hash is computed."""
        assert encode({**record(1), "id": 7, "server_at": AT}) == encode(record(1))

    @given(st.text(max_size=50), st.text(max_size=50))
    def test_moving_text_between_fields_changes_the_hash(self, a: str, b: str) -> None:
        """The encoding is structured (JSON), so "ab" + "" never hashes like "a" + "b"."""
        if a == b:
            return
        one = record(1, detail=a, actor=b)
        two = record(1, detail=b, actor=a)

        assert row_hash(GENESIS, one) != row_hash(GENESIS, two)


class TestVerify:
    def test_an_untouched_chain_is_intact_and_names_its_head(self) -> None:
        rows = chain(5)

        report = verify_chain(rows)

        assert report == ChainReport(5, 5, rows[-1]["row_hash"], None)
        assert report.intact

    def test_an_empty_trail_is_intact(self) -> None:
        assert verify_chain([]) == ChainReport(0, None, None, None)

    def test_an_edited_field_is_found_at_its_record(self) -> None:
        rows = chain(5)
        rows[2]["provider"] = "someone-else"

        report = verify_chain(rows)

        assert report.broken is not None
        assert (report.broken.id, report.checked) == (3, 2)
        assert "edited" in report.broken.reason

    def test_a_deleted_record_is_found_at_the_record_after_it(self) -> None:
        rows = chain(5)
        del rows[2]

        report = verify_chain(rows)

        assert report.broken is not None
        assert report.broken.id == 4
        assert "record 2" in report.broken.reason

    def test_a_record_slipped_in_between_is_found(self) -> None:
        rows = chain(5)
        forged = {**record(9, at=AT - timedelta(days=30)), "id": 3}
        forged["prev_hash"] = rows[1]["row_hash"]
        forged["row_hash"] = row_hash(forged["prev_hash"], forged)
        later = [{**row, "id": row["id"] + 1} for row in rows[2:]]

        report = verify_chain([*rows[:2], forged, *later])

        assert report.broken is not None
        assert report.broken.id == 4  # the record that followed record 2 no longer follows

    def test_reordered_records_are_found(self) -> None:
        rows = chain(5)
        rows[1], rows[2] = {**rows[2], "id": 2}, {**rows[1], "id": 3}

        report = verify_chain(rows)

        assert report.broken is not None
        assert report.broken.id == 2

    def test_a_record_without_a_hash_is_found(self) -> None:
        rows = chain(3)
        rows[1] = {**rows[1], "row_hash": None}

        report = verify_chain(rows)

        assert report.broken is not None
        assert report.broken.id == 2

    def test_a_chain_rewritten_from_the_start_passes_without_an_anchor(self) -> None:
        """The limit of an unkeyed chain: whoever can rewrite every row can hide an edit."""
        rows = chain(5)
        rows[2]["provider"] = "someone-else"
        rehash(rows, 0)

        assert verify_chain(rows).intact

    def test_an_anchor_kept_elsewhere_catches_a_rewritten_chain(self) -> None:
        rows = chain(5)
        anchor = (4, rows[3]["row_hash"])
        rows[2]["provider"] = "someone-else"
        rehash(rows, 2)

        report = verify_chain(rows, anchor=anchor)

        assert report.broken is not None
        assert report.broken.id == 4

    def test_an_anchor_catches_records_removed_from_the_end(self) -> None:
        rows = chain(5)
        anchor = (5, rows[4]["row_hash"])

        report = verify_chain(rows[:3], anchor=anchor)

        assert report.broken is not None
        assert report.broken.id == 5
        assert "missing" in report.broken.reason


class TestServerTime:
    def test_a_record_written_before_the_one_ahead_of_it_is_found(self) -> None:
        """Only someone bypassing the trigger can set server_at: going back shows it."""
        rows = chain(4, server=True)
        rows[2]["server_at"] = rows[1]["server_at"] - timedelta(hours=1)

        report = verify_chain(rows)

        assert report.broken is not None
        assert report.broken.id == 3
        assert "out of turn" in report.broken.reason

    def test_a_backdated_record_is_flagged_by_its_distance_from_the_server_time(self) -> None:
        rows = chain(3, server=True)
        backdated = replace_fields(rows, 2, at=AT - timedelta(days=30))

        report = verify_chain(backdated, max_skew=SKEW)

        assert report.broken is None
        assert report.skewed == (3,)
        assert not report.intact

    def test_records_within_the_skew_are_fine(self) -> None:
        assert verify_chain(chain(3, server=True), max_skew=SKEW).intact

    def test_records_from_before_the_server_time_existed_are_allowed(self) -> None:
        rows = chain(4, server=True)
        rows[0]["server_at"] = rows[1]["server_at"] = None

        assert verify_chain(rows, max_skew=SKEW).intact

    def test_a_record_without_server_time_after_ones_with_it_is_found(self) -> None:
        rows = chain(4, server=True)
        rows[2]["server_at"] = None

        report = verify_chain(rows)

        assert report.broken is not None
        assert report.broken.id == 3


def replace_fields(rows: list[dict[str, Any]], index: int, **changes: Any) -> list[dict[str, Any]]:
    """`rows` with one record's fields changed and the chain recomputed from it (an insert
    with a consistent hash, as the bridge's own role could write)."""
    copied = [dict(row) for row in rows]
    copied[index].update(changes)
    rehash(copied, index)
    return copied


@given(
    count=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_any_single_change_is_found_at_the_first_record_it_affects(
    count: int, data: st.DataObject
) -> None:
    """Edit one field, delete one record or swap two: verify names the first record that no
    longer follows (the edited one, or the one after a gap or a swap)."""
    rows = chain(count)
    kind = data.draw(st.sampled_from(["edit", "delete", "swap"] if count > 1 else ["edit"]))
    index = data.draw(st.integers(min_value=0, max_value=count - 1))
    if kind == "edit":
        name = data.draw(st.sampled_from([n for n in HASHED_FIELDS if not n.endswith("at")]))
        rows[index][name] = f"{rows[index][name]}!"
        expected = index + 1
    elif kind == "delete":
        if index == count - 1:
            index -= 1  # removing the last record needs an anchor (tested above)
        del rows[index]
        expected = index + 2
    else:
        other = data.draw(
            st.integers(min_value=0, max_value=count - 1).filter(lambda i: i != index)
        )
        low, high = sorted((index, other))
        rows[low], rows[high] = {**rows[high], "id": low + 1}, {**rows[low], "id": high + 1}
        expected = low + 1

    report = verify_chain(rows)

    assert report.broken is not None
    assert report.broken.id == expected
