"""`referral-bridge provider inbox` as a provider runs it: a subprocess serving HTTPS on loopback.

A referral sealed by the bridge is accepted (201) and stored sealed, a repeat gets 409, a
tampered one 400, a plain HTTP client without the test CA is refused by TLS, and the store
never holds the victim's details in plain text.
"""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from referral_bridge.core import ids
from tests.e2e.helpers import cli_command, worker_environment
from tests.fakes import KeyMaterial, make_keys
from tests.integration.test_delivery_helpers import LANCASHIRE, Pki, make_pki
from tests.unit.factories import FAKE_PHONE
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e]


@dataclass
class RunningInbox:
    url: str
    store: Path
    pki: Pki
    keys: KeyMaterial
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def inbox_command(
    pki: Pki,
    keys: KeyMaterial | tuple[Path, Path],
    port: int,
    store: Path,
    *,
    log_json: bool = False,
) -> list[str]:
    """`referral-bridge provider inbox` for LANCASHIRE on 127.0.0.1:`port`, POSTs on /referrals.

    `keys`: the test key material, or (the provider's private key set, the bridge's public one).
    """
    private, public = (
        (keys.provider_private[LANCASHIRE], keys.bridge_public)
        if isinstance(keys, KeyMaterial)
        else keys
    )
    return [
        *cli_command(),
        *(["--log-json"] if log_json else []),
        "provider",
        "inbox",
        "--listen",
        f"127.0.0.1:{port}",
        "--cert",
        str(pki.server_cert),
        "--key",
        str(pki.server_key),
        "--provider",
        LANCASHIRE,
        "--keys",
        str(private),
        "--verify-with",
        str(public),
        "--store",
        str(store),
        "--path",
        "/referrals",
    ]


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningInbox]:
    folder = tmp_path_factory.mktemp("inbox-cli")
    pki, keys = make_pki(folder / "pki"), make_keys(folder / "keys")
    port = free_port()
    store = folder / "inbox.sqlite3"
    process = subprocess.Popen(
        inbox_command(pki, keys, port, store),
        env=worker_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: listening(port), timeout=20), "the inbox did not start"
        yield RunningInbox(
            url=f"https://127.0.0.1:{port}/referrals",
            store=store,
            pki=pki,
            keys=keys,
            process=process,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def referral_event(
    keys: KeyMaterial,
    referral_id: str,
    *,
    provider: str = LANCASHIRE,
    event_id: str | None = None,
    event_type: str = "victim.referral.created",
) -> bytes:
    token = keys.sealer().seal(
        LANCASHIRE,
        {"referral_id": referral_id, "provider": provider, "victim": {"phone": FAKE_PHONE}},
    )
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id or referral_id,
            "source": "urn:test:referral-bridge",
            "type": event_type,
            "time": "2026-11-23T10:41:00Z",
            "datacontenttype": "application/jose",
            "data": token,
        }
    ).encode()


def post(inbox: RunningInbox, body: bytes, key: str) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=inbox.pki.ca_cert)) as client:
        return client.post(
            inbox.url,
            content=body,
            headers={"Content-Type": "application/cloudevents+json", "Idempotency-Key": key},
        )


def test_a_sealed_referral_is_accepted_with_201(inbox: RunningInbox) -> None:
    assert post(inbox, referral_event(inbox.keys, "r-201"), "r-201").status_code == 201


def test_a_repeat_is_answered_409(inbox: RunningInbox) -> None:
    body = referral_event(inbox.keys, "r-409")
    post(inbox, body, "r-409")

    assert post(inbox, body, "r-409").status_code == 409


def test_a_tampered_referral_is_refused_with_400(inbox: RunningInbox) -> None:
    event = json.loads(referral_event(inbox.keys, "r-400"))
    parts = event["data"].split(".")
    parts[3] = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]
    event["data"] = ".".join(parts)

    response = post(inbox, json.dumps(event).encode(), "r-400")

    assert response.status_code == 400
    assert response.json()["status"] == "tampered"


def test_a_client_that_does_not_trust_the_test_ca_is_refused_by_tls(inbox: RunningInbox) -> None:
    with pytest.raises(httpx.ConnectError), httpx.Client() as client:
        client.post(inbox.url, content=b"{}")


def test_the_store_holds_no_plain_text_personal_data(inbox: RunningInbox) -> None:
    post(inbox, referral_event(inbox.keys, "r-plain"), "r-plain")

    files = [inbox.store, *inbox.store.parent.glob("inbox.sqlite3*")]
    assert all(FAKE_PHONE.encode() not in path.read_bytes() for path in files if path.exists())


def test_a_referral_addressed_to_another_provider_is_refused_with_400(inbox: RunningInbox) -> None:
    body = referral_event(inbox.keys, "r-other", provider="homicide-service")

    response = post(inbox, body, "r-other")

    assert (response.status_code, response.json()["status"]) == (400, "wrong_provider")


def test_a_referral_replayed_as_its_own_withdrawal_is_refused_with_400(
    inbox: RunningInbox,
) -> None:
    withdrawal = ids.withdrawal_id("r-replayed")
    body = referral_event(
        inbox.keys, "r-replayed", event_id=withdrawal, event_type="victim.referral.withdrawn"
    )

    response = post(inbox, body, withdrawal)

    assert (response.status_code, response.json()["status"]) == (400, "type_mismatch")


def test_the_store_and_its_wal_files_are_owner_only(inbox: RunningInbox) -> None:
    post(inbox, referral_event(inbox.keys, "r-modes"), "r-modes")

    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in inbox.store.parent.glob("inbox.sqlite3*")
    }
    assert set(modes) >= {"inbox.sqlite3", "inbox.sqlite3-wal"}
    assert set(modes.values()) == {0o600}
