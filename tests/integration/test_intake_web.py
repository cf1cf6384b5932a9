"""The provider's web inbox over real HTTPS on the bounded server, in process (issue 13): sign-in,
sessions, CSRF, lock-out, teams, opening on demand, the record of views, withdrawals and the
outcome outbox. The browser drives the same pages in tests/e2e/test_intake_browser.py."""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from starlette.routing import Route

from referral_bridge.core import ids
from referral_bridge.core.intake import LockoutPolicy, Role
from referral_bridge.intake.accounts import Accounts, add_user, set_disabled
from referral_bridge.intake.outbox import OutcomeOutbox
from referral_bridge.intake.store import IntakeStore
from referral_bridge.intake.web import (
    SESSION_COOKIE,
    IntakeWeb,
    intake_routes,
)
from referral_bridge.provider.inbox import InboxStore, ReferralInbox
from referral_bridge.provider.inbox_app import InboxServer
from tests.fakes import KeyMaterial, make_keys
from tests.integration.test_delivery_helpers import LANCASHIRE, Pki, make_pki

# One group, so `make test` runs the module (one server, shared) in one process.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("intake_web")]

PASSWORD = "correct horse battery"
#: In every personal field of the test referrals; none may be in a log or a withdrawn page.
MARKERS = {
    "given": "Ottoline",
    "family": "Marklebury",
    "phone": "07700 900555",
    "email": "om.marker@example.org",
    "line": "9 Marker Row",
    "postcode": "ZZ1 9MK",
    "notes": "marker-call-after-four",
    "dob": "1974-03-12",
    "language": "marker-language",
}


def referral_payload(
    referral_id: str, service: str, *, revision: int | None = None
) -> dict[str, Any]:
    now = datetime.now(UTC)
    payload: dict[str, Any] = {
        "referral_id": referral_id,
        "case_ref": "C-1",
        "case_kind": "crime",
        "reported_at": (now - timedelta(hours=2)).isoformat(),
        "offence_label": "Burglary dwelling",
        "offence_category": "burglary",
        "flags": {"domestic_abuse": service == "domestic_abuse", "hate": False},
        "provider": LANCASHIRE,
        "service": service,
        "victim": {
            "victim_id": "P-1",
            "kind": "person",
            "name": {"title": "Ms", "given": MARKERS["given"], "family": MARKERS["family"]},
            "date_of_birth": MARKERS["dob"],
            "relationship": None,
            "contact": {
                "phone": MARKERS["phone"],
                "email": MARKERS["email"],
                "address": {"lines": [MARKERS["line"]], "postcode": MARKERS["postcode"]},
                "preferred": "phone",
                "safe_to_contact": True,
                "safe_contact_notes": MARKERS["notes"],
            },
            "needs": {
                "vulnerable": True,
                "intimidated": False,
                "persistently_targeted": False,
                "language": MARKERS["language"],
                "accessibility": None,
            },
        },
        "consent": {
            "regime": "opt_out",
            "state": "not_asked",
            "recorded_at": None,
            "recorded_by": None,
        },
        "lawful_basis": "public_task",
        "officer": {"collar": "PC 1", "name": "Officer Test", "unit": "Unit", "email": "o@x.org"},
        "deadline": (now + timedelta(hours=5)).isoformat(),
        "issued_at": now.isoformat(),
    }
    if revision is not None:
        payload["revision"] = revision
    return payload


def withdrawal_payload(referral_id: str, reason: str) -> dict[str, Any]:
    return {
        "referral_id": referral_id,
        "provider": LANCASHIRE,
        "case_ref": "C-1",
        "victim_id": "P-1",
        "reason": reason,
        "withdrawn_at": datetime.now(UTC).isoformat(),
        "issued_at": datetime.now(UTC).isoformat(),
    }


def event(keys: KeyMaterial, event_id: str, event_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "urn:test:referral-bridge",
            "type": event_type,
            "time": "2026-11-23T10:41:00Z",
            "datacontenttype": "application/jose",
            "data": keys.sealer().seal(LANCASHIRE, payload),
        }
    ).encode()


@dataclass
class Sent:
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, referral_id: str, outcome: str, _at: datetime, event_id: str) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("broker down")
            self.calls.append((referral_id, outcome, event_id))


@dataclass
class Site:
    url: str
    pki: Pki
    keys: KeyMaterial
    inbox: ReferralInbox
    intake: IntakeStore
    users: Path
    sent: Sent
    outbox: OutcomeOutbox
    web: IntakeWeb

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.pki.ca_cert)
        )

    def deliver(self, event_id: str, event_type: str, payload: dict[str, Any]) -> int:
        return self.inbox.receive(
            event(self.keys, event_id, event_type, payload),
            content_type="application/cloudevents+json",
            idempotency_key=None,
        ).status


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("intake-web")
    pki, keys = make_pki(folder / "pki"), make_keys(folder / "keys")
    users = folder / "users.json"
    add_user(users, "ada", PASSWORD, role=Role.INTAKE, teams=["general"])
    add_user(users, "dan", PASSWORD, role=Role.INTAKE, teams=["domestic_abuse"])
    add_user(users, "root", PASSWORD, role=Role.ADMIN, teams=[])
    store = InboxStore(folder / "inbox.sqlite3")
    inbox = ReferralInbox(
        provider=LANCASHIRE,
        decryption_keys=keys.provider_keys(LANCASHIRE),
        verification_keys=keys.bridge_verification_keys(),
        store=store,
    )
    intake = IntakeStore(store)
    sent = Sent()
    outbox = OutcomeOutbox(intake, sent, clock=lambda: datetime.now(UTC), idle_seconds=0.2)
    web = IntakeWeb(
        store=intake,
        accounts=Accounts(users),
        decryption_keys=keys.provider_keys(LANCASHIRE),
        verification_keys=keys.bridge_verification_keys(),
        outbox=outbox,
        provider=LANCASHIRE,
        lockout=LockoutPolicy(failures=3),
    )
    server = InboxServer(
        inbox,
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        path="/referrals",
        routes=intake_routes(web),
    )
    server.start()
    outbox.start()
    try:
        yield Site(
            url=f"https://127.0.0.1:{server.port}",
            pki=pki,
            keys=keys,
            inbox=inbox,
            intake=intake,
            users=users,
            sent=sent,
            outbox=outbox,
            web=web,
        )
    finally:
        outbox.stop()
        server.stop()
        store.close()


def csrf_of(page: str, name: str = "csrf_token") -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(site: Site, username: str, password: str = PASSWORD) -> httpx.Client:
    client = site.client()
    form = client.get("/inbox/sign-in")
    answer = client.post(
        "/inbox/sign-in",
        data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert answer.status_code == 303, answer.text
    return client


#: Pages anyone may ask for: health, the way in, and "/" (a redirect to the list).
OPEN_PATHS = {
    ("GET", "/healthz"),
    ("GET", "/"),
    ("GET", "/inbox/sign-in"),
    ("POST", "/inbox/sign-in"),
}


def test_every_page_without_a_session_redirects_to_sign_in_and_health_does_not(
    site: Site,
) -> None:
    """Walks every route the web inbox has, so a page added later cannot be forgotten."""
    walked = 0
    with site.client() as client:
        for route in intake_routes(site.web):
            assert isinstance(route, Route)
            for method in sorted(route.methods or ()):
                if method == "HEAD" or (method, route.path) in OPEN_PATHS:
                    continue
                path = route.path.replace("{referral_id}", "r-any")
                answer = client.request(
                    method, path, data={"outcome": "contacted"} if method == "POST" else None
                )
                assert answer.status_code == 303, (method, path)
                assert answer.headers["location"].startswith("/inbox/sign-in"), (method, path)
                walked += 1
        assert walked == 5
        assert client.get("/healthz").status_code == 200
        assert client.get("/").headers["location"] == "/inbox"


def test_the_session_cookie_is_secure_http_only_and_same_site_strict(site: Site) -> None:
    client = site.client()
    form = client.get("/inbox/sign-in")
    answer = client.post(
        "/inbox/sign-in",
        data={"username": "ada", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
    )
    cookies = [v for k, v in answer.headers.multi_items() if k == "set-cookie"]
    [session] = [c for c in cookies if c.startswith(SESSION_COOKIE)]
    parsed = SimpleCookie()
    parsed.load(session)
    morsel = parsed[SESSION_COOKIE]
    assert morsel["secure"]
    assert morsel["httponly"]
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/"
    assert "domain=" not in session.lower()
    page = client.get("/inbox")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    client.close()


def test_sign_out_ends_the_session(site: Site) -> None:
    client = sign_in(site, "ada")
    page = client.get("/inbox")
    cookie = client.cookies[SESSION_COOKIE]
    out = client.post("/inbox/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    replay = site.client()
    replay.cookies.set(SESSION_COOKIE, cookie, domain="127.0.0.1")
    assert replay.get("/inbox").status_code == 303
    replay.close()
    client.close()


def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    assert site.deliver("r-csrf", "victim.referral.created", referral_payload("r-csrf", "general"))
    client = sign_in(site, "ada")
    refused = client.post("/inbox/referrals/r-csrf/outcome", data={"outcome": "contacted"})
    wrong = client.post(
        "/inbox/referrals/r-csrf/outcome", data={"outcome": "contacted", "csrf_token": "x" * 43}
    )
    out = client.post("/inbox/sign-out", data={})
    assert (refused.status_code, wrong.status_code, out.status_code) == (403, 403, 403)
    assert site.intake.referral("r-csrf").listed.state.value == "new"  # type: ignore[union-attr]
    with site.client() as fresh:
        fresh.get("/inbox/sign-in")  # has the cookie, but the form lacks the token
        sign = fresh.post("/inbox/sign-in", data={"username": "ada", "password": PASSWORD})
        assert sign.status_code == 403
    client.close()


def test_a_post_from_another_origin_is_refused(site: Site) -> None:
    client = sign_in(site, "ada")
    page = client.get("/inbox")
    answer = client.post(
        "/inbox/sign-out",
        data={"csrf_token": csrf_of(page.text)},
        headers={"Origin": "https://elsewhere.example"},
    )
    assert answer.status_code == 403
    client.close()


def test_repeated_failures_lock_the_account_even_for_the_right_password(site: Site) -> None:
    add_user(site.users, "lee", PASSWORD, role=Role.INTAKE, teams=["general"])
    with site.client() as client:
        for _ in range(3):
            form = client.get("/inbox/sign-in")
            wrong = client.post(
                "/inbox/sign-in",
                data={
                    "username": "lee",
                    "password": "not it at all",
                    "csrf_token": csrf_of(form.text),
                    "next": "/inbox/views",
                },
            )
            assert wrong.status_code == 401
            assert "not right" in wrong.text
            assert csrf_of(wrong.text, "next") == "/inbox/views"  # kept for the next try
        form = client.get("/inbox/sign-in")
        locked = client.post(
            "/inbox/sign-in",
            data={"username": "lee", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
    assert locked.status_code == 429
    assert "locked" in locked.text


def test_a_disabled_user_is_signed_out_at_the_next_request(site: Site) -> None:
    add_user(site.users, "kim", PASSWORD, role=Role.INTAKE, teams=["general"])
    client = sign_in(site, "kim")
    assert client.get("/inbox").status_code == 200
    set_disabled(site.users, "kim")
    assert client.get("/inbox").status_code == 303
    client.close()


def test_a_worker_cannot_open_another_teams_referral(site: Site) -> None:
    site.deliver("r-da", "victim.referral.created", referral_payload("r-da", "domestic_abuse"))
    ada, dan = sign_in(site, "ada"), sign_in(site, "dan")
    refused = ada.get("/inbox/referrals/r-da")
    missing = ada.get("/inbox/referrals/no-such-referral")
    opened = dan.get("/inbox/referrals/r-da")
    listed = ada.get("/inbox")
    assert (refused.status_code, missing.status_code, opened.status_code) == (404, 404, 200)
    assert refused.text.count("None of your teams") == 1
    assert MARKERS["family"] not in refused.text
    assert MARKERS["family"] in opened.text
    assert "r-da" not in listed.text
    assert ada.get("/inbox", params={"team": "domestic_abuse"}).text.count("r-da") == 0
    views = [(v.username, v.referral_id) for v in site.intake.views()]
    assert ("dan", "r-da") in views
    assert ("ada", "r-da") not in views
    ada.close()
    dan.close()


def test_each_opening_is_recorded_and_listed_for_the_administrator_only(site: Site) -> None:
    site.deliver("r-view", "victim.referral.created", referral_payload("r-view", "general"))
    ada, root = sign_in(site, "ada"), sign_in(site, "root")
    ada.get("/inbox/referrals/r-view")
    ada.get("/inbox/referrals/r-view")
    log = root.get("/inbox/views")
    assert log.status_code == 200
    assert log.text.count("r-view") == 2
    assert ada.get("/inbox/views").status_code == 403
    ada.close()
    root.close()


def test_the_list_filters_by_team_and_state_newest_first(site: Site) -> None:
    site.deliver("r-old", "victim.referral.created", referral_payload("r-old", "general"))
    site.deliver("r-new", "victim.referral.created", referral_payload("r-new", "general"))
    site.deliver("r-da2", "victim.referral.created", referral_payload("r-da2", "domestic_abuse"))
    root = sign_in(site, "root")
    everything = root.get("/inbox").text
    general = root.get("/inbox", params={"team": "general", "state": "new"}).text
    domestic = root.get("/inbox", params={"team": "domestic_abuse"}).text
    assert everything.index('data-referral="r-new"') < everything.index('data-referral="r-old"')
    assert 'data-referral="r-new"' in general
    assert 'data-referral="r-da2"' not in general
    assert 'data-referral="r-da2"' in domestic
    assert 'data-referral="r-new"' not in domestic
    assert "due in 4 hours" in general or "due in 5 hours" in general
    root.close()


def test_an_update_replaces_what_is_shown(site: Site) -> None:
    site.deliver("r-upd", "victim.referral.created", referral_payload("r-upd", "general"))
    changed = referral_payload("r-upd", "general", revision=2)
    changed["victim"]["needs"]["accessibility"] = "needs a large-print letter"
    assert site.deliver(ids.update_id("r-upd", 2), "victim.referral.updated", changed) == 201
    ada = sign_in(site, "ada")
    page = ada.get("/inbox/referrals/r-upd").text
    assert "needs a large-print letter" in page
    assert "revision 2" in page
    ada.close()


def test_a_withdrawal_deletes_the_details_and_the_page_shows_none_of_them(site: Site) -> None:
    site.deliver("r-wd", "victim.referral.created", referral_payload("r-wd", "general"))
    ada = sign_in(site, "ada")
    assert MARKERS["phone"] in ada.get("/inbox/referrals/r-wd").text
    withdrawal = withdrawal_payload("r-wd", "withdrawn")
    assert site.deliver(ids.withdrawal_id("r-wd"), "victim.referral.withdrawn", withdrawal) == 201
    page = ada.get("/inbox/referrals/r-wd").text
    listed = ada.get("/inbox").text
    held = site.intake.referral("r-wd")
    assert held is not None
    assert held.token == ""
    assert "Referral withdrawn" in page
    row = listed[listed.index('data-referral="r-wd"') :].split("</tr>")[0]
    assert "withdrawn" in row
    for value in MARKERS.values():
        assert value not in page
    refused = ada.post(
        "/inbox/referrals/r-wd/outcome",
        data={"outcome": "contacted", "csrf_token": csrf_of(listed)},
    )
    assert "withdrawn" in refused.text
    ada.close()


def test_an_outcome_is_recorded_sent_until_confirmed_and_shown_as_sent(site: Site) -> None:
    site.deliver("r-out", "victim.referral.created", referral_payload("r-out", "general"))
    site.sent.fail = 1  # the broker refuses the first attempt
    ada = sign_in(site, "ada")
    page = ada.get("/inbox/referrals/r-out")
    recorded = ada.post(
        "/inbox/referrals/r-out/outcome",
        data={"outcome": "contacted", "csrf_token": csrf_of(page.text)},
    )
    assert recorded.status_code == 303
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while datetime.now(UTC) < deadline and not any(c[0] == "r-out" for c in site.sent.calls):
        threading.Event().wait(0.1)
    [call] = [c for c in site.sent.calls if c[0] == "r-out"]
    assert call[1] == "contacted"
    shown = ada.get("/inbox/referrals/r-out?recorded=1").text
    assert "sent to the force" in shown
    assert site.intake.unsent_count() == 0
    ada.close()


def test_no_personal_data_in_the_logs(site: Site) -> None:
    with structlog.testing.capture_logs() as logs:
        site.deliver("r-log", "victim.referral.created", referral_payload("r-log", "general"))
        ada = sign_in(site, "ada")
        page = ada.get("/inbox/referrals/r-log")
        ada.post(
            "/inbox/referrals/r-log/outcome",
            data={"outcome": "accepted", "csrf_token": csrf_of(page.text)},
        )
        with site.client() as other:
            form = other.get("/inbox/sign-in")
            other.post(
                "/inbox/sign-in",
                data={
                    "username": "ada",
                    "password": MARKERS["phone"],
                    "csrf_token": csrf_of(form.text),
                },
            )
            # A password typed into the username box.
            form = other.get("/inbox/sign-in")
            other.post(
                "/inbox/sign-in",
                data={"username": PASSWORD, "password": "", "csrf_token": csrf_of(form.text)},
            )
        ada.close()
    text = json.dumps(logs, default=str)
    assert "intake.referral_opened" in text
    assert "intake.sign_in_failed" in text
    for value in [*MARKERS.values(), PASSWORD]:
        assert value not in text


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(site: Site) -> None:
    with site.client() as client:
        for target, expected in (
            ("/inbox/views", "/inbox/views"),
            ("https://evil.example/", "/inbox"),
            ("//evil.example/inbox", "/inbox"),
        ):
            form = client.get("/inbox/sign-in", params={"next": target})
            answer = client.post(
                "/inbox/sign-in",
                data={
                    "username": "root",
                    "password": PASSWORD,
                    "csrf_token": csrf_of(form.text),
                    "next": csrf_of(form.text, "next"),
                },
            )
            assert answer.headers["location"] == expected


def test_a_withdrawal_that_overtakes_its_referral_leaves_it_withdrawn_and_unopened(
    site: Site,
) -> None:
    withdrawal = withdrawal_payload("r-late", "declined")
    assert site.deliver(ids.withdrawal_id("r-late"), "victim.referral.withdrawn", withdrawal) == 201
    assert site.deliver("r-late", "victim.referral.created", referral_payload("r-late", "general"))

    held = site.intake.referral("r-late")
    assert held is not None
    assert (held.listed.state.value, held.token) == ("withdrawn", "")


def test_a_store_from_before_the_web_inbox_gains_its_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE referrals (referral_id TEXT PRIMARY KEY, current_message_id TEXT NOT NULL,"
        " revision INTEGER NOT NULL, withdrawn_at TEXT);"
        "INSERT INTO referrals VALUES ('r-old', 'r-old', 1, NULL);"
    )
    old.commit()
    old.close()

    store = InboxStore(path)
    try:
        intake = IntakeStore(store)
        [listed] = intake.referrals(services=None)
    finally:
        store.close()
    assert (listed.referral_id, listed.service, listed.state.value) == ("r-old", None, "new")
