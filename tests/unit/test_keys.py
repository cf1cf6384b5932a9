"""Key files: generated without exposing or overwriting a key, loaded only when safe."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from referral_bridge.sealing import (
    InvalidKeyFileError,
    InvalidKeyIdError,
    KeyFileExistsError,
    MissingKeyFileError,
    PrivateKey,
    PublicKey,
    UnsafeKeyFileError,
    generate_key_pair,
    load_key_set,
    load_private_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _jwk(kid: str, *, private: bool, crv: str = "P-256") -> dict[str, Any]:
    key = ECKey.generate_key(crv, parameters={"kid": kid})
    return dict(key.as_dict(private=private))


def _write(path: Path, document: object, *, mode: int) -> Path:
    path.write_text(json.dumps(document))
    path.chmod(mode)
    return path


@pytest.fixture
def restrictive_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


class TestGenerateKeyPair:
    """generate_key_pair writes a P-256 key pair without ever exposing or replacing a key."""

    def test_private_key_file_is_mode_0600(self, tmp_path: Path) -> None:
        files = generate_key_pair("bridge-2026", tmp_path)
        assert _mode(files.private_path) == 0o600

    @pytest.mark.usefixtures("restrictive_umask")
    def test_public_key_file_is_mode_0644_even_under_a_restrictive_umask(
        self, tmp_path: Path
    ) -> None:
        files = generate_key_pair("bridge-2026", tmp_path)
        assert _mode(files.public_path) == 0o644

    def test_files_are_named_after_the_kid(self, tmp_path: Path) -> None:
        files = generate_key_pair("provider-a-1", tmp_path)
        assert (files.private_path.name, files.public_path.name) == (
            "provider-a-1.private.jwk",
            "provider-a-1.public.jwk",
        )

    def test_private_file_is_created_exclusively_with_mode_0600_from_the_start(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[tuple[str, int, int]] = []
        real_open = os.open

        def recording_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
            calls.append((str(path), flags, mode))
            return real_open(path, flags, mode, **kwargs)

        monkeypatch.setattr(os, "open", recording_open)
        files = generate_key_pair("bridge-2026", tmp_path)
        flags, mode = next((f, m) for p, f, m in calls if p == str(files.private_path))
        assert (flags & os.O_EXCL, flags & os.O_CREAT, mode) == (os.O_EXCL, os.O_CREAT, 0o600)

    def test_private_jwk_is_a_p256_key_with_kid_and_no_use_or_alg(self, tmp_path: Path) -> None:
        files = generate_key_pair("bridge-2026", tmp_path)
        document = json.loads(files.private_path.read_text())
        assert (document["kty"], document["crv"], document["kid"], "d" in document) == (
            "EC",
            "P-256",
            "bridge-2026",
            True,
        )
        assert "use" not in document
        assert "alg" not in document

    def test_public_jwk_holds_no_private_member(self, tmp_path: Path) -> None:
        files = generate_key_pair("bridge-2026", tmp_path)
        document = json.loads(files.public_path.read_text())
        assert set(document) == {"kid", "kty", "crv", "x", "y"}

    def test_refuses_to_overwrite_an_existing_private_key(self, tmp_path: Path) -> None:
        first = generate_key_pair("bridge-2026", tmp_path)
        before = first.private_path.read_bytes()
        with pytest.raises(KeyFileExistsError, match="refusing to overwrite"):
            generate_key_pair("bridge-2026", tmp_path)
        assert first.private_path.read_bytes() == before

    def test_refuses_when_only_the_public_file_exists_and_leaves_no_private_file(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "bridge-2026.public.jwk").write_text("{}")
        with pytest.raises(KeyFileExistsError):
            generate_key_pair("bridge-2026", tmp_path)
        assert not (tmp_path / "bridge-2026.private.jwk").exists()

    @pytest.mark.parametrize("kid", ["", "../escape", "a/b", ".hidden", "x" * 129])
    def test_refuses_a_kid_that_is_unsafe_as_a_file_name(self, tmp_path: Path, kid: str) -> None:
        with pytest.raises(InvalidKeyIdError):
            generate_key_pair(kid, tmp_path)

    def test_a_name_names_the_files_and_the_kid_stays_inside(self, tmp_path: Path) -> None:
        files = generate_key_pair("bridge-2026-11", tmp_path, name="bridge")

        assert (files.private_path.name, files.public_path.name) == (
            "bridge.private.jwk",
            "bridge.public.jwk",
        )
        assert load_private_key(files.private_path).kid == "bridge-2026-11"

    @pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
    def test_refuses_a_name_that_is_unsafe_as_a_file_name(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(InvalidKeyIdError, match="file name"):
            generate_key_pair("bridge-2026", tmp_path, name=name)
        assert list(tmp_path.iterdir()) == []

    def test_generated_private_key_loads_back_with_its_kid(self, tmp_path: Path) -> None:
        files = generate_key_pair("bridge-2026", tmp_path)
        assert load_private_key(files.private_path).kid == "bridge-2026"


class TestLoadPrivateKey:
    """load_private_key accepts only an owner-only P-256 private JWK with a kid."""

    def test_accepts_a_0600_file(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=0o600)
        key = load_private_key(path)
        assert isinstance(key, PrivateKey)
        assert key.kid == "bridge-1"

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
    def test_refuses_a_file_group_or_others_can_access(self, tmp_path: Path, mode: int) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=mode)
        with pytest.raises(UnsafeKeyFileError, match="chmod 600"):
            load_private_key(path)

    def test_unsafe_file_message_names_the_path(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=0o644)
        with pytest.raises(UnsafeKeyFileError) as caught:
            load_private_key(path)
        assert str(path) in str(caught.value)

    def test_missing_file_message_names_the_path(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.private.jwk"
        with pytest.raises(MissingKeyFileError) as caught:
            load_private_key(path)
        assert str(path) in str(caught.value)

    def test_refuses_a_public_key(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=False), mode=0o600)
        with pytest.raises(InvalidKeyFileError, match="public key"):
            load_private_key(path)

    def test_refuses_a_key_on_another_curve(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("b", private=True, crv="P-384"), mode=0o600)
        with pytest.raises(InvalidKeyFileError, match="P-256"):
            load_private_key(path)

    def test_refuses_a_key_without_a_kid(self, tmp_path: Path) -> None:
        document = _jwk("bridge-1", private=True)
        del document["kid"]
        path = _write(tmp_path / "k.jwk", document, mode=0o600)
        with pytest.raises(InvalidKeyFileError, match="kid"):
            load_private_key(path)

    def test_refuses_a_point_off_the_curve_without_quoting_key_material(
        self, tmp_path: Path
    ) -> None:
        document = _jwk("bridge-1", private=True)
        document["x"] = _jwk("other", private=False)["x"]
        path = _write(tmp_path / "k.jwk", document, mode=0o600)
        with pytest.raises(InvalidKeyFileError) as caught:
            load_private_key(path)
        assert document["d"] not in str(caught.value)
        assert document["x"] not in str(caught.value)

    def test_refuses_a_file_that_is_not_json_without_quoting_it(self, tmp_path: Path) -> None:
        path = tmp_path / "k.jwk"
        path.write_text("secret-looking-text {")
        path.chmod(0o600)
        with pytest.raises(InvalidKeyFileError) as caught:
            load_private_key(path)
        assert "secret-looking-text" not in str(caught.value)

    def test_refuses_deeply_nested_json_as_an_invalid_key_file(self, tmp_path: Path) -> None:
        path = tmp_path / "k.jwk"
        path.write_text("[" * 100_000 + "]" * 100_000)
        path.chmod(0o600)
        with pytest.raises(InvalidKeyFileError, match="not UTF-8 JSON"):
            load_private_key(path)


class TestSystemdCredentials:
    """A key delivered by systemd `LoadCredential=` may show group read (the ACL mask, 0440)."""

    @pytest.fixture
    def credentials(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        directory = tmp_path / "credentials"
        directory.mkdir(mode=0o500)
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
        return directory

    def _key_in(self, folder: Path, *, mode: int) -> Path:
        folder.chmod(0o700)
        path = _write(folder / "bridge.private.jwk", _jwk("bridge-1", private=True), mode=mode)
        folder.chmod(0o500)
        return path

    def test_accepts_a_0440_key_inside_the_credentials_directory(self, credentials: Path) -> None:
        path = self._key_in(credentials, mode=0o440)
        assert load_private_key(path).kid == "bridge-1"

    def test_accepts_a_0440_private_key_set_inside_the_credentials_directory(
        self, credentials: Path
    ) -> None:
        credentials.chmod(0o700)
        keys = [_jwk("prov-1", private=True)]
        path = _write(credentials / "p.jwks", {"keys": keys}, mode=0o440)
        assert load_key_set(path).is_private

    @pytest.mark.usefixtures("credentials")
    def test_still_refuses_a_0440_key_outside_the_credentials_directory(
        self, tmp_path: Path
    ) -> None:
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=0o440)
        with pytest.raises(UnsafeKeyFileError, match="chmod 600"):
            load_private_key(path)

    def test_refuses_a_0440_key_without_a_credentials_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        path = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=0o440)
        with pytest.raises(UnsafeKeyFileError):
            load_private_key(path)

    @pytest.mark.parametrize("mode", [0o444, 0o404, 0o460, 0o442])
    def test_refuses_world_or_group_write_bits_even_inside_the_credentials_directory(
        self, credentials: Path, mode: int
    ) -> None:
        path = self._key_in(credentials, mode=mode)
        with pytest.raises(UnsafeKeyFileError):
            load_private_key(path)

    def test_a_symlink_in_the_credentials_directory_to_a_file_outside_does_not_qualify(
        self, credentials: Path, tmp_path: Path
    ) -> None:
        target = _write(tmp_path / "k.jwk", _jwk("bridge-1", private=True), mode=0o440)
        credentials.chmod(0o700)
        link = credentials / "bridge.private.jwk"
        link.symlink_to(target)
        with pytest.raises(UnsafeKeyFileError):
            load_private_key(link)


class TestLoadKeySet:
    """load_key_set reads one JWK or a JWKS and knows which key is current."""

    def test_single_jwk_file_gives_a_set_whose_current_key_is_that_key(
        self, tmp_path: Path
    ) -> None:
        path = _write(tmp_path / "p.jwk", _jwk("prov-1", private=False), mode=0o644)
        assert load_key_set(path).current.kid == "prov-1"

    def test_last_key_in_a_jwks_is_current_when_none_is_marked(self, tmp_path: Path) -> None:
        keys = [_jwk("prov-1", private=False), _jwk("prov-2", private=False)]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)
        assert load_key_set(path).current.kid == "prov-2"

    def test_key_marked_current_is_current_even_when_not_last(self, tmp_path: Path) -> None:
        keys = [{**_jwk("prov-1", private=False), "current": True}, _jwk("prov-2", private=False)]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)
        assert load_key_set(path).current.kid == "prov-1"

    def test_every_key_in_a_jwks_can_be_found_by_kid(self, tmp_path: Path) -> None:
        keys = [_jwk("prov-1", private=False), _jwk("prov-2", private=False)]
        key_set = load_key_set(_write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644))
        assert [key_set.get(kid) is not None for kid in ("prov-1", "prov-2")] == [True, True]

    def test_get_returns_none_for_an_unknown_kid(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "p.jwk", _jwk("prov-1", private=False), mode=0o644)
        assert load_key_set(path).get("nope") is None

    def test_current_marker_is_not_kept_in_the_loaded_jwk(self, tmp_path: Path) -> None:
        keys = [{**_jwk("prov-1", private=False), "current": True}]
        key = load_key_set(_write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)).current
        assert isinstance(key, PublicKey)
        assert "current" not in key.as_jwk()

    def test_refuses_two_keys_marked_current(self, tmp_path: Path) -> None:
        keys = [
            {**_jwk("prov-1", private=False), "current": True},
            {**_jwk("prov-2", private=False), "current": True},
        ]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)
        with pytest.raises(InvalidKeyFileError, match="mark at most one"):
            load_key_set(path)

    def test_refuses_a_repeated_kid(self, tmp_path: Path) -> None:
        keys = [_jwk("prov-1", private=False), _jwk("prov-1", private=False)]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)
        with pytest.raises(InvalidKeyFileError, match="repeats kid"):
            load_key_set(path)

    def test_refuses_an_empty_jwks(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "p.jwks", {"keys": []}, mode=0o644)
        with pytest.raises(InvalidKeyFileError):
            load_key_set(path)

    def test_public_key_set_may_be_world_readable(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "p.jwk", _jwk("prov-1", private=False), mode=0o644)
        assert len(load_key_set(path)) == 1

    def test_private_key_set_that_others_can_read_is_refused(self, tmp_path: Path) -> None:
        keys = [_jwk("prov-1", private=True), _jwk("prov-2", private=True)]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o644)
        with pytest.raises(UnsafeKeyFileError, match="chmod 600"):
            load_key_set(path)

    def test_private_key_set_with_mode_0600_is_private(self, tmp_path: Path) -> None:
        keys = [_jwk("prov-1", private=True), _jwk("prov-2", private=True)]
        path = _write(tmp_path / "p.jwks", {"keys": keys}, mode=0o600)
        assert load_key_set(path).is_private

    def test_missing_file_message_names_the_path(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.jwks"
        with pytest.raises(MissingKeyFileError) as caught:
            load_key_set(path)
        assert str(path) in str(caught.value)
