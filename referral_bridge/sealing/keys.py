"""EC P-256 JWK key files: generated safely, loaded with permission checks, grouped by kid.

The same kind of key serves both ends of a sealed referral: the bridge signs with its private key,
and encrypts to a provider's public key. Keys carry no ``use`` member so one generator serves both.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, import_key

from referral_bridge.sealing.errors import (
    InvalidKeyFileError,
    InvalidKeyIdError,
    KeyFileError,
    KeyFileExistsError,
    MissingKeyFileError,
    UnsafeKeyFileError,
)

__all__ = [
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "AnyKey",
    "KeyPairFiles",
    "KeySet",
    "PrivateKey",
    "PublicKey",
    "generate_key_pair",
    "load_key_set",
    "load_private_key",
]

CURVE = "P-256"
PRIVATE_SUFFIX = ".private.jwk"
PUBLIC_SUFFIX = ".public.jwk"
# Non-standard JWKS member marking the key to encrypt to; it is ours, so it is stripped on load.
CURRENT_MEMBER = "current"
# A key file is a few hundred bytes; a cap stops a wrong path (a log, a device) being slurped.
MAX_KEY_FILE_BYTES = 1024 * 1024
# The kid becomes part of a file name, so it must not be able to climb out of the key directory.
_KID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, eq=False, slots=True)
class PublicKey:
    """A P-256 public key with its kid: what the bridge encrypts to or verifies with."""

    kid: str
    jwk: ECKey

    def as_jwk(self) -> dict[str, Any]:
        """Return the public JWK as a plain dict, ready to publish."""
        return dict(self.jwk.as_dict(private=False))

    def __repr__(self) -> str:
        return f"PublicKey(kid={self.kid!r})"


@dataclass(frozen=True, eq=False, slots=True)
class PrivateKey:
    """A P-256 private key with its kid: what the bridge signs with or a provider decrypts with."""

    kid: str
    jwk: ECKey

    @property
    def public_key(self) -> PublicKey:
        """The matching public key, carrying the same kid."""
        return PublicKey(kid=self.kid, jwk=import_key(self.jwk.as_dict(private=False), "EC"))

    def __repr__(self) -> str:
        # The default repr would be harmless today, but a key's repr must never risk holding "d".
        return f"PrivateKey(kid={self.kid!r})"


AnyKey = PublicKey | PrivateKey


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """Where ``generate_key_pair`` wrote a new key pair."""

    kid: str
    private_path: Path
    public_path: Path


class KeySet:
    """Keys looked up by kid, with one marked current: a provider may publish several (rotation)."""

    __slots__ = ("_current_kid", "_keys")

    def __init__(self, keys: Iterable[AnyKey], *, current_kid: str | None = None) -> None:
        ordered = tuple(keys)
        if not ordered:
            raise ValueError("a key set needs at least one key")
        by_kid: dict[str, AnyKey] = {}
        for key in ordered:
            if key.kid in by_kid:
                raise ValueError(f"duplicate kid {key.kid!r} in key set")
            by_kid[key.kid] = key
        if current_kid is None:
            current_kid = ordered[-1].kid
        elif current_kid not in by_kid:
            raise ValueError(f"current kid {current_kid!r} is not in the key set")
        self._keys = by_kid
        self._current_kid = current_kid

    @classmethod
    def of(cls, *keys: AnyKey) -> KeySet:
        """Build a set from keys in hand; the last one is current."""
        return cls(keys)

    @property
    def current(self) -> AnyKey:
        """The key to encrypt to: the one marked ``"current": true``, else the last in the file."""
        return self._keys[self._current_kid]

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid in the set, in file order."""
        return tuple(self._keys)

    @property
    def is_private(self) -> bool:
        """Whether every key in the set is private, so any token addressed to it can be opened."""
        return all(isinstance(key, PrivateKey) for key in self._keys.values())

    def get(self, kid: str) -> AnyKey | None:
        """Return the key with this kid, or None."""
        return self._keys.get(kid)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[AnyKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet(kids={self.kids!r}, current={self._current_kid!r})"


def generate_key_pair(kid: str, out_dir: Path, *, name: str | None = None) -> KeyPairFiles:
    """Write a new P-256 key pair as ``<name>.private.jwk`` (0600) and ``<name>.public.jwk``
    (0644); `name` defaults to the kid. A name that stays the same across kids (``bridge``) is
    the file a configuration names, so a new kid needs no configuration change.

    Never overwrites: a key that signed or received referrals must survive until it is retired,
    so rotation means a new kid. ``out_dir`` is created (0700) when missing.
    """
    _check_kid(kid)
    stem = kid if name is None else name
    _check_kid(stem, what="file name")
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = out_dir / f"{stem}{PRIVATE_SUFFIX}"
    public_path = out_dir / f"{stem}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise _exists_error(path)

    key = ECKey.generate_key(CURVE, parameters={"kid": kid}, private=True)
    private_jwk = {"kid": kid, **key.as_dict(private=True)}
    public_jwk = {"kid": kid, **key.as_dict(private=False)}

    _write_new_file(private_path, _to_json(private_jwk), mode=0o600)
    try:
        _write_new_file(public_path, _to_json(public_jwk), mode=0o644)
    except BaseException:
        # Half a key pair is worse than none: the operator would have a private key nobody has.
        private_path.unlink(missing_ok=True)
        raise
    return KeyPairFiles(kid=kid, private_path=private_path, public_path=public_path)


def load_private_key(path: Path) -> PrivateKey:
    """Load one private P-256 JWK, refusing a file that group or others can read or write."""
    path = Path(path)
    raw, _ = _read_key_file(path, must_be_private=True)
    document = _parse_json(raw, path)
    if not isinstance(document, dict) or "keys" in document:
        raise InvalidKeyFileError(
            f"{path} is not a single JWK; a private key file holds one JSON object with "
            f'"kty": "EC", "crv": "P-256", a "kid" and "d"',
            path=path,
        )
    document.pop(CURRENT_MEMBER, None)
    key = _import_jwk(document, where=str(path), path=path)
    if not isinstance(key, PrivateKey):
        raise InvalidKeyFileError(
            f"{path} holds a public key, not a private one; point the setting at the "
            f"{PRIVATE_SUFFIX} file",
            path=path,
        )
    return key


def load_key_set(path: Path) -> KeySet:
    """Load a single JWK or a JWKS ``{"keys": [...]}``; a file with private keys must be 0600.

    One key may carry ``"current": true`` to mark the key to encrypt to; otherwise the last key
    in the file is current, so appending a key to a provider's file rotates to it.
    """
    path = Path(path)
    raw, st_mode = _read_key_file(path, must_be_private=False)
    document = _parse_json(raw, path)
    entries: list[Any]
    if isinstance(document, dict) and "keys" in document:
        if not isinstance(document["keys"], list) or not document["keys"]:
            raise InvalidKeyFileError(
                f'{path} has a "keys" member that is not a non-empty list of JWKs', path=path
            )
        entries = document["keys"]
    else:
        entries = [document]

    keys: list[AnyKey] = []
    current_kids: list[str] = []
    for index, entry in enumerate(entries, start=1):
        where = str(path) if len(entries) == 1 else f"{path} (key #{index})"
        if not isinstance(entry, dict):
            raise InvalidKeyFileError(f"{where} is not a JSON object (a JWK)", path=path)
        entry = dict(entry)
        current = entry.pop(CURRENT_MEMBER, False)
        if not isinstance(current, bool):
            raise InvalidKeyFileError(
                f'{where} has "{CURRENT_MEMBER}": it must be true or false', path=path
            )
        key = _import_jwk(entry, where=where, path=path)
        if key.kid in {k.kid for k in keys}:
            raise InvalidKeyFileError(
                f"{where} repeats kid {key.kid!r}; every key in a set needs its own kid", path=path
            )
        keys.append(key)
        if current:
            current_kids.append(key.kid)

    if len(current_kids) > 1:
        raise InvalidKeyFileError(
            f'{path} marks {len(current_kids)} keys "{CURRENT_MEMBER}": true; mark at most one',
            path=path,
        )
    if any(isinstance(key, PrivateKey) for key in keys):
        _check_private_file_mode(path, st_mode)
    return KeySet(keys, current_kid=current_kids[0] if current_kids else None)


def _check_kid(kid: str, *, what: str = "key id") -> None:
    if not _KID_PATTERN.fullmatch(kid):
        raise InvalidKeyIdError(
            f"{what} {kid[:40]!r} is not usable: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes part of the key file names)"
        )


def _exists_error(path: Path) -> KeyFileExistsError:
    return KeyFileExistsError(
        f"{path} already exists; refusing to overwrite a key. Choose a new kid (rotation adds a "
        "key, it never replaces one) or move the old file away first",
        path=path,
    )


def _to_json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _write_new_file(path: Path, content: bytes, *, mode: int) -> None:
    # O_EXCL|O_CREAT with the final mode means the file never exists with looser permissions,
    # and refuses an existing file or symlink outright.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise _exists_error(path) from None
    try:
        # The umask may have narrowed the mode (a public key must stay world-readable).
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: Path, *, must_be_private: bool) -> tuple[bytes, int]:
    """Read a key file, returning its bytes and the mode of the very file that was read."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MissingKeyFileError(
            f"key file {path} does not exist; create it with 'referral-bridge keys generate' "
            "or correct the path in the configuration",
            path=path,
        ) from None
    except PermissionError:
        raise KeyFileError(
            f"key file {path} cannot be read by this user; make the user the bridge runs as "
            f"its owner (chown) and run: chmod 600 {path}",
            path=path,
        ) from None
    try:
        # fstat on the open descriptor checks the very file that is read, not a swapped-in one.
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise InvalidKeyFileError(f"{path} is not a regular file", path=path)
        if must_be_private:
            _check_private_file_mode(path, status.st_mode)
        with os.fdopen(os.dup(fd), "rb") as stream:
            raw = stream.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise InvalidKeyFileError(
            f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes, so it is not a key file; "
            "check the path",
            path=path,
        )
    return raw, status.st_mode


def _check_private_file_mode(path: Path, st_mode: int) -> None:
    """Refuse a private key that others could read or anyone but its owner could change.

    One exception: a file inside systemd's `$CREDENTIALS_DIRECTORY` may show group *read*. systemd
    grants the unit's user read access there with a POSIX ACL, and `stat` reports the ACL mask in
    the group bits (mode 0440); the directory itself is private to the unit. The real path must lie
    under the real directory, so a symlink out of it does not qualify. Other bits and group write
    are refused everywhere.
    """
    allowed = 0o040 if _inside_credentials_directory(path) else 0
    if st_mode & 0o077 & ~allowed:
        raise UnsafeKeyFileError(
            f"private key file {path} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st_mode):04o}); run: chmod 600 {path}",
            path=path,
        )


def _inside_credentials_directory(path: Path) -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY", "").strip()
    if not directory:
        return False
    real_directory = Path(os.path.realpath(directory))
    real_path = Path(os.path.realpath(path))
    return real_path != real_directory and real_path.is_relative_to(real_directory)


def _parse_json(raw: bytes, path: Path) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        # The decoder's message can quote the file's text, which may be key material.
        raise InvalidKeyFileError(
            f"{path} is not UTF-8 JSON; a key file holds one JWK or a JWKS", path=path
        ) from None


def _import_jwk(document: dict[str, Any], *, where: str, path: Path) -> AnyKey:
    if document.get("kty") != "EC" or document.get("crv") != CURVE:
        raise InvalidKeyFileError(
            f'{where} is not an EC P-256 JWK ("kty": "EC", "crv": "P-256" are required by the '
            "referral contract); generate one with 'referral-bridge keys generate'",
            path=path,
        )
    kid = document.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidKeyFileError(
            f'{where} has no "kid"; add a unique "kid" string so tokens can name this key',
            path=path,
        )
    try:
        key = import_key(document, "EC")
    except (JoseError, ValueError, TypeError, KeyError):
        # The library's message may quote the JWK's members; say what to do instead.
        raise InvalidKeyFileError(
            f"{where} is not a valid P-256 JWK (a member is malformed or the point is not on "
            "the curve); regenerate it or ask its owner for a fresh copy",
            path=path,
        ) from None
    if key.is_private:
        return PrivateKey(kid=kid, jwk=key)
    return PublicKey(kid=kid, jwk=key)
