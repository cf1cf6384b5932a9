"""A provider's side of closing the loop: tell the force what became of a referral.

`victim.referral.outcome` (contract §3) is plain JSON with no personal data: the referral's id,
the provider's id, the outcome and when it happened. It goes to `victim-services.outcomes` with
the provider's id as routing key, published with confirms, so `send` returning means the broker
has it. `OutcomeSender` is what `referral-bridge provider outcome` uses, and what a provider's own
tooling (a web inbox, a case system hook) can build on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from referral_bridge.core.events import OutboundEvent, ProviderOutcome, ReferralOutcome
from referral_bridge.core.parsing import translate_validation_error
from referral_bridge.wire import JSON_CONTENT

if TYPE_CHECKING:
    from referral_bridge.transport.publisher import Publisher

OUTCOME_TYPE = "victim.referral.outcome"


class OutcomeError(ValueError):
    """The outcome cannot be sent as given (an unknown outcome, an id that is not one): fix the
    arguments and send again. The message names fields, never their values."""


@dataclass(frozen=True, slots=True)
class SentOutcome:
    """What was published: the CloudEvent id (a repeat of it has no effect) and its data."""

    event_id: str
    referral_id: str
    provider: str
    outcome: ProviderOutcome
    at: datetime


def outcome_event(
    *,
    provider: str,
    referral_id: str,
    outcome: str,
    at: datetime,
    source: str,
    event_id: str,
) -> bytes:
    """The CloudEvent body of one outcome, validated against the contract's model."""
    try:
        data = ReferralOutcome.model_validate(
            {"referral_id": referral_id, "provider": provider, "outcome": outcome, "at": at}
        )
    except ValidationError as exc:
        raise OutcomeError(
            f"not a valid outcome: {translate_validation_error(exc, prefix='data')}; outcomes "
            f"are {', '.join(o.value for o in ProviderOutcome)}"
        ) from None
    envelope = OutboundEvent(
        id=event_id,
        source=source,
        type=OUTCOME_TYPE,
        time=at,
        schemaversion=1,
        datacontenttype=JSON_CONTENT,
        data=data.model_dump(mode="json"),
    )
    return json.dumps(envelope.model_dump(mode="json"), separators=(",", ":")).encode()


class OutcomeSender:
    """Sends one provider's outcomes to the force's outcomes exchange."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        provider: str,
        exchange: str,
        source: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._publisher = publisher
        self.provider = provider
        self._exchange = exchange
        self._source = source or f"urn:provider:{provider}"
        self._clock = clock

    def send(
        self,
        referral_id: str,
        outcome: str,
        *,
        at: datetime | None = None,
        event_id: str | None = None,
    ) -> SentOutcome:
        """Publish the outcome (at `at`, default now) and wait for the broker's confirm.

        Raises OutcomeError for arguments the contract refuses, and the transport's
        PublishError or BrokerUnavailableError when the broker does not take it (then send
        again: the bridge drops a repeat of the same `event_id`).
        """
        moment = at or self._clock()
        if moment.tzinfo is None:
            raise OutcomeError("the outcome's time needs a UTC offset")
        identifier = event_id or str(uuid.uuid4())
        body = outcome_event(
            provider=self.provider,
            referral_id=referral_id,
            outcome=outcome,
            at=moment,
            source=self._source,
            event_id=identifier,
        )
        self._publisher.publish_inbound(
            body, self.provider, message_id=identifier, exchange=self._exchange
        )
        return SentOutcome(
            event_id=identifier,
            referral_id=referral_id,
            provider=self.provider,
            outcome=ProviderOutcome(outcome),
            at=moment,
        )
