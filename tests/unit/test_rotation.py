"""Key rotation by kid: nothing sealed before, during or after a rotation becomes unreadable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from referral_bridge.bootstrap import ProviderSealer
from referral_bridge.cli.main import main
from referral_bridge.sealing import (
    KeySet,
    PrivateKey,
    UnknownKeyError,
    UnsuitableKeyError,
    generate_key_pair,
    load_key_set,
    open_sealed,
)
from referral_bridge.sealing.rotation import (
    add_public_key,
    load_signing_key,
    promote_key,
    public_set_document,
    rotate_key_set,
)

PROVIDER = "lancashire-victim-services"
PAYLOAD = {"referral_id": "r-1"}


def write_public(path: Path, private_set: Path) -> Path:
    path.write_text(json.dumps(public_set_document(load_key_set(private_set))))
    return path


class TestRotateKeySet:
    def test_rotation_adds_a_key_marks_it_current_and_keeps_the_old_one(
        self, tmp_path: Path
    ) -> None:
        old = generate_key_pair("p-2026-01", tmp_path)

        rotated = rotate_key_set(old.private_path, "p-2026-07")

        keys = load_key_set(old.private_path)
        assert rotated.kids == ("p-2026-01", "p-2026-07")
        assert keys.current.kid == "p-2026-07"
        assert keys.is_private

    def test_a_rotated_private_set_stays_owner_only(self, tmp_path: Path) -> None:
        path = tmp_path / "set.jwks"
        rotate_key_set(path, "k1")

        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_the_public_output_holds_every_kid_without_private_members(
        self, tmp_path: Path
    ) -> None:
        path, public = tmp_path / "set.jwks", tmp_path / "set.public.jwks"
        rotate_key_set(path, "k1")
        rotate_key_set(path, "k2", public_out=public)

        document = json.loads(public.read_text())
        assert [k["kid"] for k in document["keys"]] == ["k1", "k2"]
        assert not any("d" in k for k in document["keys"])
        assert load_key_set(public).current.kid == "k2"

    def test_rotation_refuses_a_kid_already_in_the_set(self, tmp_path: Path) -> None:
        path = tmp_path / "set.jwks"
        rotate_key_set(path, "k1")

        with pytest.raises(Exception, match="already has a key 'k1'"):
            rotate_key_set(path, "k1")

    def test_rotation_refuses_to_generate_into_a_public_set(self, tmp_path: Path) -> None:
        pair = generate_key_pair("k1", tmp_path)

        with pytest.raises(UnsuitableKeyError):
            rotate_key_set(pair.public_path, "k2")

    def test_the_cli_rotates_a_set(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "set.jwks"
        code = main(["keys", "rotate", "--set", str(path), "--kid", "k1"])

        assert code == 0
        assert load_key_set(path).current.kid == "k1"
        assert "current:  k1" in capsys.readouterr().out


class TestSigningKeySets:
    def test_the_bridge_signs_with_the_current_key_of_a_private_set(self, tmp_path: Path) -> None:
        path = tmp_path / "bridge.jwks"
        rotate_key_set(path, "bridge-1")
        rotate_key_set(path, "bridge-2")

        assert load_signing_key(path).kid == "bridge-2"

    def test_a_public_signing_key_is_refused(self, tmp_path: Path) -> None:
        pair = generate_key_pair("bridge-1", tmp_path)

        with pytest.raises(UnsuitableKeyError):
            load_signing_key(pair.public_path)

    def test_referrals_signed_before_during_and_after_a_signing_rotation_all_verify(
        self, tmp_path: Path
    ) -> None:
        provider = generate_key_pair(PROVIDER, tmp_path / "provider")
        recipients = {PROVIDER: load_key_set(provider.public_path)}
        bridge = tmp_path / "bridge.jwks"
        rotate_key_set(bridge, "bridge-1")
        before = ProviderSealer(load_signing_key(bridge), recipients).seal(PROVIDER, PAYLOAD)
        rotate_key_set(bridge, "bridge-2")
        # During: a worker not yet restarted still signs with the old key.
        old_key = load_key_set(bridge).get("bridge-1")
        assert isinstance(old_key, PrivateKey)
        during = ProviderSealer(old_key, recipients).seal(PROVIDER, PAYLOAD)
        after = ProviderSealer(load_signing_key(bridge), recipients).seal(PROVIDER, PAYLOAD)
        verify_with = load_key_set(write_public(tmp_path / "bridge.public.jwks", bridge))

        opened = [
            open_sealed(
                token,
                decryption_keys=load_key_set(provider.private_path),
                verification_keys=verify_with,
            )
            for token in (before, during, after)
        ]
        assert opened == [PAYLOAD] * 3


class TestProviderKeyRotation:
    def test_referrals_sealed_before_during_and_after_a_provider_rotation_all_open(
        self, tmp_path: Path
    ) -> None:
        bridge = generate_key_pair("bridge-1", tmp_path / "bridge")
        signing = load_signing_key(bridge.private_path)
        provider_set = tmp_path / "provider.jwks"
        rotate_key_set(provider_set, "p-1")
        force_copy = write_public(tmp_path / "force-copy.jwks", provider_set)
        before = ProviderSealer(signing, {PROVIDER: load_key_set(force_copy)}).seal(
            PROVIDER, PAYLOAD
        )
        # The provider rotates and sends its new public set; until the force loads it, the
        # bridge still seals to the old key ("during").
        rotate_key_set(provider_set, "p-2", public_out=tmp_path / "provider.public.jwks")
        during = ProviderSealer(signing, {PROVIDER: load_key_set(force_copy)}).seal(
            PROVIDER, PAYLOAD
        )
        add_public_key(force_copy, tmp_path / "provider.public.jwks")
        after = ProviderSealer(signing, {PROVIDER: load_key_set(force_copy)}).seal(
            PROVIDER, PAYLOAD
        )

        opened = [
            open_sealed(
                token,
                decryption_keys=load_key_set(provider_set),
                verification_keys=load_key_set(bridge.public_path),
            )
            for token in (before, during, after)
        ]
        assert opened == [PAYLOAD] * 3

    def test_a_provider_advertising_two_keys_gets_referrals_sealed_to_the_current_one(
        self, tmp_path: Path
    ) -> None:
        bridge = generate_key_pair("bridge-1", tmp_path / "bridge")
        provider_set = tmp_path / "provider.jwks"
        rotate_key_set(provider_set, "p-new")
        rotate_key_set(provider_set, "p-old")
        document = public_set_document(load_key_set(provider_set))
        # Mark the first key current explicitly: the file order must not decide.
        for entry in document["keys"]:
            entry["current"] = entry["kid"] == "p-new"
        advertised = tmp_path / "advertised.jwks"
        advertised.write_text(json.dumps(document))
        token = ProviderSealer(
            load_signing_key(bridge.private_path), {PROVIDER: load_key_set(advertised)}
        ).seal(PROVIDER, PAYLOAD)

        only_new = load_key_set(provider_set)
        new_key = only_new.get("p-new")
        assert new_key is not None
        assert (
            open_sealed(
                token,
                decryption_keys=KeySet.of(new_key),
                verification_keys=load_key_set(bridge.public_path),
            )
            == PAYLOAD
        )
        old_key = only_new.get("p-old")
        assert old_key is not None
        with pytest.raises(UnknownKeyError):
            open_sealed(
                token,
                decryption_keys=KeySet.of(old_key),
                verification_keys=load_key_set(bridge.public_path),
            )

    def test_adding_a_different_key_under_a_known_kid_is_refused(self, tmp_path: Path) -> None:
        first = generate_key_pair("p-1", tmp_path / "a")
        impostor = generate_key_pair("p-1", tmp_path / "b")
        force_copy = tmp_path / "copy.jwks"
        force_copy.write_text(first.public_path.read_text())

        with pytest.raises(Exception, match="differs from the key with that kid"):
            add_public_key(force_copy, impostor.public_path)


class TestAddRefusesPrivateKeys:
    def test_adding_to_a_private_set_is_refused_and_keeps_every_private_key(
        self, tmp_path: Path
    ) -> None:
        private_set = tmp_path / "provider.jwks"
        rotate_key_set(private_set, "p-1")
        incoming = write_public(tmp_path / "other.jwks", rotate_key_set(tmp_path / "o", "o-1").path)
        before = private_set.read_bytes()

        with pytest.raises(UnsuitableKeyError, match="--add is for the public copy"):
            add_public_key(private_set, incoming)

        assert private_set.read_bytes() == before
        assert load_key_set(private_set).is_private

    def test_an_incoming_file_with_a_private_key_is_refused_as_compromised(
        self, tmp_path: Path
    ) -> None:
        public_set = write_public(
            tmp_path / "public.jwks", rotate_key_set(tmp_path / "a", "a-1").path
        )
        leaked = rotate_key_set(tmp_path / "leaked.jwks", "b-1").path

        with pytest.raises(UnsuitableKeyError, match="compromised"):
            add_public_key(public_set, leaked)

        assert load_key_set(public_set).kids == ("a-1",)


class TestRewrites:
    def test_a_rewritten_private_set_stays_0600_and_keeps_its_owner(self, tmp_path: Path) -> None:
        path = rotate_key_set(tmp_path / "bridge.jwks", "b-1").path
        owner = (path.stat().st_uid, path.stat().st_gid)

        rotate_key_set(path, "b-2", stage=True)
        promote_key(path, "b-2")

        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert (info.st_uid, info.st_gid) == owner

    def test_the_folder_is_fsynced_after_the_rename(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        synced: list[bool] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        rotate_key_set(tmp_path / "bridge.jwks", "b-1")

        assert synced == [False, True]


class TestStaging:
    def test_a_staged_key_is_added_without_becoming_current(self, tmp_path: Path) -> None:
        path = rotate_key_set(tmp_path / "bridge.jwks", "b-1").path

        staged = rotate_key_set(path, "b-2", stage=True)

        assert staged.current == "b-1"
        keys = load_key_set(path)
        assert keys.kids == ("b-1", "b-2")
        assert keys.current.kid == "b-1"
        assert load_signing_key(path).kid == "b-1"

    def test_promoting_a_staged_key_makes_it_current(self, tmp_path: Path) -> None:
        path = rotate_key_set(tmp_path / "bridge.jwks", "b-1").path
        rotate_key_set(path, "b-2", stage=True)

        promote_key(path, "b-2")

        assert load_signing_key(path).kid == "b-2"
        assert load_key_set(path).kids == ("b-1", "b-2")

    def test_the_cli_stages_then_promotes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = rotate_key_set(tmp_path / "bridge.jwks", "b-1").path

        staged = main(["keys", "rotate", "--set", str(path), "--kid", "b-2", "--stage"])
        current_after_stage = load_key_set(path).current.kid
        promoted = main(["keys", "rotate", "--set", str(path), "--promote", "b-2"])

        assert (staged, promoted) == (0, 0)
        assert current_after_stage == "b-1"
        assert load_key_set(path).current.kid == "b-2"
        assert "staged:   b-2" in capsys.readouterr().out
