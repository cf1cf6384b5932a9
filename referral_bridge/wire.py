"""The names the bridge and its peers read on the wire: header names and content types.

Each is defined here once, and every adapter, the provider's side and the core import them from
here, so a name cannot drift between the side that writes it and the side that reads it. The
module imports nothing, so that anything may import it (the pure core too; a test checks).
Tests spell the values out instead: they pin the contract (docs/spec), this module follows it.
"""

__all__ = [
    "ATTEMPTS_HEADER",
    "BRIDGE_HEADER_PREFIX",
    "CLOUDEVENTS_JSON",
    "DELIVERY_COUNT_HEADER",
    "DETAIL_HEADER",
    "EVENT_TYPE_HEADER",
    "FAILED_AT_HEADER",
    "FIRST_FAILED_AT_HEADER",
    "IDEMPOTENCY_KEY_HEADER",
    "JOSE",
    "JSON_CONTENT",
    "NOT_BEFORE_HEADER",
    "OCTET_STREAM",
    "ORIGINAL_ROUTING_KEY_HEADER",
    "REASON_HEADER",
    "REPLAY_COUNT_HEADER",
]

# --- content types -----------------------------------------------------------------------------

#: A CloudEvent in structured mode: the AMQP content type of every event the bridge publishes,
#: and the HTTPS `Content-Type` a provider's inbox accepts.
CLOUDEVENTS_JSON = "application/cloudevents+json"
#: `datacontenttype` of an event whose `data` is plain JSON (inbound events, tasks, outcomes).
JSON_CONTENT = "application/json"
#: `datacontenttype` of a sealed event: `data` is a compact JWE (contract §4).
JOSE = "application/jose"
#: What a dead letter or retry copy says when the message it copies had no content type.
OCTET_STREAM = "application/octet-stream"

# --- the bridge's own AMQP headers (contract §6) -----------------------------------------------

#: Every header the bridge writes starts with this; a producer's own are dropped on the way in.
BRIDGE_HEADER_PREFIX = "x-rb-"
#: On a dead letter: why it failed (a DeadLetterReason code), a PII-free detail, when, and after
#: how many attempts.
REASON_HEADER = "x-rb-reason"
DETAIL_HEADER = "x-rb-detail"
FAILED_AT_HEADER = "x-rb-failed-at"
ATTEMPTS_HEADER = "x-rb-attempts"
#: On a dead letter or retry copy: the routing key the message first arrived with.
ORIGINAL_ROUTING_KEY_HEADER = "x-rb-original-routing-key"
#: Set by `dlq replay`: how often a dead letter was replayed, and when it first failed. A replayed
#: message that fails again keeps both, so the history of a dead letter survives its replays.
REPLAY_COUNT_HEADER = "x-rb-replay-count"
FIRST_FAILED_AT_HEADER = "x-rb-first-failed-at"
#: On a retry copy: when it may be tried again (RFC 3339, UTC).
NOT_BEFORE_HEADER = "x-rb-not-before"
#: On every message the bridge publishes from its outbox: the CloudEvent's type.
EVENT_TYPE_HEADER = "x-rb-event-type"

# --- headers others define -----------------------------------------------------------------------

#: Set by RabbitMQ on each delivery of a message from a quorum queue after the first: how often it
#: was handed to a consumer and came back unsettled (a worker died, a connection or node went).
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: HTTPS delivery: the referral's CloudEvent id, so a provider's inbox drops repeats (409).
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
