"""The reference inbox's own checks: addressed to it, type and id matching the signed payload,
and a store nobody else can read (issue 3 review, findings 6 and 7)."""

from __future__ import annotations

import json
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from referral_bridge.core import ids
from referral_bridge.provider.inbox import Answer, InboxStore, ReferralInbox
from tests.fakes import KeyMaterial, make_keys
from tests.integration.test_delivery_helpers import (
    HOMICIDE,
    LANCASHIRE,
    make_pki,
    running_inbox,
)

pytestmark = pytest.mark.integration

CREATED = "victim.referral.created"
WITHDRAWN = "victim.referral.withdrawn"
UPDATED = "victim.referral.updated"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InboxStore]:
    opened = InboxStore(tmp_path / "inbox.sqlite3")
    yield opened
    opened.close()


@pytest.fixture
def inbox(keys: KeyMaterial, store: InboxStore) -> ReferralInbox:
    return ReferralInbox(
        provider=LANCASHIRE,
        decryption_keys=keys.provider_keys(LANCASHIRE),
        verification_keys=keys.bridge_verification_keys(),
        store=store,
        store_plaintext=True,
    )


def referral(referral_id: str = "r-1", provider: str = LANCASHIRE) -> dict[str, Any]:
    return {"referral_id": referral_id, "provider": provider, "victim": {"name": "X"}}


def withdrawal(referral_id: str = "r-1", provider: str = LANCASHIRE) -> dict[str, Any]:
    # Contract version 2: a withdrawal names its provider in the signed payload.
    return {
        "referral_id": referral_id,
        "provider": provider,
        "withdrawn_at": "2026-11-23T10:41:00Z",
    }


def update(referral_id: str = "r-1", revision: int = 2, name: str = "Y") -> dict[str, Any]:
    return {**referral(referral_id), "victim": {"name": name}, "revision": revision}


def post(
    inbox: ReferralInbox, keys: KeyMaterial, payload: dict[str, Any], event_id: str, kind: str
) -> Answer:
    token = keys.sealer().seal(LANCASHIRE, payload)
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "urn:test",
            "type": kind,
            "datacontenttype": "application/jose",
            "data": token,
        }
    ).encode()
    return inbox.receive(body, content_type="application/cloudevents+json", idempotency_key=None)


class TestAddressAndType:
    def test_a_referral_for_another_provider_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, referral(provider=HOMICIDE), "r-1", CREATED)

        assert (answer.status, answer.code) == (400, "wrong_provider")

    def test_a_sealed_referral_replayed_as_a_withdrawal_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, referral(), "anything-else", WITHDRAWN)

        assert (answer.status, answer.code) == (400, "type_mismatch")

    def test_a_withdrawal_under_an_id_that_is_not_its_own_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, withdrawal(), "anything-else", WITHDRAWN)

        assert (answer.status, answer.code) == (400, "id_mismatch")

    def test_a_withdrawal_sent_as_a_referral_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, withdrawal(), "r-1", CREATED)

        assert (answer.status, answer.code) == (400, "type_mismatch")

    def test_a_withdrawal_under_its_own_id_is_accepted(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, withdrawal(), ids.withdrawal_id("r-1"), WITHDRAWN)

        assert (answer.status, answer.code) == (201, "accepted")

    def test_a_withdrawal_naming_another_provider_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        """Issue 10 finding 8: another provider's withdrawal replayed to this one."""
        payload = withdrawal(provider=HOMICIDE)

        answer = post(inbox, keys, payload, ids.withdrawal_id("r-1"), WITHDRAWN)

        assert (answer.status, answer.code) == (400, "wrong_provider")

    def test_a_withdrawal_naming_no_provider_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        payload = {k: v for k, v in withdrawal().items() if k != "provider"}

        answer = post(inbox, keys, payload, ids.withdrawal_id("r-1"), WITHDRAWN)

        assert (answer.status, answer.code) == (400, "no_provider")


class TestUpdatesAndWithdrawals:
    """The inbox applies an update, marks a withdrawal, and never accepts an update for a
    referral it does not hold."""

    def test_an_update_replaces_what_is_held_for_its_referral(
        self, inbox: ReferralInbox, keys: KeyMaterial, store: InboxStore
    ) -> None:
        post(inbox, keys, referral(), "r-1", CREATED)

        answer = post(inbox, keys, update(), ids.update_id("r-1", 2), UPDATED)

        assert (answer.status, answer.code) == (201, "accepted")
        assert store.current("r-1") == (ids.update_id("r-1", 2), 2, False)

    def test_an_older_revision_arriving_late_does_not_replace_a_newer_one(
        self, inbox: ReferralInbox, keys: KeyMaterial, store: InboxStore
    ) -> None:
        post(inbox, keys, referral(), "r-1", CREATED)
        post(inbox, keys, update(revision=3), ids.update_id("r-1", 3), UPDATED)

        answer = post(inbox, keys, update(revision=2), ids.update_id("r-1", 2), UPDATED)

        assert answer.status == 201
        assert store.current("r-1") == (ids.update_id("r-1", 3), 3, False)

    def test_an_update_for_a_referral_not_held_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial, store: InboxStore
    ) -> None:
        answer = post(inbox, keys, update(), ids.update_id("r-1", 2), UPDATED)

        assert (answer.status, answer.code) == (422, "unknown_referral")
        assert store.count() == 0

    def test_an_update_under_an_id_that_is_not_its_own_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        post(inbox, keys, referral(), "r-1", CREATED)

        answer = post(inbox, keys, update(), ids.update_id("r-1", 3), UPDATED)

        assert (answer.status, answer.code) == (400, "id_mismatch")

    def test_a_referral_replayed_as_an_update_is_refused(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        answer = post(inbox, keys, referral(), ids.update_id("r-1", 2), UPDATED)

        assert (answer.status, answer.code) == (400, "type_mismatch")

    def test_a_withdrawal_marks_the_referral_and_refuses_later_updates(
        self, inbox: ReferralInbox, keys: KeyMaterial, store: InboxStore
    ) -> None:
        post(inbox, keys, referral(), "r-1", CREATED)

        withdrawn = post(inbox, keys, withdrawal(), ids.withdrawal_id("r-1"), WITHDRAWN)
        late = post(inbox, keys, update(), ids.update_id("r-1", 2), UPDATED)

        assert withdrawn.status == 201
        assert store.current("r-1") == ("r-1", 1, True)
        assert (late.status, late.code) == (422, "referral_withdrawn")


class TestStoreFiles:
    def test_the_database_and_its_wal_and_shm_files_are_owner_only(
        self, inbox: ReferralInbox, keys: KeyMaterial, store: InboxStore
    ) -> None:
        assert post(inbox, keys, referral(), "r-1", CREATED).status == 201

        files = [Path(f"{store.path}{suffix}") for suffix in ("", "-wal", "-shm")]
        assert [stat.S_IMODE(path.stat().st_mode) for path in files] == [0o600] * 3

    def test_an_existing_store_left_readable_is_tightened(self, tmp_path: Path) -> None:
        path = tmp_path / "old.sqlite3"
        InboxStore(path).close()
        path.chmod(0o644)

        InboxStore(path).close()

        assert stat.S_IMODE(path.stat().st_mode) == 0o600


class TestHostileInputs:
    """Inputs that used to end in the wrong error (issue 10, finding 5) get their documented
    answer: no dropped connection, no traceback."""

    def test_deeply_nested_json_is_invalid_json(self, inbox: ReferralInbox) -> None:
        body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
        answer = inbox.receive(
            body, content_type="application/cloudevents+json", idempotency_key=None
        )
        assert (answer.status, answer.code) == (400, "invalid_json")

    def test_a_large_referral_the_bridge_sealed_is_accepted(
        self, inbox: ReferralInbox, keys: KeyMaterial
    ) -> None:
        # 50 KB sealed to about 90 KB: joserfc's default 64 KiB limit refused it as "tampered".
        payload = {**referral(), "victim": {"name": "X", "notes": "n" * 50_000}}
        assert post(inbox, keys, payload, "r-1", CREATED).code == "accepted"

    def test_a_content_length_of_superscript_two_is_answered_400(
        self, keys: KeyMaterial, tmp_path: Path
    ) -> None:
        pki = make_pki(tmp_path / "pki")
        with running_inbox(pki, keys, LANCASHIRE, tmp_path / "inbox.sqlite3") as running:
            context = ssl.create_default_context(cafile=str(pki.ca_cert))
            raw = socket.create_connection(("127.0.0.1", running.server.port), timeout=10)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                # Header bytes are read as Latin-1, so 0xB2 arrives as '²', which isdigit().
                tls.sendall(
                    b"POST /referrals HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/cloudevents+json\r\n"
                    b"Content-Length: \xb2\r\n\r\n{}"
                )
                answer = tls.recv(4096)
        # Answered, not a dropped connection (the bounded server's h11 refuses it).
        assert answer.startswith(b"HTTP/1.1 400 ")
