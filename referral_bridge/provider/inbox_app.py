"""The provider inbox's web side: a Starlette app (`create_inbox_app`) on the bounded server.

What a referral means to the provider (verify, decrypt, check, store) is `ReferralInbox`'s, in
`provider_inbox`; this module only carries requests to it and its answers back. The app is built
by a factory taking extra routes, so pages for the provider's staff can sit beside the receiver.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from referral_bridge.provider.inbox import MAX_BODY_BYTES, Answer, ReferralInbox
from referral_bridge.runtime.http_server import BoundedServer, ServerLimits, server_ssl_context
from referral_bridge.wire import IDEMPOTENCY_KEY_HEADER, JSON_CONTENT

log = structlog.get_logger("referral_bridge.provider.inbox")

#: A status the fault hook returns is answered instead of storing (tests inject failures).
FaultHook = Callable[[], int | None]


def answer_response(answer: Answer, *, close: bool = False) -> Response:
    headers = {"Retry-After": "1"} if answer.status == 503 else {}
    if close:
        headers["Connection"] = "close"
    return Response(
        answer.body(), status_code=answer.status, media_type=JSON_CONTENT, headers=headers
    )


def receive_and_log(
    inbox: ReferralInbox, body: bytes, *, content_type: str | None, idempotency_key: str | None
) -> Answer:
    """`ReferralInbox.receive`, its answer logged; an unexpected failure is a 500."""
    try:
        answer = inbox.receive(body, content_type=content_type, idempotency_key=idempotency_key)
    except Exception as exc:  # noqa: BLE001 (any failure is a 500, never a crash)
        # The kind only: an exception's text may quote the request.
        log.error("inbox.failed", error_type=type(exc).__name__)
        return Answer(500, "internal_error")
    level = log.info if answer.status < 400 else log.warning
    level("inbox.answered", status=answer.status, reason=answer.code, message_id=answer.message_id)
    return answer


def referral_endpoint(
    inbox: ReferralInbox, fault: FaultHook | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """The POST handler: body in, `ReferralInbox.receive` on a worker thread, answer out."""

    async def receive_referral(request: Request) -> Response:
        if request.headers.get("content-length") is None:
            return answer_response(Answer(411, "length_required"), close=True)
        try:
            body = await request.body()
        except ClientDisconnect:
            return answer_response(Answer(400, "client_disconnected"), close=True)
        if fault is not None:
            status = await run_in_threadpool(fault)
            if status is not None:
                return answer_response(Answer(status, "injected_fault"))
        # Decrypting and the SQLite commit block: off the event loop. The answer is logged on
        # the same thread, so a referral stored while the server stops is still logged.
        return answer_response(
            await run_in_threadpool(
                receive_and_log,
                inbox,
                body,
                content_type=request.headers.get("content-type"),
                idempotency_key=request.headers.get(IDEMPOTENCY_KEY_HEADER),
            )
        )

    return receive_referral


async def _refusal(_request: Request, exc: Exception) -> Response:
    """404 and 405 as the receiver's JSON answers (codes only)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    return answer_response(Answer(status, code))


def create_inbox_app(
    inbox: ReferralInbox,
    *,
    path: str | None = None,
    fault: FaultHook | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The receiver on `path` (any path when None), after `routes` (matched first)."""
    receiver = Route(
        path or "/{any:path}",
        referral_endpoint(inbox, fault),
        methods=["POST"],
        max_body_size=max_body_bytes,
    )
    return Starlette(
        routes=[*routes, receiver],
        exception_handlers={404: _refusal, 405: _refusal},
    )


class InboxServer:
    """The HTTPS endpoint around a ReferralInbox; start and stop it as often as a test likes."""

    def __init__(
        self,
        inbox: ReferralInbox,
        *,
        certfile: Path,
        keyfile: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        client_ca: Path | None = None,
        path: str | None = None,
        fault: FaultHook | None = None,
        limits: ServerLimits | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        """`routes` go before the receiver's (the web inbox's pages, `intake.web`)."""
        self.inbox = inbox
        self.path = path
        #: Test hook: called per request; a status it returns is answered instead of storing.
        self.fault = fault
        self._context: ssl.SSLContext = server_ssl_context(
            str(certfile), str(keyfile), client_ca=str(client_ca) if client_ca else None
        )
        self._server = BoundedServer(
            create_inbox_app(inbox, path=path, fault=self._fault, routes=routes),
            host=host,
            port=port,
            limits=limits or ServerLimits(),
            ssl_context=self._context,
            # A restart (tests stop and start the inbox) must get the same port back at once.
            reuse_address=True,
            name="referral-bridge-inbox",
        )

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.path or '/referrals'}"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> None:
        """Listen (port 0 picks a free port, kept across restarts) and serve in a thread."""
        if self._server.running:
            return
        self._server.start()
        limits = self._server.limits
        log.info(
            "inbox.listening",
            url_host=f"{self.host}:{self.port}",
            detail=f"request deadline {limits.request_seconds} s, "
            f"at most {limits.connection_cap()} connections",
        )

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a crashed or stopped server would."""
        if not self._server.running:
            return
        self._server.stop()
        log.info("inbox.stopped", url_host=f"{self.host}:{self.port}")

    def _fault(self) -> int | None:
        return self.fault() if self.fault is not None else None
