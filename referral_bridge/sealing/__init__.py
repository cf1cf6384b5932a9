"""Sign-then-encrypt referrals for providers and open them again (contract §4), plus key files.

This is the package's whole public surface; a test pins it, so other packages import from here.
"""

from referral_bridge.sealing.envelope import (
    CONTENT_TYPE,
    JWE_ALG,
    JWE_CTY,
    JWE_ENC,
    JWS_ALG,
    open_event,
    open_sealed,
    seal,
)
from referral_bridge.sealing.errors import (
    BadSignatureError,
    InvalidKeyFileError,
    InvalidKeyIdError,
    KeyFileError,
    KeyFileExistsError,
    MalformedTokenError,
    MissingKeyFileError,
    NotSealedEventError,
    SealingError,
    TamperedError,
    UnexpectedAlgorithmError,
    UnknownKeyError,
    UnsafeKeyFileError,
    UnsuitableKeyError,
)
from referral_bridge.sealing.keys import (
    AnyKey,
    KeyPairFiles,
    KeySet,
    PrivateKey,
    PublicKey,
    generate_key_pair,
    load_key_set,
    load_private_key,
)

__all__ = [
    "CONTENT_TYPE",
    "JWE_ALG",
    "JWE_CTY",
    "JWE_ENC",
    "JWS_ALG",
    "AnyKey",
    "BadSignatureError",
    "InvalidKeyFileError",
    "InvalidKeyIdError",
    "KeyFileError",
    "KeyFileExistsError",
    "KeyPairFiles",
    "KeySet",
    "MalformedTokenError",
    "MissingKeyFileError",
    "NotSealedEventError",
    "PrivateKey",
    "PublicKey",
    "SealingError",
    "TamperedError",
    "UnexpectedAlgorithmError",
    "UnknownKeyError",
    "UnsafeKeyFileError",
    "UnsuitableKeyError",
    "generate_key_pair",
    "load_key_set",
    "load_private_key",
    "open_event",
    "open_sealed",
    "seal",
]
