"""HTTPS delivery: POST the CloudEvent to the provider, TLS verified, optionally mutual TLS.

2xx and 409 (the provider already has it) mean delivered. 429 (honouring Retry-After), 408,
5xx, redirects, timeouts and connection or TLS failures are transient. Any other 4xx means the
provider refused the message for good. Response bodies are never read at all (the response is
streamed and closed after its status line and headers): a provider's answer could echo what it
was sent, could be huge, or could be badly encoded, and none of that may touch the bridge.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from referral_bridge.delivery.errors import (
    DeliveryError,
    DeliveryRejectedError,
    TransientDeliveryError,
)
from referral_bridge.ledger.store import OutboxMessage

CLOUDEVENTS_JSON = "application/cloudevents+json"
#: Client errors that say "try again", not "never".
_TRANSIENT_4XX = frozenset({408, 425, 429})


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
    ) -> None:
        self.provider = provider
        self._url = url
        self._client = client
        #: The longest one attempt can take (connect + read timeout); the engine's pass budget
        #: uses it to decide whether an in-place retry still fits.
        self.max_attempt_seconds = max_attempt_seconds

    @classmethod
    def build(
        cls,
        *,
        provider: str,
        url: str,
        ca_bundle: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> HttpsRoute:
        """A route whose TLS trusts only `ca_bundle` (else the system CAs), with mutual TLS when
        a client certificate is given. Redirects are not followed: a moved endpoint is a
        configuration change to make on purpose."""
        context = ssl.create_default_context(
            cafile=str(ca_bundle) if ca_bundle is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_cert is not None:
            context.load_cert_chain(
                str(client_cert), str(client_key) if client_key is not None else None
            )
        client = httpx.Client(
            verify=context,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            follow_redirects=False,
            transport=transport,
            headers={"User-Agent": "referral-bridge"},
            # No proxy variables or ~/.netrc credentials for provider traffic.
            trust_env=False,
        )
        return cls(
            provider=provider,
            url=url,
            client=client,
            max_attempt_seconds=connect_timeout + read_timeout,
        )

    def deliver(self, message: OutboxMessage) -> None:
        try:
            # Streamed and closed unread: only the status and Retry-After count.
            with self._client.stream(
                "POST",
                self._url,
                content=message.body,
                headers={
                    "Content-Type": CLOUDEVENTS_JSON,
                    "Idempotency-Key": message.message_id,
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
