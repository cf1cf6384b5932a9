"""Every size and depth limit on what the bridge reads or writes, said once.

Sealing and opening use the same numbers, so what the bridge seals the bridge (and the reference
inbox) can open: the sealed token's limit is derived from the payload's, not chosen apart from it.
A referral payload carries a subset of one inbound event's fields plus a few fixed ones, so its
limit is the event's limit plus a margin for those.
"""

from __future__ import annotations

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JWE_HEADER_SEGMENT",
    "MAX_JWS_BYTES",
    "MAX_JWS_HEADER_SEGMENT",
    "MAX_SEALED_EVENT_BYTES",
    "MAX_SEALED_TOKEN_BYTES",
    "MAX_SIGNATURE_SEGMENT",
    "MAX_SIGNED_PAYLOAD_BYTES",
    "b64url_length",
]

#: The largest inbound event body accepted (contract §6: larger is dead-lettered as too_large).
MAX_EVENT_BYTES = 1_048_576
#: Deepest JSON nesting accepted anywhere; the contract's deepest path
#: (data.victims[i].contact.address.lines) is six levels, so this is generous without letting a
#: hostile body exhaust the stack.
MAX_JSON_DEPTH = 32
#: The largest referral or withdrawal payload (its JSON) the bridge signs.
MAX_SIGNED_PAYLOAD_BYTES = MAX_EVENT_BYTES + 64 * 1024

#: Protected headers hold a few short members (alg, kid, typ or enc, cty, epk); these are the
#: base64url segment lengths joserfc allows by default, kept.
MAX_JWS_HEADER_SEGMENT = 512
MAX_JWE_HEADER_SEGMENT = 1024
#: An ES256 signature is 64 bytes; an A256KW-wrapped key 40; a GCM IV 12 and its tag 16.
MAX_SIGNATURE_SEGMENT = 128
_MAX_ENCRYPTED_KEY_SEGMENT = 128
_MAX_IV_SEGMENT = 64
_MAX_TAG_SEGMENT = 64


def b64url_length(size: int) -> int:
    """Characters of unpadded base64url for `size` bytes."""
    return (4 * size + 2) // 3


#: The inner JWS compact string (the JWE's plaintext) for the largest payload.
MAX_JWS_BYTES = (
    MAX_JWS_HEADER_SEGMENT + 1 + b64url_length(MAX_SIGNED_PAYLOAD_BYTES) + 1 + MAX_SIGNATURE_SEGMENT
)
#: The JWE compact string for the largest payload: the longest sealed referral there can be.
MAX_SEALED_TOKEN_BYTES = (
    MAX_JWE_HEADER_SEGMENT
    + 1
    + _MAX_ENCRYPTED_KEY_SEGMENT
    + 1
    + _MAX_IV_SEGMENT
    + 1
    + b64url_length(MAX_JWS_BYTES)
    + 1
    + _MAX_TAG_SEGMENT
)
#: A referral CloudEvent: the token plus its envelope (ids, type, source, times).
MAX_SEALED_EVENT_BYTES = MAX_SEALED_TOKEN_BYTES + 16 * 1024
