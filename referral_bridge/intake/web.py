"""The web inbox's pages: Starlette routes rendered from Jinja2 templates, nothing else.

Every page but `/healthz` needs a signed-in session; every form that changes something carries
the session's CSRF token (sign-in, before there is a session, a token kept in a cookie of its
own); cookies are `__Host-` prefixed, Secure, HttpOnly and SameSite=Strict; pages send a
Content-Security-Policy that allows nothing to be fetched or run. A referral is decrypted only
to show it, on the request, and only to a worker of its team; each opening is recorded.
What reaches the log is ids, usernames and kinds of error: never what a referral holds.

Long on purpose: the web inbox's routes and their forms share the session, CSRF and lock-out
checks, which are easiest to audit in one file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from referral_bridge.core.calendar import LONDON
from referral_bridge.core.intake import (
    OUTCOME_CHOICES,
    STATE_LABELS,
    IntakeState,
    LockoutPolicy,
    Role,
    closeness,
    locked_until,
    may_see,
)
from referral_bridge.intake.accounts import Account, Accounts
from referral_bridge.intake.outbox import OutcomeOutbox
from referral_bridge.intake.store import IntakeStore, Session
from referral_bridge.sealing import KeySet, SealingError, open_sealed

log = structlog.get_logger("referral_bridge.intake")

SESSION_COOKIE = "__Host-rb-session"
SIGN_IN_COOKIE = "__Host-rb-sign-in"
#: A form is a few fields; anything bigger is not one of ours.
MAX_FORM_BYTES = 16 * 1024
PREFIX = "/inbox"

_STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #fff;
  line-height: 1.5; font-size: 1.05rem; }
header.bar { background: #0b0c0c; color: #fff; padding: 0.6rem 1rem; display: flex;
  flex-wrap: wrap; gap: 0.5rem 1.5rem; align-items: center; justify-content: space-between; }
header.bar a, header.bar .who { color: #fff; }
header.bar form { display: inline; margin: 0; }
main { max-width: 62rem; margin: 0 auto; padding: 1rem; }
a { color: #1d4f91; } a:visited { color: #4c2c92; }
a:focus, button:focus, input:focus, select:focus, [tabindex]:focus {
  outline: 3px solid #ffbf47; outline-offset: 0; box-shadow: 0 0 0 5px #0b0c0c; }
.skip, .vh { position: absolute; left: -9999px; } .skip:focus { left: 1rem; top: 1rem;
  background: #ffbf47; color: #0b0c0c; padding: 0.5rem; z-index: 1; }
h1 { font-size: 1.7rem; margin: 0.5rem 0 1rem; } h2 { font-size: 1.3rem; margin-top: 1.8rem; }
label, legend { font-weight: 600; display: block; margin-bottom: 0.2rem; }
input[type=text], input[type=password], select { font: inherit; padding: 0.35rem;
  border: 2px solid #0b0c0c; min-width: 12rem; max-width: 100%; box-sizing: border-box; }
button { font: inherit; padding: 0.4rem 1rem; border: 2px solid #0b0c0c; background: #00703c;
  color: #fff; cursor: pointer; }
button.plain { background: #fff; color: #0b0c0c; }
header.bar button.plain { background: #0b0c0c; color: #fff; border-color: #fff; }
.field { margin-bottom: 1rem; }
.filters { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-end; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.45rem 0.6rem; border-bottom: 1px solid #b1b4b6;
  vertical-align: top; }
th { background: #f3f2f1; }
.tag { display: inline-block; padding: 0 0.4rem; font-weight: 700; border: 2px solid; }
.overdue { color: #942514; } .soon { color: #6f3800; } .done, .later, .unknown { color: #1b1b1b; }
.withdrawn { color: #383f43; }
.notice { border-left: 6px solid #1d70b8; padding: 0.5rem 1rem; background: #f3f2f1; }
.error { border-left: 6px solid #d4351c; padding: 0.5rem 1rem; background: #fff; color: #942514; }
dl.facts { display: grid; grid-template-columns: minmax(9rem, max-content) 1fr;
  gap: 0.3rem 1rem; margin: 0; }
dl.facts dt { font-weight: 700; } dl.facts dd { margin: 0; }
.important { border: 3px solid #0b0c0c; padding: 0.6rem 1rem; }
.important h2 { margin-top: 0.2rem; }
fieldset { border: none; padding: 0; margin: 0 0 1rem; }
.choice { display: flex; gap: 0.5rem; align-items: center; margin: 0.3rem 0; }
.choice label { font-weight: 400; margin: 0; display: inline; }
.choice input { width: 1.25rem; height: 1.25rem; margin: 0; }
@media (max-width: 40rem) { dl.facts { grid-template-columns: 1fr; } dl.facts dd {
  margin-bottom: 0.5rem; } }
"""
#: The inline stylesheet is allowed by its digest; no other style, script, image or frame is.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}

_ENVIRONMENT = Environment(
    loader=PackageLoader("referral_bridge.intake", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(moment: datetime | str | None) -> str:
    """Europe/London, as a person reads it: "Tue 1 Dec 2026, 09:05"."""
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return "-"
    local = moment.astimezone(LONDON)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M}"


def _when_exactly(moment: datetime) -> str:
    """With seconds, for the record of views."""
    local = moment.astimezone(LONDON)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M:%S}"


def _words(value: object) -> str:
    return str(value).replace("_", " ")


_ENVIRONMENT.filters["when"] = _when
_ENVIRONMENT.filters["when_exactly"] = _when_exactly
_ENVIRONMENT.filters["words"] = _words
_ENVIRONMENT.globals["style"] = _STYLE
_ENVIRONMENT.globals["prefix"] = PREFIX


class RefusedError(Exception):
    """Answer with this status and page instead (a 403, a 404, a redirect)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class IntakeWeb:
    """What the pages need: the store, the accounts, the provider's keys, the outbox."""

    store: IntakeStore
    accounts: Accounts
    decryption_keys: KeySet
    verification_keys: KeySet
    outbox: OutcomeOutbox | None = None
    provider: str = ""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)

    # --- rendering ---

    def page(
        self,
        template: str,
        *,
        status: int = 200,
        user: Account | None = None,
        session: Session | None = None,
        cookies: Mapping[str, str] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        html = _ENVIRONMENT.get_template(template).render(
            user=user,
            csrf=session.csrf_token if session else "",
            provider=self.provider,
            **values,
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        for name, value in (cookies or {}).items():
            set_cookie(response, name, value)
        return response

    def message(self, status: int, title: str, text: str, **values: Any) -> HTMLResponse:
        return self.page("message.html.j2", status=status, title=title, text=text, **values)

    # --- sessions ---

    def signed_in(self, request: Request) -> tuple[Session, Account]:
        """The request's live session and its active account; else a redirect to sign in."""
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self.store.session(session_id, self.clock()) if session_id else None
        account = self.accounts.active(session.username) if session else None
        if session is None or account is None:
            if session is not None and session_id:  # the account was disabled since
                self.store.end_session(session_id)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise RefusedError(
                redirect(f"{PREFIX}/sign-in?next={quote(target, safe='')}", headers=NO_STORE)
            )
        return session, account

    def check_csrf(self, form: Mapping[str, str], expected: str) -> None:
        given = form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning("intake.csrf_refused")
            raise RefusedError(
                self.message(
                    403,
                    "This form could not be accepted",
                    "It has expired or did not come from this inbox. Go back, reload the page "
                    "and try again.",
                )
            )

    # --- handlers (run on a worker thread: SQLite, argon2 and decrypting block) ---

    def sign_in_form(
        self, request: Request, *, status: int = 200, error: str = "", next_page: str = ""
    ) -> Response:
        token = secrets.token_urlsafe(32)
        return self.page(
            "sign_in.html.j2",
            status=status,
            sign_in_token=token,
            next=safe_next(next_page or request.query_params.get("next")),
            error=error,
            cookies={SIGN_IN_COOKIE: token},
        )

    def sign_in(self, request: Request, form: Mapping[str, str]) -> Response:
        self.check_csrf(form, request.cookies.get(SIGN_IN_COOKIE, ""))
        username = form.get("username", "").strip().lower()[:64]
        password = form.get("password", "")
        now = self.clock()
        policy = self.lockout
        until = locked_until(
            self.store.failures(username, now - policy.window - policy.lock), now, policy
        )
        # A name no account has may be a password typed in the wrong box: never logged.
        logged = username if self.accounts.exists(username) else "(unknown)"
        if until is not None:
            log.warning("intake.sign_in_locked", username=logged)
            return self.sign_in_form(
                request,
                status=429,
                error="Too many failed sign-ins: this account is locked until "
                f"{_when(until)}. Try again then, or ask your administrator.",
                next_page=form.get("next", ""),
            )
        account = self.accounts.verify(username, password) if username and password else None
        if account is None:
            self.store.record_failure(username, now)
            log.warning("intake.sign_in_failed", username=logged)
            return self.sign_in_form(
                request,
                status=401,
                error="The username or password is not right.",
                next_page=form.get("next", ""),
            )
        self.store.clear_failures(username)
        session_id, _ = self.store.create_session(account.username, now)
        log.info("intake.signed_in", username=account.username)
        response = redirect(safe_next(form.get("next")), headers=NO_STORE)
        set_cookie(response, SESSION_COOKIE, session_id)
        response.delete_cookie(SIGN_IN_COOKIE, path="/", secure=True, httponly=True)
        return response

    def sign_out(self, request: Request, form: Mapping[str, str]) -> Response:
        session, account = self.signed_in(request)
        self.check_csrf(form, session.csrf_token)
        self.store.end_session(request.cookies.get(SESSION_COOKIE, ""))
        log.info("intake.signed_out", username=account.username)
        response = redirect(f"{PREFIX}/sign-in", headers=NO_STORE)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True)
        return response

    def teams_of(self, account: Account) -> list[str]:
        if account.role is Role.ADMIN:
            return self.store.services()
        return sorted(account.teams)

    def intake_list(self, request: Request) -> Response:
        session, account = self.signed_in(request)
        teams = self.teams_of(account)
        team = request.query_params.get("team", "")
        state = request.query_params.get("state", "")
        services: list[str] | None = [team] if team in teams else None
        if services is None and account.role is not Role.ADMIN:
            services = teams
        states = [IntakeState(state)] if state in IntakeState.__members__.values() else []
        now = self.clock()
        rows = [
            (r, closeness(r.deadline, now, r.state))
            for r in self.store.referrals(services=services, states=states)
        ]
        return self.page(
            "list.html.j2",
            user=account,
            session=session,
            rows=rows,
            teams=teams,
            team=team if team in teams else "",
            states=list(IntakeState),
            state=state if state in IntakeState.__members__.values() else "",
            labels=STATE_LABELS,
            now=now,
        )

    def open_referral(self, request: Request, referral_id: str, **flash: str) -> Response:
        session, account = self.signed_in(request)
        held = self.store.referral(referral_id)
        if held is None or not may_see(account.role, account.teams, held.listed.service):
            # The same answer whether it does not exist or is another team's.
            log.warning("intake.referral_refused", username=account.username)
            return self.message(
                404,
                "No such referral",
                "None of your teams' referrals has this id.",
                user=account,
                session=session,
            )
        listed = held.listed
        values: dict[str, Any] = {
            "user": account,
            "session": session,
            "listed": listed,
            "closeness": closeness(listed.deadline, self.clock(), listed.state),
            "labels": STATE_LABELS,
            "outcomes": OUTCOME_CHOICES,
            "revision": held.revision,
            "recorded": request.query_params.get("recorded") == "1",
            **flash,
        }
        if listed.state is IntakeState.WITHDRAWN or not held.token:
            return self.page("referral.html.j2", referral=None, **values)
        try:
            referral = open_sealed(
                held.token,
                decryption_keys=self.decryption_keys,
                verification_keys=self.verification_keys,
            )
        except SealingError as exc:
            log.error("intake.open_failed", referral_id=referral_id, error_type=type(exc).__name__)
            return self.message(
                500,
                "This referral cannot be opened",
                f"It did not open with this inbox's keys ({type(exc).__name__}). Ask your "
                "administrator to check the key files; the referral is still held, sealed.",
                user=account,
                session=session,
            )
        self.store.record_view(account.username, referral_id, self.clock())
        log.info("intake.referral_opened", username=account.username, referral_id=referral_id)
        return self.page("referral.html.j2", referral=referral, **values)

    def record_outcome(
        self, request: Request, referral_id: str, form: Mapping[str, str]
    ) -> Response:
        session, account = self.signed_in(request)
        self.check_csrf(form, session.csrf_token)
        held = self.store.referral(referral_id)
        if held is None or not may_see(account.role, account.teams, held.listed.service):
            return self.message(
                404,
                "No such referral",
                "None of your teams' referrals has this id.",
                user=account,
                session=session,
            )
        outcome = form.get("outcome", "")
        if outcome not in {o.value for o in OUTCOME_CHOICES}:
            return self.open_referral(request, referral_id, error="Choose an outcome to record.")
        event_id = self.store.record_outcome(
            referral_id, outcome, at=self.clock(), recorded_by=account.username
        )
        if event_id is None:
            return self.open_referral(
                request, referral_id, error="This referral was withdrawn: nothing was recorded."
            )
        log.info(
            "intake.outcome_recorded",
            username=account.username,
            referral_id=referral_id,
            outcome=outcome,
            event_id=event_id,
        )
        if self.outbox is not None:
            self.outbox.wake()
        return redirect(f"{PREFIX}/referrals/{quote(referral_id, safe='')}?recorded=1")

    def views(self, request: Request) -> Response:
        session, account = self.signed_in(request)
        if account.role is not Role.ADMIN:
            return self.message(
                403,
                "For administrators",
                "Only an administrator can see who opened which referral.",
                user=account,
                session=session,
            )
        return self.page("views.html.j2", user=account, session=session, views=self.store.views())


NO_STORE = {"Cache-Control": "no-store"}


def redirect(location: str, *, headers: Mapping[str, str] | None = None) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=dict(headers or {}))


def set_cookie(response: Response, name: str, value: str) -> None:
    # `__Host-`: Secure, Path=/, no Domain; the browser refuses it otherwise.
    response.set_cookie(
        name, value, path="/", secure=True, httponly=True, samesite="strict", max_age=None
    )


def safe_next(target: str | None) -> str:
    """Only a path of this inbox: never another site (an open redirect)."""
    if not target:
        return PREFIX
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(PREFIX) or "\\" in target:
        return PREFIX
    return target


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form, first value of each field; anything else is an empty form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        body = await request.body()
    except ClientDisconnect:
        return {}
    if media_type != "application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items()}


def _same_origin(request: Request) -> bool:
    """A browser sends Origin with a POST: it must be this inbox (SameSite cookies aside)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(web: IntakeWeb, work: Callable[..., Response], *, post: bool) -> Handler:
    async def endpoint(request: Request) -> Response:
        arguments: list[Any] = [request, *request.path_params.values()]
        if post:
            if not _same_origin(request):
                log.warning("intake.cross_origin_refused")
                return web.message(403, "Refused", "This form did not come from this inbox.")
            arguments.append(await _form(request))
        try:
            return await run_in_threadpool(work, *arguments)
        except RefusedError as refused:
            return refused.response

    return endpoint


async def health(_request: Request) -> Response:
    return PlainTextResponse("ok\n", headers=NO_STORE)


async def home(_request: Request) -> Response:
    return redirect(PREFIX)


def intake_routes(web: IntakeWeb) -> list[BaseRoute]:
    """The pages, to go before the receiver's route in `create_inbox_app(routes=...)`."""
    return [
        Route("/healthz", health, methods=["GET"]),
        Route("/", home, methods=["GET"]),
        Route(f"{PREFIX}/sign-in", _guarded(web, web.sign_in_form, post=False), methods=["GET"]),
        Route(
            f"{PREFIX}/sign-in",
            _guarded(web, web.sign_in, post=True),
            methods=["POST"],
            max_body_size=MAX_FORM_BYTES,
        ),
        Route(
            f"{PREFIX}/sign-out",
            _guarded(web, web.sign_out, post=True),
            methods=["POST"],
            max_body_size=MAX_FORM_BYTES,
        ),
        Route(PREFIX, _guarded(web, web.intake_list, post=False), methods=["GET"]),
        Route(f"{PREFIX}/views", _guarded(web, web.views, post=False), methods=["GET"]),
        Route(
            f"{PREFIX}/referrals/{{referral_id}}",
            _guarded(web, web.open_referral, post=False),
            methods=["GET"],
        ),
        Route(
            f"{PREFIX}/referrals/{{referral_id}}/outcome",
            _guarded(web, web.record_outcome, post=True),
            methods=["POST"],
            max_body_size=MAX_FORM_BYTES,
        ),
    ]
