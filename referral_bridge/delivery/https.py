"""HTTPS delivery: POST the CloudEvent to the provider, TLS verified, optionally mutual TLS.

2xx and 409 (the provider already has it) mean delivered. 429 (honouring Retry-After), 408,
5xx, redirects, timeouts and connection or TLS failures are transient. Any other 4xx means the
provider refused the message for good. Response bodies are never read at all (the response is
streamed and closed after its status line and headers): a provider's answer could echo what it
was sent, could be huge, or could be badly encoded, and none of that may touch the bridge.

Each attempt has a hard wall-clock deadline (connect + read timeout). httpx's timeouts apply to
each socket operation, so a provider trickling a byte a second never trips them; the attempt
therefore runs on a thread of its own, and the caller (the consumer thread, which pings the
systemd watchdog) waits for it until the deadline and no longer. At the deadline the attempt's
sockets are shut down, which ends the request at once; should the thread still be stuck (in a
DNS look-up, which nothing can interrupt), the route refuses new attempts until it ends.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpcore
import httpx

from referral_bridge.delivery.errors import (
    DeliveryError,
    DeliveryRejectedError,
    TransientDeliveryError,
)
from referral_bridge.ledger import OutboxMessage
from referral_bridge.wire import CLOUDEVENTS_JSON, IDEMPOTENCY_KEY_HEADER

#: Client errors that say "try again", not "never".
_TRANSIENT_4XX = frozenset({408, 425, 429})


def tls_context(
    *,
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ trusting only `ca_bundle` (else the system CAs), with mutual TLS when a client
    certificate is given. Loads the files now: OSError (ssl.SSLError among them) or ValueError
    when one is missing, unreadable, not PEM, or a certificate is not its key's."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        context.load_cert_chain(
            str(client_cert), str(client_key) if client_key is not None else None
        )
    return context


class HttpsRoute:
    """POSTs outbox messages to one provider's endpoint with one pooled httpx client."""

    name = "https"
    audit_route = "https"

    def __init__(
        self,
        *,
        provider: str,
        url: str,
        client: httpx.Client,
        max_attempt_seconds: float | None = None,
        sockets: AttemptSockets | None = None,
    ) -> None:
        self.provider = provider
        self._url = url
        self._client = client
        #: The longest one attempt can take (connect + read timeout); the engine's pass budget
        #: uses it to decide whether an in-place retry still fits.
        self.max_attempt_seconds = max_attempt_seconds
        #: The hard deadline of each attempt; None leaves only httpx's per-operation timeouts.
        self.deadline_seconds = max_attempt_seconds
        self._sockets = sockets or AttemptSockets()
        #: An attempt abandoned at its deadline whose thread has not ended yet.
        self._straggler: threading.Thread | None = None

    @classmethod
    def build(
        cls,
        *,
        provider: str,
        url: str,
        ca_bundle: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> HttpsRoute:
        """A route whose TLS is `context`, else `tls_context` of the files given. Redirects are
        not followed: a moved endpoint is a configuration change to make on purpose."""
        if context is None:
            context = tls_context(
                ca_bundle=ca_bundle, client_cert=client_cert, client_key=client_key
            )
        sockets = AttemptSockets()
        client = httpx.Client(
            verify=context,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            follow_redirects=False,
            transport=transport or _CuttableTransport(context, sockets),
            headers={"User-Agent": "referral-bridge"},
            # No proxy variables or ~/.netrc credentials for provider traffic.
            trust_env=False,
        )
        return cls(
            provider=provider,
            url=url,
            client=client,
            max_attempt_seconds=connect_timeout + read_timeout,
            sockets=sockets,
        )

    def deliver(self, message: OutboxMessage) -> None:
        if self.deadline_seconds is None:
            self._attempt(message)
            return
        straggler = self._straggler
        if straggler is not None and straggler.is_alive():
            raise TransientDeliveryError(
                "timeout",
                f"{self.provider}: an earlier attempt past its deadline has not ended yet",
                maybe_delivered=False,  # nothing was sent
            )
        outcome = _Outcome()
        self._sockets.begin()
        thread = threading.Thread(
            target=outcome.run,
            args=(lambda: self._attempt(message),),
            name=f"https-{self.provider}",
            daemon=True,
        )
        thread.start()
        thread.join(self.deadline_seconds)
        if thread.is_alive():
            # Shutting the sockets down ends a blocked read or write at once; the thread then
            # finishes on its own, and its outcome is ignored.
            self._sockets.cut()
            self._straggler = thread
            raise TransientDeliveryError(
                "timeout",
                f"{self.provider}: no complete answer within the attempt's deadline of "
                f"{self.deadline_seconds:g} s (connect + read timeout)",
            )
        outcome.result()

    def _attempt(self, message: OutboxMessage) -> None:
        try:
            # Streamed and closed unread: only the status and Retry-After count.
            with self._client.stream(
                "POST",
                self._url,
                content=message.body,
                headers={
                    "Content-Type": CLOUDEVENTS_JSON,
                    IDEMPOTENCY_KEY_HEADER: message.message_id,
                },
            ) as response:
                status, retry_after = response.status_code, response.headers.get("Retry-After")
        except httpx.TimeoutException as exc:
            raise TransientDeliveryError(
                "timeout", f"{self.provider}: no answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.ConnectError as exc:
            if _tls_failure(exc):
                raise TransientDeliveryError(
                    "tls_failed",
                    f"{self.provider}: the TLS handshake failed (server certificate not trusted "
                    "by the configured ca_bundle, wrong host name, or client certificate refused)",
                    maybe_delivered=False,
                ) from exc
            raise TransientDeliveryError(
                "connect_failed",
                f"{self.provider}: cannot connect ({type(exc).__name__})",
                maybe_delivered=False,
            ) from exc
        except httpx.TransportError as exc:
            raise TransientDeliveryError(
                "transport_error", f"{self.provider}: {type(exc).__name__}"
            ) from exc
        error = classify(status, retry_after, self.provider)
        if error is not None:
            raise error

    def close(self) -> None:
        self._client.close()


class _Outcome:
    """What an attempt's thread returned or raised, handed back to the waiting caller."""

    def __init__(self) -> None:
        self._error: BaseException | None = None

    def run(self, attempt: Callable[[], None]) -> None:
        try:
            attempt()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, which re-raises it)
            self._error = exc

    def result(self) -> None:
        if self._error is not None:
            raise self._error


class AttemptSockets:
    """The sockets the current attempt has used, so they can be shut down at its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[_TrackedStream] = set()

    def begin(self) -> None:
        with self._lock:
            self._in_use.clear()

    def using(self, stream: _TrackedStream) -> None:
        with self._lock:
            self._in_use.add(stream)

    def cut(self) -> None:
        with self._lock:
            streams = list(self._in_use)
            self._in_use.clear()
        for stream in streams:
            stream.shut_down()


class _TrackedStream(httpcore.NetworkStream):
    """A network stream that tells AttemptSockets whenever an attempt uses it."""

    def __init__(self, inner: httpcore.NetworkStream, sockets: AttemptSockets) -> None:
        self._inner = inner
        self._sockets = sockets

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._sockets.using(self)
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._sockets.using(self)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self._sockets.using(self)  # a trickled handshake is cut like a trickled answer
        return _TrackedStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._sockets
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shut_down(self) -> None:
        """Wake whichever thread is blocked on this socket; its owner then closes it."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown: ssl.SSLSocket's own would also drop its TLS state
            # under the feet of the thread reading it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackingBackend(httpcore.NetworkBackend):
    def __init__(self, sockets: AttemptSockets) -> None:
        self._inner = httpcore.SyncBackend()
        self._sockets = sockets

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _TrackedStream(stream, self._sockets)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _TrackedStream(
            self._inner.connect_unix_socket(path, timeout, socket_options), self._sockets
        )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _CuttableTransport(httpx.HTTPTransport):
    """httpx's own transport (request mapping, error mapping) over a pool of tracked sockets.

    httpx takes no network backend, so the pool it would build (no proxy: trust_env is off) is
    built again with one; tests against a real trickling server pin that this works.
    """

    def __init__(self, ssl_context: ssl.SSLContext, sockets: AttemptSockets) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        limits = httpx.Limits()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_TrackingBackend(sockets),
        )


def classify(status: int, retry_after: str | None, provider: str) -> DeliveryError | None:
    """None for delivered (2xx, 409); else the DeliveryError that says why not (to raise)."""
    if 200 <= status < 300 or status == 409:
        return None
    if status in _TRANSIENT_4XX or status >= 500:
        return TransientDeliveryError(
            f"http_{status}",
            f"{provider}: HTTP {status}",
            retry_after=parse_retry_after(retry_after) if retry_after else None,
            maybe_delivered=False,  # it answered that it did not take it
        )
    if 400 <= status < 500:
        return DeliveryRejectedError(f"http_{status}", f"{provider}: refused with HTTP {status}")
    return TransientDeliveryError(
        f"http_{status}", f"{provider}: unexpected HTTP {status}; check the provider's url"
    )


def parse_retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unreadable."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
