"""Sealed referrals: the contract §4 format; tampered, forged or off-contract tokens are refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from joserfc import jwe, jws
from joserfc.jwe import JWERegistry
from joserfc.jwk import ECKey, OctKey
from joserfc.jws import JWSRegistry

import referral_bridge.sealing as sealing
from referral_bridge.sealing import (
    BadSignatureError,
    KeySet,
    MalformedTokenError,
    NotSealedEventError,
    PrivateKey,
    SealingError,
    TamperedError,
    UnexpectedAlgorithmError,
    UnknownKeyError,
    UnsuitableKeyError,
    open_event,
    open_sealed,
    seal,
)

PAYLOAD: dict[str, Any] = {
    "referral_id": "ref-0001",
    "case_ref": "CR-2026-0001",
    "victim": {"victim_id": "P-77", "name": {"given": "Jocasta", "family": "Quennell-Brightwater"}},
    "issued_at": "2026-11-26T09:14:00Z",
}


def _key(kid: str) -> PrivateKey:
    return PrivateKey(kid=kid, jwk=ECKey.generate_key("P-256", parameters={"kid": kid}))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header(compact: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(_unb64url(compact.split(".")[0]))
    return header


class Parties:
    """The bridge's signing key and one provider's encryption key, as both sides hold them."""

    def __init__(self) -> None:
        self.bridge = _key("bridge-2026")
        self.provider = _key("lancs-vs-1")

    def seal(self, payload: dict[str, Any] = PAYLOAD) -> str:
        return seal(payload, signing_key=self.bridge, recipient=self.provider.public_key)

    def open(self, token: str) -> dict[str, Any]:
        return open_sealed(
            token,
            decryption_keys=KeySet.of(self.provider),
            verification_keys=KeySet.of(self.bridge.public_key),
        )

    def inner_jws(self, token: str) -> str:
        decrypted = jwe.decrypt_compact(
            token, self.provider.jwk, registry=JWERegistry(algorithms=[sealing.JWE_ALG, "A256GCM"])
        )
        return decrypted.plaintext.decode("ascii") if decrypted.plaintext else ""

    def encrypt_raw(self, inner: str, *, alg: str = "ECDH-ES+A256KW", enc: str = "A256GCM") -> str:
        """Encrypt any inner content to the provider, as a forger holding its public key could."""
        return jwe.encrypt_compact(
            {"alg": alg, "enc": enc, "kid": self.provider.kid, "cty": "JWT"},
            inner.encode("ascii"),
            self.provider.public_key.jwk,
            registry=JWERegistry(algorithms=[alg, enc]),
        )


@pytest.fixture
def parties() -> Parties:
    return Parties()


def _flip_first_byte(segment: str) -> str:
    raw = bytearray(_unb64url(segment))
    raw[0] ^= 0x01
    return _b64url(bytes(raw))


def _open_with_cryptography_only(token: str, provider: PrivateKey, bridge: PrivateKey) -> bytes:
    """Open a sealed referral with bare primitives, as a provider without a JOSE library would."""
    protected, encrypted_key, iv, ciphertext, tag = token.split(".")
    header = json.loads(_unb64url(protected))
    epk = header["epk"]
    ephemeral = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_unb64url(epk["x"]), "big"),
        int.from_bytes(_unb64url(epk["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    provider_private = provider.jwk.private_key
    assert provider_private is not None
    shared = provider_private.exchange(ec.ECDH(), ephemeral)
    alg = header["alg"].encode("ascii")
    other_info = (
        len(alg).to_bytes(4, "big")
        + alg
        + (0).to_bytes(4, "big")  # PartyUInfo: empty
        + (0).to_bytes(4, "big")  # PartyVInfo: empty
        + (256).to_bytes(4, "big")  # key data length in bits for A256KW
    )
    kek = ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other_info).derive(shared)
    cek = aes_key_unwrap(kek, _unb64url(encrypted_key))
    inner = AESGCM(cek).decrypt(
        _unb64url(iv), _unb64url(ciphertext) + _unb64url(tag), protected.encode("ascii")
    )
    signing_input, _, signature = inner.decode("ascii").rpartition(".")
    raw_signature = _unb64url(signature)
    der = encode_dss_signature(
        int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
    )
    bridge.public_key.jwk.public_key.verify(
        der, signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())
    )
    return _unb64url(signing_input.split(".")[1])


class TestSeal:
    """seal produces exactly the contract's sign-then-encrypt format."""

    def test_sealed_referral_opens_to_the_same_payload(self, parties: Parties) -> None:
        assert parties.open(parties.seal()) == PAYLOAD

    def test_jwe_header_has_exactly_the_contract_members(self, parties: Parties) -> None:
        header = _header(parties.seal())
        epk = header.pop("epk")
        assert header == {
            "alg": "ECDH-ES+A256KW",
            "enc": "A256GCM",
            "kid": "lancs-vs-1",
            "cty": "JWT",
        }
        assert (epk["kty"], epk["crv"]) == ("EC", "P-256")

    def test_inner_jws_header_is_es256_with_the_bridge_kid(self, parties: Parties) -> None:
        header = _header(parties.inner_jws(parties.seal()))
        assert header == {"alg": "ES256", "kid": "bridge-2026", "typ": "JWT"}

    def test_inner_jws_payload_is_the_referral_json(self, parties: Parties) -> None:
        inner = parties.inner_jws(parties.seal())
        assert json.loads(_unb64url(inner.split(".")[1])) == PAYLOAD

    def test_sealed_string_does_not_contain_the_plaintext(self, parties: Parties) -> None:
        token = parties.seal()
        body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
        leaks = ["Quennell-Brightwater", "P-77", _b64url(body)[:40]]
        assert [leak for leak in leaks if leak in token] == []

    def test_sealing_to_a_key_set_encrypts_to_its_current_key(self, parties: Parties) -> None:
        old, new = _key("lancs-vs-0"), parties.provider
        recipients = KeySet([new.public_key, old.public_key], current_kid=new.kid)
        token = seal(PAYLOAD, signing_key=parties.bridge, recipient=recipients)
        assert _header(token)["kid"] == "lancs-vs-1"

    def test_each_seal_uses_a_fresh_ephemeral_key(self, parties: Parties) -> None:
        assert _header(parties.seal())["epk"] != _header(parties.seal())["epk"]

    def test_sealed_referral_opens_with_bare_cryptography_primitives(
        self, parties: Parties
    ) -> None:
        plaintext = _open_with_cryptography_only(parties.seal(), parties.provider, parties.bridge)
        assert json.loads(plaintext) == PAYLOAD

    def test_bare_primitives_reject_a_signature_by_another_key(self, parties: Parties) -> None:
        """Guards the interop helper above: it must really verify, or the test proves nothing."""
        with pytest.raises(InvalidSignature):
            _open_with_cryptography_only(parties.seal(), parties.provider, _key("bridge-2026"))

    def test_refuses_a_public_key_as_signing_key(self, parties: Parties) -> None:
        with pytest.raises(UnsuitableKeyError):
            seal(
                PAYLOAD,
                signing_key=parties.bridge.public_key,  # type: ignore[arg-type]
                recipient=parties.provider.public_key,
            )


class TestOpenSealedRefuses:
    """open_sealed refuses anything tampered, forged, unknown or off-contract."""

    @pytest.mark.parametrize(
        "segment", [1, 2, 3, 4], ids=["encrypted_key", "iv", "ciphertext", "tag"]
    )
    def test_a_tampered_segment_is_refused_as_tampered(
        self, parties: Parties, segment: int
    ) -> None:
        parts = parties.seal().split(".")
        parts[segment] = _flip_first_byte(parts[segment])
        with pytest.raises(TamperedError):
            parties.open(".".join(parts))

    def test_a_tampered_protected_header_is_refused_as_tampered(self, parties: Parties) -> None:
        token = parties.seal()
        header = _header(token)
        header["cty"] = "jwt"  # still valid and on-contract, but no longer what was authenticated
        forged = ".".join([_b64url(json.dumps(header).encode()), *token.split(".")[1:]])
        with pytest.raises(TamperedError):
            parties.open(forged)

    def test_tampered_error_message_holds_no_payload(self, parties: Parties) -> None:
        parts = parties.seal().split(".")
        parts[3] = _flip_first_byte(parts[3])
        with pytest.raises(TamperedError) as caught:
            parties.open(".".join(parts))
        assert "Quennell" not in str(caught.value)

    def test_a_different_provider_key_with_the_same_kid_cannot_open_it(
        self, parties: Parties
    ) -> None:
        impostor = _key(parties.provider.kid)
        with pytest.raises(TamperedError):
            open_sealed(
                parties.seal(),
                decryption_keys=KeySet.of(impostor),
                verification_keys=KeySet.of(parties.bridge.public_key),
            )

    def test_a_token_for_an_unknown_provider_kid_is_refused(self, parties: Parties) -> None:
        with pytest.raises(UnknownKeyError, match="lancs-vs-1"):
            open_sealed(
                parties.seal(),
                decryption_keys=KeySet.of(_key("someone-else")),
                verification_keys=KeySet.of(parties.bridge.public_key),
            )

    def test_a_signer_kid_missing_from_the_verification_keys_is_refused(
        self, parties: Parties
    ) -> None:
        with pytest.raises(UnknownKeyError, match="bridge-2026"):
            open_sealed(
                parties.seal(),
                decryption_keys=KeySet.of(parties.provider),
                verification_keys=KeySet.of(_key("bridge-2025").public_key),
            )

    def test_a_signature_by_another_key_with_the_bridge_kid_is_refused(
        self, parties: Parties
    ) -> None:
        forger = _key(parties.bridge.kid)
        token = seal(PAYLOAD, signing_key=forger, recipient=parties.provider.public_key)
        with pytest.raises(BadSignatureError):
            parties.open(token)

    def test_an_inner_jws_with_alg_none_is_refused(self, parties: Parties) -> None:
        header = _b64url(b'{"alg":"none","kid":"bridge-2026"}')
        body = _b64url(json.dumps(PAYLOAD).encode())
        token = parties.encrypt_raw(f"{header}.{body}.")
        with pytest.raises(UnexpectedAlgorithmError, match="'none'"):
            parties.open(token)

    def test_an_inner_jws_with_hs256_is_refused(self, parties: Parties) -> None:
        inner = jws.serialize_compact(
            {"alg": "HS256", "kid": "bridge-2026"},
            json.dumps(PAYLOAD).encode(),
            OctKey.generate_key(256),
            registry=JWSRegistry(algorithms=["HS256"]),
        )
        with pytest.raises(UnexpectedAlgorithmError, match="HS256"):
            parties.open(parties.encrypt_raw(inner))

    def test_a_jwe_with_direct_ecdh_es_is_refused(self, parties: Parties) -> None:
        inner = parties.inner_jws(parties.seal())
        with pytest.raises(UnexpectedAlgorithmError, match="ECDH-ES"):
            parties.open(parties.encrypt_raw(inner, alg="ECDH-ES"))

    def test_a_jwe_with_a128gcm_is_refused(self, parties: Parties) -> None:
        inner = parties.inner_jws(parties.seal())
        with pytest.raises(UnexpectedAlgorithmError, match="A128GCM"):
            parties.open(parties.encrypt_raw(inner, enc="A128GCM"))

    def test_a_signed_but_unencrypted_jws_is_refused(self, parties: Parties) -> None:
        with pytest.raises(MalformedTokenError, match="5"):
            parties.open(parties.inner_jws(parties.seal()))

    def test_a_public_key_cannot_be_used_to_decrypt(self, parties: Parties) -> None:
        with pytest.raises(UnsuitableKeyError):
            open_sealed(
                parties.seal(),
                decryption_keys=KeySet.of(parties.provider.public_key),
                verification_keys=KeySet.of(parties.bridge.public_key),
            )

    def test_a_signed_payload_that_is_not_a_json_object_is_refused(self, parties: Parties) -> None:
        inner = jws.serialize_compact(
            {"alg": "ES256", "kid": "bridge-2026"},
            b"[1, 2]",
            parties.bridge.jwk,
            registry=JWSRegistry(algorithms=["ES256"]),
        )
        with pytest.raises(MalformedTokenError, match="JSON object"):
            parties.open(parties.encrypt_raw(inner))


class TestOpenEvent:
    """open_event opens a sealed referral given as a CloudEvent or as a bare token."""

    def _event(self, token: str, **overrides: Any) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": "ref-0001",
            "source": "referral-bridge",
            "type": "victim.referral.created",
            "datacontenttype": "application/jose",
            "data": token,
            **overrides,
        }

    def _open(self, parties: Parties, body: bytes | str) -> tuple[Any, dict[str, Any]]:
        return open_event(
            body,
            decryption_keys=KeySet.of(parties.provider),
            verification_keys=KeySet.of(parties.bridge.public_key),
        )

    def test_a_cloudevent_gives_its_payload(self, parties: Parties) -> None:
        body = json.dumps(self._event(parties.seal())).encode()
        assert self._open(parties, body)[1] == PAYLOAD

    def test_a_cloudevent_gives_its_envelope_without_data(self, parties: Parties) -> None:
        event = self._event(parties.seal())
        envelope, _ = self._open(parties, json.dumps(event).encode())
        assert envelope == {name: value for name, value in event.items() if name != "data"}

    def test_a_bare_token_gives_no_envelope(self, parties: Parties) -> None:
        assert self._open(parties, parties.seal() + "\n") == (None, PAYLOAD)

    def test_a_cloudevent_with_plain_json_data_is_refused(self, parties: Parties) -> None:
        body = json.dumps(self._event(parties.seal(), datacontenttype="application/json"))
        with pytest.raises(NotSealedEventError, match="application/json"):
            self._open(parties, body)

    def test_a_cloudevent_whose_data_is_not_a_string_is_refused(self, parties: Parties) -> None:
        body = json.dumps(self._event(parties.seal(), data={"a": 1}))
        with pytest.raises(MalformedTokenError, match="data"):
            self._open(parties, body)

    def test_a_body_that_is_not_utf8_is_refused(self, parties: Parties) -> None:
        with pytest.raises(MalformedTokenError, match="UTF-8"):
            self._open(parties, b"\xff\xfe{")


class TestPublicSurface:
    """The sealing package's public surface is deliberate and pinned."""

    def test_exports_exactly_the_pinned_names(self) -> None:
        assert sorted(sealing.__all__) == sorted(
            [
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
                "TooLargeError",
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
        )

    def test_contract_constants_match_contract_section_4(self) -> None:
        assert (
            sealing.JWE_ALG,
            sealing.JWE_ENC,
            sealing.JWE_CTY,
            sealing.JWS_ALG,
            sealing.CONTENT_TYPE,
        ) == ("ECDH-ES+A256KW", "A256GCM", "JWT", "ES256", "application/jose")

    def test_every_error_is_a_sealing_error_that_says_when_it_is_raised(self) -> None:
        errors = [
            getattr(sealing, name)
            for name in sealing.__all__
            if name.endswith("Error") and name != "SealingError"
        ]
        assert [
            e.__name__
            for e in errors
            if not (issubclass(e, SealingError) and (e.__doc__ or "").startswith("Raised when"))
        ] == []

    def test_a_private_key_repr_shows_only_its_kid(self, parties: Parties) -> None:
        assert repr(parties.bridge) == "PrivateKey(kid='bridge-2026')"
