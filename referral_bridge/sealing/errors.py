"""Errors raised while handling key files and sealing or opening referrals.

Every message names what went wrong and what an operator should do next. No message ever holds
key material or any part of a referral's payload: the only values quoted are file paths, key ids
and header values, all of which are public by design.
"""

from __future__ import annotations

from pathlib import Path


class SealingError(Exception):
    """Raised when a referral cannot be sealed or opened; the base of every error here."""


class KeyFileError(SealingError):
    """Raised when a key file cannot be used; ``path`` names the file."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class MissingKeyFileError(KeyFileError):
    """Raised when a key file named in the configuration does not exist."""


class UnsafeKeyFileError(KeyFileError):
    """Raised when a file holding a private key can be read or written by group or others."""


class InvalidKeyFileError(KeyFileError):
    """Raised when a key file is not a P-256 JWK (or JWKS) with a ``kid`` per the contract."""


class KeyFileExistsError(KeyFileError):
    """Raised when generating a key pair would overwrite an existing key file."""


class InvalidKeyIdError(SealingError):
    """Raised when a key id is unusable as a file name (empty, too long, or has path characters)."""


class UnsuitableKeyError(SealingError):
    """Raised when a key cannot do what it is asked: a public key given where a private key is
    needed, or a JWK whose ``use``, ``alg`` or ``key_ops`` forbids the operation."""


class MalformedTokenError(SealingError):
    """Raised when a token or event is not shaped as the contract says (wrong number of parts,
    undecodable header, a payload that is not a JSON object, an event without a string ``data``)."""


class TooLargeError(SealingError):
    """Raised when a payload is too large to seal, or a token or event too large to open; the
    limits are in referral_bridge/core/limits.py, shared by both sides."""


class NotSealedEventError(SealingError):
    """Raised when a CloudEvent given to be opened does not declare
    ``datacontenttype: application/jose``."""


class UnexpectedAlgorithmError(SealingError):
    """Raised when a JWE or its inner JWS uses any algorithm other than the contract's
    (ECDH-ES+A256KW with A256GCM outside, ES256 inside), including ``none``."""


class UnknownKeyError(SealingError):
    """Raised when a token's ``kid`` matches no key in the key set it must be opened with."""


class TamperedError(SealingError):
    """Raised when a JWE fails its integrity check: it was altered, truncated, or encrypted to a
    different key that reuses the same ``kid``."""


class BadSignatureError(SealingError):
    """Raised when the inner JWS's signature does not verify with the key its ``kid`` names."""
