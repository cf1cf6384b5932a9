"""Interoperability: referrals the bridge seals open with jwcrypto, an independent JOSE library.

So the wire format is the contract's, not one library's. jwcrypto also refuses what must be
refused: tampered ciphertext, the wrong key, and a kid the recipient does not hold. And the
other way: a token jwcrypto seals to the contract opens with the bridge's `open_sealed`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# jwcrypto ships no type information (no py.typed, no stubs package installed).
from jwcrypto import jwe, jwk, jws  # type: ignore[import-untyped]
from jwcrypto.common import JWException  # type: ignore[import-untyped]

from referral_bridge.core import ids
from referral_bridge.sealing import (
    TamperedError,
    UnknownKeyError,
    generate_key_pair,
    load_key_set,
    load_private_key,
    open_sealed,
)
from tests.fakes import KeyMaterial, make_keys

pytestmark = pytest.mark.integration

PROVIDER = "lancashire-victim-services"
PAYLOAD = {"referral_id": "r-1", "case_ref": "LC-26-0000001", "victim_id": "P-0001"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return make_keys(tmp_path_factory.mktemp("keys"))


def jwk_of(path: Path) -> jwk.JWK:
    return jwk.JWK(**json.loads(path.read_text()))


def open_with_jwcrypto(token: str, decrypt_with: jwk.JWK | jwk.JWKSet, verify_with: jwk.JWK) -> Any:
    outer = jwe.JWE()
    outer.deserialize(token, key=decrypt_with)
    inner = jws.JWS()
    inner.deserialize(outer.payload.decode("ascii"))
    inner.verify(verify_with)
    return json.loads(inner.payload)


def sealed(keys: KeyMaterial) -> str:
    return keys.sealer().seal(PROVIDER, PAYLOAD)


class TestJwcryptoOpensTheBridgesReferrals:
    def test_jwcrypto_decrypts_and_verifies_a_sealed_referral(self, keys: KeyMaterial) -> None:
        payload = open_with_jwcrypto(
            sealed(keys), jwk_of(keys.provider_private[PROVIDER]), jwk_of(keys.bridge_public)
        )

        assert payload == PAYLOAD

    def test_the_headers_are_the_contracts(self, keys: KeyMaterial) -> None:
        outer = jwe.JWE()
        outer.deserialize(sealed(keys), key=jwk_of(keys.provider_private[PROVIDER]))
        inner = jws.JWS()
        inner.deserialize(outer.payload.decode("ascii"))

        assert outer.jose_header["alg"] == "ECDH-ES+A256KW"
        assert outer.jose_header["enc"] == "A256GCM"
        assert outer.jose_header["cty"] == "JWT"
        assert outer.jose_header["kid"] == PROVIDER
        assert inner.jose_header["alg"] == "ES256"
        assert inner.jose_header["kid"] == "bridge-test"

    def test_jwcrypto_refuses_tampered_ciphertext(self, keys: KeyMaterial) -> None:
        parts = sealed(keys).split(".")
        flipped = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]
        tampered = ".".join([*parts[:3], flipped, parts[4]])

        with pytest.raises(JWException):
            open_with_jwcrypto(
                tampered, jwk_of(keys.provider_private[PROVIDER]), jwk_of(keys.bridge_public)
            )

    def test_jwcrypto_refuses_the_wrong_key(self, keys: KeyMaterial, tmp_path: Path) -> None:
        other = generate_key_pair(PROVIDER, tmp_path)  # same kid, different key

        with pytest.raises(JWException):
            open_with_jwcrypto(sealed(keys), jwk_of(other.private_path), jwk_of(keys.bridge_public))

    def test_jwcrypto_refuses_a_kid_the_recipient_does_not_hold(
        self, keys: KeyMaterial, tmp_path: Path
    ) -> None:
        unrelated = jwk.JWKSet()
        unrelated.add(jwk_of(generate_key_pair("someone-else", tmp_path).private_path))

        with pytest.raises(JWException):
            open_with_jwcrypto(sealed(keys), unrelated, jwk_of(keys.bridge_public))

    def test_jwcrypto_refuses_a_signature_by_another_key(
        self, keys: KeyMaterial, tmp_path: Path
    ) -> None:
        forger = generate_key_pair("bridge-test", tmp_path)

        with pytest.raises(JWException):
            open_with_jwcrypto(
                sealed(keys), jwk_of(keys.provider_private[PROVIDER]), jwk_of(forger.public_path)
            )


def seal_with_jwcrypto(keys: KeyMaterial, *, kid: str = PROVIDER) -> str:
    signer = jws.JWS(json.dumps(PAYLOAD).encode())
    signer.add_signature(
        jwk_of(keys.bridge_private),
        protected=json.dumps({"alg": "ES256", "kid": "bridge-test", "typ": "JWT"}),
    )
    outer = jwe.JWE(
        signer.serialize(compact=True).encode(),
        protected=json.dumps({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "kid": kid, "cty": "JWT"}),
    )
    outer.add_recipient(jwk_of(keys.provider_public[PROVIDER]))
    return str(outer.serialize(compact=True))


class TestTheBridgeOpensJwcryptoTokens:
    def test_a_token_sealed_by_jwcrypto_opens_with_open_sealed(self, keys: KeyMaterial) -> None:
        payload = open_sealed(
            seal_with_jwcrypto(keys),
            decryption_keys=keys.provider_keys(PROVIDER),
            verification_keys=keys.bridge_verification_keys(),
        )

        assert payload == PAYLOAD

    def test_open_sealed_refuses_an_unknown_kid_from_jwcrypto(self, keys: KeyMaterial) -> None:
        with pytest.raises(UnknownKeyError):
            open_sealed(
                seal_with_jwcrypto(keys, kid="not-a-provider-key"),
                decryption_keys=keys.provider_keys(PROVIDER),
                verification_keys=keys.bridge_verification_keys(),
            )

    def test_open_sealed_refuses_tampered_jwcrypto_ciphertext(self, keys: KeyMaterial) -> None:
        parts = seal_with_jwcrypto(keys).split(".")
        parts[3] = parts[3][:-2] + ("A" if parts[3][-2] != "A" else "B") + parts[3][-1]

        with pytest.raises(TamperedError):
            open_sealed(
                ".".join(parts),
                decryption_keys=keys.provider_keys(PROVIDER),
                verification_keys=load_key_set(keys.bridge_public),
            )

    def test_the_bridge_private_key_loads_in_jwcrypto_too(self, keys: KeyMaterial) -> None:
        assert jwk_of(keys.bridge_private).thumbprint() == (
            jwk.JWK(**load_private_key(keys.bridge_private).jwk.as_dict(private=True)).thumbprint()
        )


SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@pytest.fixture
def docs_example(keys: KeyMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The worked example in docs/security.md, run as written (in a folder holding its keys)."""
    text = SECURITY_DOC.read_text(encoding="utf-8")
    start = text.index("```python\nimport json\nimport uuid\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    for name, path in (
        ("provider.private.jwks", keys.provider_private[PROVIDER]),
        ("bridge.public.jwks", keys.bridge_public),
    ):
        document = json.loads(path.read_text())
        keys_list = document.get("keys", [document])
        (tmp_path / name).write_text(json.dumps({"keys": keys_list}))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(SECURITY_DOC), "exec"), namespace)  # noqa: S102 (our own docs)
    return namespace


def envelope(token: str, event_id: str, event_type: str) -> bytes:
    return json.dumps({"id": event_id, "type": event_type, "data": token}).encode()


class TestTheDocsWorkedExample:
    def test_it_opens_a_referral_addressed_to_the_provider(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        payload = {"referral_id": "r-1", "provider": PROVIDER, "victim": {"name": "X"}}
        token = keys.sealer().seal(PROVIDER, payload)

        opened = docs_example["open_referral"](envelope(token, "r-1", "victim.referral.created"))

        assert opened == payload

    def test_it_refuses_a_referral_replayed_as_a_withdrawal(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        token = keys.sealer().seal(PROVIDER, {"referral_id": "r-1", "provider": PROVIDER})
        body = envelope(token, ids.withdrawal_id("r-1"), "victim.referral.withdrawn")

        with pytest.raises(docs_example["Refused"], match="type_mismatch"):
            docs_example["open_referral"](body)

    def test_it_refuses_a_referral_for_another_provider(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        token = keys.sealer().seal(PROVIDER, {"referral_id": "r-1", "provider": "other"})

        with pytest.raises(docs_example["Refused"], match="wrong_provider"):
            docs_example["open_referral"](envelope(token, "r-1", "victim.referral.created"))

    def test_it_accepts_a_withdrawal_under_its_own_id(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        payload = {
            "referral_id": "r-1",
            "provider": PROVIDER,
            "withdrawn_at": "2026-11-23T10:41:00Z",
        }
        token = keys.sealer().seal(PROVIDER, payload)
        body = envelope(token, ids.withdrawal_id("r-1"), "victim.referral.withdrawn")

        assert docs_example["open_referral"](body) == payload

    def test_it_refuses_a_withdrawal_naming_no_provider(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        payload = {"referral_id": "r-1", "withdrawn_at": "2026-11-23T10:41:00Z"}
        token = keys.sealer().seal(PROVIDER, payload)
        body = envelope(token, ids.withdrawal_id("r-1"), "victim.referral.withdrawn")

        with pytest.raises(docs_example["Refused"], match="wrong_provider"):
            docs_example["open_referral"](body)

    def test_it_accepts_an_update_under_its_own_id(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        payload = {"referral_id": "r-1", "provider": PROVIDER, "victim": {}, "revision": 2}
        token = keys.sealer().seal(PROVIDER, payload)
        body = envelope(token, ids.update_id("r-1", 2), "victim.referral.updated")

        assert docs_example["open_referral"](body) == payload

    def test_it_refuses_an_update_sent_as_a_referral(
        self, keys: KeyMaterial, docs_example: Any
    ) -> None:
        payload = {"referral_id": "r-1", "provider": PROVIDER, "victim": {}, "revision": 2}
        token = keys.sealer().seal(PROVIDER, payload)

        with pytest.raises(docs_example["Refused"], match="type_mismatch"):
            docs_example["open_referral"](envelope(token, "r-1", "victim.referral.created"))
