"""Why a delivery attempt failed, as the delivery engine sees it: for now, or for good.

Routes translate library errors (httpx, kombu) into these at the edge. `code` is a stable
machine-readable word and `detail` a short text; neither ever holds a message body or any
personal data, because both end up in the ledger's `last_error`, in logs and in metrics.
"""

from __future__ import annotations


class DeliveryError(Exception):
    """Raised when a route could not hand a message over; the base of the delivery errors."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def summary(self) -> str:
        """`code: detail`, fit for the ledger's last_error column (at most 500 characters)."""
        return f"{self.code}: {self.detail}"[:500]


class TransientDeliveryError(DeliveryError):
    """Raised when an attempt failed for a reason that may pass (a 5xx or 429, a timeout, a
    refused connection, a broker that is down); the message is retried, then parked."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        retry_after: float | None = None,
        maybe_delivered: bool = True,
    ) -> None:
        super().__init__(code, detail)
        #: Seconds the receiver asked us to wait (HTTP Retry-After), if it said.
        self.retry_after = retry_after
        #: False only when the receiver certainly does not have the message (it answered "not
        #: now", or no connection was made). When unsure, True: a withdrawal must then follow.
        self.maybe_delivered = maybe_delivered


class DeliveryRejectedError(DeliveryError):
    """Raised when the receiver refused the message for good (an HTTP 4xx other than 408, 409
    and 429); the message is kept for an operator and a fallback leaflet task is issued."""
