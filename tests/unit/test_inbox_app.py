"""The inbox's Starlette app without a server: answers are the receiver's JSON codes, and an
unexpected failure is answered 500 with nothing of the request in the log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from structlog.testing import capture_logs

from referral_bridge.cli import main as cli
from referral_bridge.provider.inbox import Answer, InboxStore, ReferralInbox
from referral_bridge.provider.inbox_app import create_inbox_app
from tests.fakes import KeyMaterial, make_keys

MARKER = "JANEDOEMARKER07700900456"


class ExplodingInbox(ReferralInbox):
    def receive(
        self,
        body: bytes,
        *,
        content_type: str | None,  # noqa: ARG002  (overrides ReferralInbox.receive)
        idempotency_key: str | None,  # noqa: ARG002  (overrides ReferralInbox.receive)
    ) -> Answer:
        raise ValueError(f"cannot parse {body.decode()}")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyMaterial, InboxStore]]:
    folder = tmp_path_factory.mktemp("inbox-app")
    store = InboxStore(folder / "inbox.sqlite3")
    try:
        yield make_keys(folder / "keys"), store
    finally:
        store.close()


def app(
    material: tuple[KeyMaterial, InboxStore], cls: type[ReferralInbox] = ReferralInbox
) -> Starlette:
    keys, store = material
    inbox = cls(
        provider="lancashire-victim-services",
        decryption_keys=keys.provider_keys("lancashire-victim-services"),
        verification_keys=keys.bridge_verification_keys(),
        store=store,
    )
    staff = Route("/staff", lambda _request: PlainTextResponse("staff page"))
    return create_inbox_app(inbox, path="/referrals", routes=[staff])


def call(app: Starlette, method: str, path: str, content: str | None = None) -> httpx.Response:
    """One request through httpx's ASGI transport (no server, no network)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inbox") as client:
            return await client.request(method, path, content=content)

    return asyncio.run(send())


def test_an_unexpected_failure_is_answered_500_and_logged_by_kind_only(
    material: tuple[KeyMaterial, InboxStore],
) -> None:
    with capture_logs() as logs:
        response = call(app(material, ExplodingInbox), "POST", "/referrals", MARKER)

    assert (response.status_code, response.json()) == (500, {"status": "internal_error"})
    assert {"event": "inbox.failed", "error_type": "ValueError", "log_level": "error"} in logs
    assert MARKER not in repr(logs)


def test_another_path_is_404_and_another_method_405_as_json(
    material: tuple[KeyMaterial, InboxStore],
) -> None:
    inbox = app(material)

    assert call(inbox, "POST", "/elsewhere", "{}").json() == {"status": "not_found"}
    response = call(inbox, "GET", "/referrals")
    assert (response.status_code, response.json()) == (405, {"status": "method_not_allowed"})


def test_routes_given_to_the_factory_are_served_beside_the_receiver(
    material: tuple[KeyMaterial, InboxStore],
) -> None:
    assert call(app(material), "GET", "/staff").text == "staff page"


@pytest.mark.parametrize(
    "option",
    [
        ["--max-connections", "0"],
        ["--max-connections", "²"],
        ["--request-deadline", "0"],
        ["--request-deadline", "nan"],
    ],
)
def test_the_inbox_refuses_limits_that_are_not_positive(option: list[str]) -> None:
    required = ["--cert", "c", "--key", "k", "--provider", "p", "--keys", "k", "--store", "s"]
    with pytest.raises(SystemExit) as caught:
        cli.main(["provider", "inbox", *required, "--verify-with", "v", *option])

    assert caught.value.code == cli.RET_USAGE
