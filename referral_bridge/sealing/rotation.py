"""Key sets that rotate by kid: the bridge's signing set and providers' encryption sets.

A set is a JWKS file. One key carries ``"current": true``: the bridge signs with the current key
of its private set, and encrypts to the current key of a provider's public set. Rotation adds a
key and moves the mark; old keys stay so that everything sealed or signed with them still opens
during the overlap. A new signing key can be *staged* first (added, not current) so providers
hold its public half before the bridge signs with it, then *promoted*. Files are replaced
atomically (write, fsync, rename, fsync the folder), never edited in place, and keep their
owner; a set with private keys is always written 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from referral_bridge.sealing.errors import (
    InvalidKeyFileError,
    MissingKeyFileError,
    UnsuitableKeyError,
)
from referral_bridge.sealing.keys import (
    CURRENT_MEMBER,
    CURVE,
    AnyKey,
    KeySet,
    PrivateKey,
    PublicKey,
    _check_kid,
    load_key_set,
)

__all__ = [
    "RotatedSet",
    "add_public_key",
    "load_signing_key",
    "promote_key",
    "public_set_document",
    "rotate_key_set",
    "write_key_set",
]


@dataclass(frozen=True, slots=True)
class RotatedSet:
    """What a rotation did: the set's file, its kids in order, and the new current kid."""

    path: Path
    kids: tuple[str, ...]
    current: str
    public_path: Path | None = None


def load_signing_key(path: Path) -> PrivateKey:
    """The key the bridge signs with: a private JWK, or the current key of a private JWKS.

    The file must be mode 0600 (checked by ``load_key_set`` for any file with private keys).
    """
    keys = load_key_set(path)
    current = keys.current
    if not isinstance(current, PrivateKey):
        raise UnsuitableKeyError(
            f"the current key {current.kid!r} in {path} is public; the signing key setting must "
            "point at the bridge's private key file or private key set"
        )
    return current


def set_document(keys: KeySet, *, private: bool) -> dict[str, Any]:
    """A JWKS document for ``keys`` with the current key marked (private members if asked)."""
    entries: list[dict[str, Any]] = []
    for key in keys:
        include_private = private and isinstance(key, PrivateKey)
        entry: dict[str, Any] = {"kid": key.kid, **key.jwk.as_dict(private=include_private)}
        if key.kid == keys.current.kid:
            entry[CURRENT_MEMBER] = True
        entries.append(entry)
    return {"keys": entries}


def public_set_document(keys: KeySet) -> dict[str, Any]:
    """The public JWKS of a set: what providers verify with, or what the force encrypts to."""
    return set_document(keys, private=False)


def write_key_set(path: Path, keys: KeySet) -> None:
    """Replace ``path`` atomically with ``keys``; 0600 if any key is private, else 0644."""
    private = any(isinstance(key, PrivateKey) for key in keys)
    content = (json.dumps(set_document(keys, private=private), indent=2) + "\n").encode("utf-8")
    _replace_file(path, content, mode=0o600 if private else 0o644)


def rotate_key_set(
    path: Path, kid: str, *, public_out: Path | None = None, stage: bool = False
) -> RotatedSet:
    """Generate a new P-256 key ``kid``, add it to the private set at ``path``, mark it current.

    A missing file starts a new set. A single-JWK file becomes a JWKS holding the old key too.
    ``public_out`` also writes the public JWKS to hand to the other side. ``stage`` adds the key
    without making it current (promote it later with ``promote_key``): the other side can take
    the new public key before anything is signed or sealed with it.
    """
    _check_kid(kid)
    path = Path(path)
    existing: list[AnyKey] = []
    kept_current: str | None = None
    if path.exists():
        current = load_key_set(path)
        kept_current = current.current.kid
        if not current.is_private:
            raise UnsuitableKeyError(
                f"{path} holds public keys: a new key can only be generated into a private set; "
                "to add a key someone sent you, use --add KEYFILE"
            )
        existing = list(current)
    if kid in {key.kid for key in existing}:
        raise InvalidKeyFileError(
            f"{path} already has a key {kid!r}; rotation needs a new kid", path=path
        )
    if stage and not existing:
        raise MissingKeyFileError(
            f"key set {path} does not exist: there is no current key to keep while staging; "
            "create the set without --stage",
            path=path,
        )
    new = ECKey.generate_key(CURVE, parameters={"kid": kid}, private=True)
    current_kid = kept_current if stage and kept_current is not None else kid
    rotated = KeySet([*existing, PrivateKey(kid=kid, jwk=new)], current_kid=current_kid)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_key_set(path, rotated)
    if public_out is not None:
        _replace_file(
            public_out,
            (json.dumps(public_set_document(rotated), indent=2) + "\n").encode("utf-8"),
            mode=0o644,
        )
    return RotatedSet(path=path, kids=rotated.kids, current=current_kid, public_path=public_out)


def promote_key(path: Path, kid: str) -> RotatedSet:
    """Mark the key ``kid`` (already in the set at ``path``, e.g. staged) current."""
    path = Path(path)
    if not path.exists():
        raise MissingKeyFileError(f"key set {path} does not exist", path=path)
    keys = load_key_set(path)
    if kid not in keys.kids:
        raise InvalidKeyFileError(
            f"{path} has no key {kid!r} (it has {', '.join(keys.kids)}); stage it first with "
            "`keys rotate --kid KID --stage`",
            path=path,
        )
    promoted = KeySet(list(keys), current_kid=kid)
    write_key_set(path, promoted)
    return RotatedSet(path=path, kids=promoted.kids, current=kid)


def add_public_key(path: Path, key_file: Path) -> RotatedSet:
    """Add the public key(s) in ``key_file`` to the public set at ``path``, marking it current.

    This is the force's side of a provider's rotation: the provider sends its new public key (or
    its whole public JWKS, whose current key becomes current here).
    """
    path, key_file = Path(path), Path(key_file)
    incoming = load_key_set(key_file)
    if any(isinstance(key, PrivateKey) for key in incoming):
        raise UnsuitableKeyError(
            f"{key_file} holds a private key: nothing was added. Only public keys are ever sent "
            "between parties; treat this key as compromised, tell its owner to rotate it, and "
            "delete every copy of the file"
        )
    if not path.exists():
        raise MissingKeyFileError(f"key set {path} does not exist", path=path)
    current = load_key_set(path)
    if any(isinstance(key, PrivateKey) for key in current):
        raise UnsuitableKeyError(
            f"{path} holds private keys: --add is for the public copy of another party's keys "
            "and would drop them; nothing was changed. To add a key of your own, use --kid"
        )
    merged: dict[str, AnyKey] = {key.kid: _public(key) for key in current}
    for key in incoming:
        known = merged.get(key.kid)
        if known is not None and _public(known).as_jwk() != _public(key).as_jwk():
            raise InvalidKeyFileError(
                f"{key_file} has a key {key.kid!r} that differs from the key with that kid in "
                f"{path}; a kid names one key for ever, so ask for a key with a new kid",
                path=key_file,
            )
        merged[key.kid] = _public(key)
    rotated = KeySet(merged.values(), current_kid=incoming.current.kid)
    write_key_set(path, rotated)
    return RotatedSet(path=path, kids=rotated.kids, current=rotated.current.kid)


def _public(key: AnyKey) -> PublicKey:
    return key.public_key if isinstance(key, PrivateKey) else key


def _replace_file(path: Path, content: bytes, *, mode: int) -> None:
    """Write a sibling temporary file with the final mode and the old file's owner, fsync it,
    rename it over, then fsync the folder so the rename survives a crash.

    Keeping the owner matters when root rotates the bridge's set: a root-owned 0600 file would
    stop the bridge at its next start.
    """
    path = Path(path)
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                raise InvalidKeyFileError(
                    f"{path} belongs to uid {old.st_uid}; run the command as that user (or as "
                    "root) so the rewritten file keeps its owner. Nothing was changed",
                    path=path,
                ) from None
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
