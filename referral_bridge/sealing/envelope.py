"""Seal a referral (sign, then encrypt) and open one, exactly as contract §4 fixes the format.

A sealed referral is a JWE compact string (ECDH-ES+A256KW, A256GCM, ``cty`` JWT) whose plaintext
is a JWS compact string (ES256) over the referral's JSON. Opening is strict on purpose: headers are
checked against the contract before any key is touched, so ``alg: none``, HMAC tricks and other
algorithm substitutions are refused rather than negotiated.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from joserfc import jwe, jws
from joserfc.errors import BadSignatureError as JoseBadSignatureError
from joserfc.errors import JoseError
from joserfc.jwe import JWERegistry
from joserfc.jws import JWSRegistry

from referral_bridge.core.limits import (
    MAX_JWE_HEADER_SEGMENT,
    MAX_JWS_BYTES,
    MAX_JWS_HEADER_SEGMENT,
    MAX_SEALED_EVENT_BYTES,
    MAX_SEALED_TOKEN_BYTES,
    MAX_SIGNATURE_SEGMENT,
    MAX_SIGNED_PAYLOAD_BYTES,
    b64url_length,
)
from referral_bridge.sealing.errors import (
    BadSignatureError,
    MalformedTokenError,
    NotSealedEventError,
    TamperedError,
    TooLargeError,
    UnexpectedAlgorithmError,
    UnknownKeyError,
    UnsuitableKeyError,
)
from referral_bridge.sealing.keys import AnyKey, KeySet, PrivateKey
from referral_bridge.wire import JOSE

__all__ = [
    "CONTENT_TYPE",
    "JWE_ALG",
    "JWE_CTY",
    "JWE_ENC",
    "JWS_ALG",
    "open_event",
    "open_sealed",
    "seal",
]

JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
JWE_CTY = "JWT"
JWS_ALG = "ES256"
JWS_TYP = "JWT"
CONTENT_TYPE = JOSE

# Registries that know only the contract's algorithms, so the library itself refuses any other
# even if a header check here were ever loosened.
_JWE_REGISTRY = JWERegistry(algorithms=[JWE_ALG, JWE_ENC])
_JWS_REGISTRY = JWSRegistry(algorithms=[JWS_ALG])
# The library's own size limits (64 KiB of ciphertext by default) set from the shared ones, so
# that it never refuses, as if tampered, a referral this module sealed; _check_compact refuses
# anything larger first, as too large.
_JWE_REGISTRY.max_protected_header_length = MAX_JWE_HEADER_SEGMENT
_JWE_REGISTRY.max_ciphertext_length = b64url_length(MAX_JWS_BYTES)
_JWS_REGISTRY.max_header_length = MAX_JWS_HEADER_SEGMENT
_JWS_REGISTRY.max_payload_length = b64url_length(MAX_SIGNED_PAYLOAD_BYTES)
_JWS_REGISTRY.max_signature_length = MAX_SIGNATURE_SEGMENT
#: One segment of a compact token: unpadded base64url, nothing else (no whitespace, no padding).
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
#: A P-256 coordinate: 32 bytes, 43 characters of unpadded base64url.
_P256_COORDINATE = re.compile(r"[A-Za-z0-9_-]{43}")
# Header members that change how a token is processed and that the contract never uses.
_REFUSED_JWE_HEADERS = frozenset({"zip", "crit"})
_REFUSED_JWS_HEADERS = frozenset({"crit", "b64"})


def seal(
    payload: Mapping[str, Any],
    *,
    signing_key: PrivateKey,
    recipient: KeySet | AnyKey,
) -> str:
    """Sign ``payload`` as an ES256 JWS, then encrypt that JWS to the recipient's current key.

    ``payload`` must already be JSON-ready (dump pydantic models with ``mode="json"``).
    """
    if not isinstance(signing_key, PrivateKey):
        raise UnsuitableKeyError(
            "the signing key is not a private key; configure the bridge's *.private.jwk file"
        )
    encrypt_to = recipient.current if isinstance(recipient, KeySet) else recipient
    recipient_public = encrypt_to.public_key if isinstance(encrypt_to, PrivateKey) else encrypt_to

    body = json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(body.encode("utf-8"))
    if size > MAX_SIGNED_PAYLOAD_BYTES:
        raise TooLargeError(
            f"the payload is too large to seal: {size} bytes, and at most "
            f"{MAX_SIGNED_PAYLOAD_BYTES} can be sealed (referral_bridge/core/limits.py)"
        )
    try:
        signed = jws.serialize_compact(
            {"alg": JWS_ALG, "kid": signing_key.kid, "typ": JWS_TYP},
            body.encode("utf-8"),
            signing_key.jwk,
            registry=_JWS_REGISTRY,
        )
    except JoseError as exc:
        raise UnsuitableKeyError(
            f"signing key {signing_key.kid!r} cannot sign with {JWS_ALG} ({exc.error}); "
            'remove any "use", "alg" or "key_ops" member that forbids it'
        ) from None
    try:
        return jwe.encrypt_compact(
            {"alg": JWE_ALG, "enc": JWE_ENC, "kid": recipient_public.kid, "cty": JWE_CTY},
            signed.encode("ascii"),
            recipient_public.jwk,
            registry=_JWE_REGISTRY,
        )
    except JoseError as exc:
        raise UnsuitableKeyError(
            f"recipient key {recipient_public.kid!r} cannot be used with {JWE_ALG} "
            f"({exc.error}); ask the provider for a P-256 key without a conflicting "
            '"use", "alg" or "key_ops" member'
        ) from None


def open_sealed(
    token: str,
    *,
    decryption_keys: KeySet,
    verification_keys: KeySet,
) -> dict[str, Any]:
    """Decrypt a sealed referral, verify its inner signature, and return the JSON payload."""
    token = token.strip()
    if len(token) > MAX_SEALED_TOKEN_BYTES:
        raise TooLargeError(
            f"the sealed referral is too large: {len(token)} characters, and the largest the "
            f"bridge seals is {MAX_SEALED_TOKEN_BYTES}, so this is not one of its referrals"
        )
    jwe_header = _compact_header(token, parts=5, what="JWE")
    _expect(jwe_header, "alg", JWE_ALG, what="JWE")
    _expect(jwe_header, "enc", JWE_ENC, what="JWE")
    _refuse_headers(jwe_header, _REFUSED_JWE_HEADERS, what="JWE")
    key = _key_for(jwe_header, decryption_keys, what="JWE", purpose="decrypt")
    if not isinstance(key, PrivateKey):
        raise UnsuitableKeyError(
            f"key {key.kid!r} in the decryption key set is public; opening needs the "
            "matching *.private.jwk file"
        )
    _check_epk(jwe_header)
    try:
        decrypted = jwe.decrypt_compact(token, key.jwk, registry=_JWE_REGISTRY)
    except JoseError:
        raise _tampered(key.kid) from None
    except (ValueError, TypeError, KeyError, AttributeError):
        # The key import refuses a point that is not on the curve; whatever else the library
        # raises on a hostile header is still a malformed token, never a crash.
        raise _bad_epk() from None

    try:
        inner = decrypted.plaintext.decode("ascii") if decrypted.plaintext else ""
    except UnicodeDecodeError:
        raise MalformedTokenError(
            "the decrypted content is not a JWS compact string; the sender must sign before "
            "encrypting"
        ) from None
    jws_header = _compact_header(inner, parts=3, what="inner JWS")
    _expect(jws_header, "alg", JWS_ALG, what="inner JWS")
    _refuse_headers(jws_header, _REFUSED_JWS_HEADERS, what="inner JWS")
    signer = _key_for(jws_header, verification_keys, what="inner JWS", purpose="verify")
    verify_with = signer.public_key if isinstance(signer, PrivateKey) else signer
    try:
        verified = jws.deserialize_compact(inner, verify_with.jwk, registry=_JWS_REGISTRY)
    except JoseBadSignatureError:
        raise BadSignatureError(
            f"the inner signature does not verify with key {signer.kid!r}: the referral was "
            "not signed by that key; check the sender's public key file is current"
        ) from None
    except JoseError:
        raise MalformedTokenError(
            "the inner JWS is malformed and cannot be verified; ask the sender to re-send it"
        ) from None

    return _payload_object(verified.payload)


def open_event(
    body: bytes | str,
    *,
    decryption_keys: KeySet,
    verification_keys: KeySet,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Open a referral given as a whole CloudEvent JSON or as a bare compact token.

    Returns the envelope without ``data`` (None for a bare token) and the verified payload.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedTokenError("the event body is not valid UTF-8") from None
    else:
        text = body
    text = text.strip()
    if len(text) > MAX_SEALED_EVENT_BYTES:
        raise TooLargeError(
            f"the event is too large: {len(text)} characters, and a sealed referral's event is "
            f"at most {MAX_SEALED_EVENT_BYTES}, so this is not one"
        )
    if not text.startswith("{"):
        payload = open_sealed(
            text, decryption_keys=decryption_keys, verification_keys=verification_keys
        )
        return None, payload

    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedTokenError("the event body starts like JSON but is not valid JSON") from None
    if not isinstance(event, dict):
        raise MalformedTokenError("the event body is not a JSON object (a CloudEvent)")
    content_type = event.get("datacontenttype")
    if content_type != CONTENT_TYPE:
        raise NotSealedEventError(
            f"the event's datacontenttype is {_show(content_type)}, not {CONTENT_TYPE!r}: "
            "it is not a sealed referral, so there is nothing to open"
        )
    data = event.get("data")
    if not isinstance(data, str):
        raise MalformedTokenError(
            'the event\'s "data" is not a string; a sealed referral carries a JWE compact string'
        )
    envelope = {name: value for name, value in event.items() if name != "data"}
    payload = open_sealed(
        data, decryption_keys=decryption_keys, verification_keys=verification_keys
    )
    return envelope, payload


def _compact_header(token: str, *, parts: int, what: str) -> dict[str, Any]:
    """Decode the protected header of a compact token without trusting anything else in it."""
    segments = token.split(".")
    if len(segments) != parts:
        raise MalformedTokenError(
            f"the {what} has {len(segments)} dot-separated parts, not {parts}; it is not a "
            f"{what} compact string"
        )
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        # Whitespace, padding or other characters inside a segment: base64 decoders disagree on
        # whether to skip them, so two parties could read different tokens from the same text.
        raise MalformedTokenError(
            f"the {what} holds characters other than base64url and its dots; it is not a "
            f"{what} compact string"
        )
    try:
        header = json.loads(_b64url_decode(segments[0]))
    except (ValueError, binascii.Error, RecursionError):
        raise MalformedTokenError(f"the {what} header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise MalformedTokenError(f"the {what} header is not a JSON object")
    return header


def _b64url_decode(segment: str) -> bytes:
    if not segment.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _expect(header: Mapping[str, Any], name: str, expected: str, *, what: str) -> None:
    found = header.get(name)
    if found != expected:
        raise UnexpectedAlgorithmError(
            f"the {what} header has {name} {_show(found)}; the referral contract allows only "
            f"{expected!r}, so the token is refused"
        )


def _refuse_headers(header: Mapping[str, Any], refused: frozenset[str], *, what: str) -> None:
    present = sorted(refused.intersection(header))
    if present:
        raise UnexpectedAlgorithmError(
            f"the {what} header uses {', '.join(present)}, which the referral contract does "
            "not allow, so the token is refused"
        )


def _key_for(header: Mapping[str, Any], keys: KeySet, *, what: str, purpose: str) -> AnyKey:
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise UnknownKeyError(
            f"the {what} names key {_show(kid)}, which is not among the keys to {purpose} with "
            f"({', '.join(keys.kids)}); add that key's file to the key set, or ask the sender "
            "which key they used"
        )
    return key


def _payload_object(payload: bytes) -> dict[str, Any]:
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise MalformedTokenError("the signed payload is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise MalformedTokenError("the signed payload is not a JSON object")
    return document


def _check_epk(header: Mapping[str, Any]) -> None:
    """The ephemeral key must be a public P-256 JWK before the library is given it."""
    epk = header.get("epk")
    if not (
        isinstance(epk, dict)
        and epk.get("kty") == "EC"
        and epk.get("crv") == "P-256"
        and "d" not in epk
        and all(
            isinstance(epk.get(name), str) and _P256_COORDINATE.fullmatch(epk[name])
            for name in ("x", "y")
        )
    ):
        raise _bad_epk()


def _bad_epk() -> MalformedTokenError:
    return MalformedTokenError(
        "the JWE header's ephemeral key (epk) is not a valid P-256 public key; the token was "
        "not made by a contract-conforming sender"
    )


def _tampered(kid: str) -> TamperedError:
    # The library cannot tell tampering from a wrong key of the same kid, and neither can we; the
    # cause text is dropped because it adds nothing an operator can act on.
    return TamperedError(
        f"the sealed referral failed its integrity check with key {kid!r}: it was altered or "
        "truncated in transit, or encrypted to another key reusing that kid; ask the sender to "
        "re-send it and check both sides hold the same key"
    )


def _show(value: object) -> str:
    """Quote an untrusted header value briefly; a forged header must not flood a log line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
