"""The web inbox's accounts file and `referral-bridge provider users` (issue 13)."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from referral_bridge.cli.main import main
from referral_bridge.core.intake import Role
from referral_bridge.intake.accounts import Accounts, AccountsError, add_user, read_accounts

PASSWORD = "twelve chars+"


def test_added_users_verify_with_their_password_only_and_the_file_is_owner_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "users.json"
    add_user(path, "ada", PASSWORD, role=Role.INTAKE, teams=["general", "general", "bereaved"])
    accounts = Accounts(path)

    assert accounts.verify("ada", PASSWORD) is not None
    assert accounts.verify("ada", PASSWORD + "x") is None
    assert accounts.verify("nobody", PASSWORD) is None
    assert read_accounts(path)["ada"].teams == ("general", "bereaved")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text
    assert "$argon2id$" in text


@pytest.mark.parametrize(
    ("username", "password", "teams", "says"),
    [
        ("Ada Lovelace", PASSWORD, ["general"], "username"),
        ("ada", "short", ["general"], "12 characters"),
        ("ada", PASSWORD, [], "--team"),
        ("ada", PASSWORD, ["Domestic Abuse"], "service id"),
    ],
)
def test_what_cannot_be_an_account_is_refused_saying_what_to_fix(
    tmp_path: Path, username: str, password: str, teams: list[str], says: str
) -> None:
    with pytest.raises(AccountsError, match=says):
        add_user(tmp_path / "u.json", username, password, role=Role.INTAKE, teams=teams)


def test_the_cli_adds_disables_enables_and_lists_without_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "users.json")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert (
        main(
            [
                "provider",
                "users",
                "add",
                "ada",
                "--team",
                "general",
                "--users",
                path,
                "--password-stdin",
            ]
        )
        == 0
    )
    accounts = Accounts(Path(path))
    assert accounts.verify("ada", PASSWORD) is not None

    assert main(["provider", "users", "disable", "ada", "--users", path]) == 0
    assert accounts.active("ada") is None
    assert accounts.verify("ada", PASSWORD) is None
    assert main(["provider", "users", "enable", "ada", "--users", path]) == 0
    assert accounts.active("ada") is not None
    capsys.readouterr()
    assert main(["provider", "users", "list", "--users", path]) == 0
    listed = capsys.readouterr().out
    assert "ada" in listed
    assert "argon2" not in listed
    assert main(["provider", "users", "disable", "nobody", "--users", path]) == 2
    assert json.loads(Path(path).read_text())["users"][0]["disabled"] is False


def test_the_web_inbox_without_a_broker_to_send_outcomes_to_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing")
    arguments = ["--cert", missing, "--key", missing, "--provider", "p", "--keys", missing]
    arguments += ["--verify-with", missing, "--store", missing, "--users", missing]

    assert main(["provider", "inbox", *arguments]) == 2
    assert "--broker-url" in capsys.readouterr().err
