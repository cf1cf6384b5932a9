"""Staff accounts of the provider's web inbox: a JSON file of users with argon2id hashes.

`referral-bridge provider users add|disable|list` keeps the file; the web inbox reads it again
whenever it changes, so a disabled user is refused at their next request without a restart.
The file is owner-only (it holds password hashes) and replaced atomically on every change.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from referral_bridge.core.intake import Role
from referral_bridge.files import PRIVATE_FILE_MODE, private_umask

#: argon2-cffi's defaults (RFC 9106's low-memory profile: argon2id, 64 MiB, 3 passes).
_HASHER = PasswordHasher()
#: Verified against when the name is unknown, so an unknown name costs the same time.
_DUMMY_HASH = _HASHER.hash("not a password anyone has")
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TEAM = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MIN_PASSWORD_LENGTH = 12


class AccountsError(ValueError):
    """The accounts file or a change to it is not valid; the message says what to fix (never a
    password or a hash)."""


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    role: Role
    #: The services (teams) whose referrals an intake worker sees.
    teams: tuple[str, ...] = ()
    disabled: bool = False
    password_hash: str = field(default="", repr=False)

    def document(self) -> dict[str, Any]:
        document = asdict(self)
        document["role"] = self.role.value
        document["teams"] = list(self.teams)
        return document


def _account(document: Any) -> Account:
    if not isinstance(document, dict):
        raise AccountsError("each user in the accounts file must be an object")
    try:
        return Account(
            username=str(document["username"]),
            role=Role(document["role"]),
            teams=tuple(str(t) for t in document.get("teams", [])),
            disabled=bool(document.get("disabled", False)),
            password_hash=str(document["password_hash"]),
        )
    except (KeyError, ValueError) as exc:
        raise AccountsError(
            "a user in the accounts file lacks a field or has an unknown role "
            f"({type(exc).__name__})"
        ) from None


def read_accounts(path: Path) -> dict[str, Account]:
    """The accounts in `path` by username; a missing file is no accounts."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        raise AccountsError(f"{path} is not JSON; restore it from a backup") from None
    users = document.get("users") if isinstance(document, dict) else None
    if not isinstance(users, list):
        raise AccountsError(f'{path} must be an object with a "users" list')
    accounts = [_account(user) for user in users]
    return {account.username: account for account in accounts}


def write_accounts(path: Path, accounts: Sequence[Account]) -> None:
    """Replace the file atomically, owner-only."""
    document = {"users": [a.document() for a in sorted(accounts, key=lambda a: a.username)]}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with private_umask():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    temporary.chmod(PRIVATE_FILE_MODE)
    temporary.replace(path)


def add_user(
    path: Path, username: str, password: str, *, role: Role, teams: Sequence[str]
) -> Account:
    """Add a user, or replace one of the same name (a new password, role or teams; enabled)."""
    if not _USERNAME.match(username):
        raise AccountsError(
            "a username is 1 to 64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    bad = [team for team in teams if not _TEAM.match(team)]
    if bad:
        raise AccountsError("a team is a service id: lower-case letters, digits, '_' or '-'")
    if role is Role.INTAKE and not teams:
        raise AccountsError("an intake worker needs at least one --team (a service id)")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountsError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    account = Account(
        username=username,
        role=role,
        teams=tuple(dict.fromkeys(teams)),
        password_hash=_HASHER.hash(password),
    )
    accounts = read_accounts(path)
    accounts[username] = account
    write_accounts(path, list(accounts.values()))
    return account


def set_disabled(path: Path, username: str, *, disabled: bool = True) -> Account:
    accounts = read_accounts(path)
    if username not in accounts:
        raise AccountsError(f"no user {username!r} in {path}; see `provider users list`")
    accounts[username] = replace(accounts[username], disabled=disabled)
    write_accounts(path, list(accounts.values()))
    return accounts[username]


class Accounts:
    """The accounts file as the web inbox reads it: reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._accounts: dict[str, Account] = {}

    def _current(self) -> dict[str, Account]:
        try:
            info = self.path.stat()
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp != self._stamp:
                self._accounts = read_accounts(self.path)
                self._stamp = stamp
            return self._accounts

    def exists(self, username: str) -> bool:
        """Whether an account (active or not) has this name: a log names only those, since a
        password typed into the username box must not reach the log."""
        return username in self._current()

    def active(self, username: str) -> Account | None:
        """The account, if it exists and is not disabled."""
        account = self._current().get(username)
        return account if account is not None and not account.disabled else None

    def verify(self, username: str, password: str) -> Account | None:
        """The active account whose password this is, or None (in about the same time)."""
        account = self.active(username)
        try:
            _HASHER.verify(account.password_hash if account else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return account
