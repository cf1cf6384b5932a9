"""The command line in-process: exit codes, check-config, keys, open, rules explain, schemas."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from referral_bridge.cli import main as cli
from referral_bridge.resources import SAMPLES
from referral_bridge.sealing import load_key_set, load_private_key, seal
from referral_bridge.settings import CONFIG_ENV
from tests.fakes import POLICY_FILE, REPO, KeyMaterial, make_keys

NOW = "2026-11-23T11:00:00+00:00"


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """main() configures logging for the process; put back what other tests expect."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


@pytest.fixture
def keys(tmp_path: Path) -> KeyMaterial:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def config(tmp_path: Path, keys: KeyMaterial) -> Path:
    """A complete configuration as an operator would set it up, with freshly generated keys."""
    shutil.copy(POLICY_FILE, tmp_path / "policy.toml")
    providers = "\n".join(
        f'[providers.{provider}]\npublic_keys = "{path}"\n'
        for provider, path in keys.provider_public.items()
    )
    path = tmp_path / "referral-bridge.toml"
    path.write_text(
        f'[bridge]\npolicy_file = "policy.toml"\ndata_dir = "data"\n\n'
        f'[keys]\nsigning_key = "{keys.bridge_private}"\n\n{providers}',
        encoding="utf-8",
    )
    return path


def run(*argv: str) -> int:
    return cli.main(["--log-level", "WARNING", "--no-log-json", *argv])


class TestExitCodes:
    def test_exit_codes_are_pinned(self) -> None:
        assert (
            cli.RET_OK,
            cli.RET_FAILURE,
            cli.RET_USAGE,
            cli.RET_CONFIG,
            cli.RET_CONNECT,
            cli.RET_VERIFY,
            cli.RET_DRIFT,
        ) == (0, 1, 2, 3, 4, 5, 6)

    def test_a_usage_error_exits_with_the_usage_code(self) -> None:
        with pytest.raises(SystemExit) as caught:
            cli.main(["no-such-command"])

        assert caught.value.code == cli.RET_USAGE


def test_the_description_names_every_command() -> None:
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    described = set((parser.description or "").replace(",", " ").replace(".", " ").split())

    assert set(commands.choices) - described == set()


class TestCheckConfig:
    def test_a_complete_setup_passes(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run("check-config", "--config", str(config)) == cli.RET_OK
        assert f"configuration ok: {config}" in capsys.readouterr().out

    def test_a_world_readable_private_key_is_a_config_error_naming_the_file(
        self, config: Path, keys: KeyMaterial, capsys: pytest.CaptureFixture[str]
    ) -> None:
        keys.bridge_private.chmod(0o644)

        assert run("check-config", "--config", str(config)) == cli.RET_CONFIG
        assert str(keys.bridge_private) in capsys.readouterr().err

    def test_a_missing_provider_key_file_is_a_config_error_naming_the_file(
        self, config: Path, keys: KeyMaterial, capsys: pytest.CaptureFixture[str]
    ) -> None:
        missing = keys.provider_public["homicide-service"]
        missing.unlink()

        assert run("check-config", "--config", str(config)) == cli.RET_CONFIG
        assert str(missing) in capsys.readouterr().err

    def test_a_missing_configuration_file_is_a_config_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        absent = tmp_path / "absent.toml"

        assert run("check-config", "--config", str(absent)) == cli.RET_CONFIG
        assert str(absent) in capsys.readouterr().err

    def test_a_policy_naming_an_unconfigured_provider_is_a_config_error(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        text = config.read_text(encoding="utf-8")
        config.write_text(text.split("[providers.homicide-service]")[0], encoding="utf-8")

        assert run("check-config", "--config", str(config)) == cli.RET_CONFIG
        assert "homicide-service" in capsys.readouterr().err


class TestKeysGenerate:
    def test_a_generated_private_key_is_0600_and_its_public_key_0644(self, tmp_path: Path) -> None:
        out = tmp_path / "new-keys"

        assert run("keys", "generate", "--kid", "bridge-2026-11", "--out", str(out)) == cli.RET_OK

        private = out / "bridge-2026-11.private.jwk"
        public = out / "bridge-2026-11.public.jwk"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        assert load_private_key(private).kid == "bridge-2026-11"

    def test_generating_over_an_existing_key_is_refused_and_keeps_it(self, tmp_path: Path) -> None:
        run("keys", "generate", "--kid", "k1", "--out", str(tmp_path))
        before = (tmp_path / "k1.private.jwk").read_bytes()

        assert run("keys", "generate", "--kid", "k1", "--out", str(tmp_path)) == cli.RET_CONFIG
        assert (tmp_path / "k1.private.jwk").read_bytes() == before


def open_with(keys: KeyMaterial, path: Path, provider: str) -> int:
    return run(
        "open",
        str(path),
        "--key",
        str(keys.provider_private[provider]),
        "--verify-with",
        str(keys.bridge_public),
    )


class TestOpen:
    @pytest.fixture
    def sealed(self, tmp_path: Path, keys: KeyMaterial) -> Path:
        provider = "lancashire-victim-services"
        token = seal(
            {"referral_id": "r-1"},
            signing_key=load_private_key(keys.bridge_private),
            recipient=load_key_set(keys.provider_public[provider]),
        )
        path = tmp_path / "referral.json"
        path.write_text(
            json.dumps({"id": "r-1", "datacontenttype": "application/jose", "data": token}),
            encoding="utf-8",
        )
        return path

    def test_a_provider_opens_a_sealed_referral_with_its_key(
        self, sealed: Path, keys: KeyMaterial, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = open_with(keys, sealed, "lancashire-victim-services")

        assert code == cli.RET_OK
        assert json.loads(capsys.readouterr().out)["payload"] == {"referral_id": "r-1"}

    def test_opening_with_another_providers_key_is_a_verify_failure(
        self, sealed: Path, keys: KeyMaterial
    ) -> None:
        code = open_with(keys, sealed, "homicide-service")

        assert code == cli.RET_VERIFY

    @pytest.mark.parametrize(
        ("change", "said"),
        [
            # issue 10: each ended in exit 1 "unexpected" (ValueError, binascii.Error,
            # RecursionError), and a large referral was refused as tampered.
            (lambda token: _off_curve(token), "epk"),
            (lambda token: token.replace(".", ". ", 1), "base64url"),
            (lambda _token: '{"a":' * 50_000 + "1" + "}" * 50_000, "not valid JSON"),
            (lambda _token: "A." * 3 + "A" * 2_000_000 + ".A", "too large"),
        ],
        ids=["off-curve-epk", "whitespace-in-a-segment", "deep-json", "too-large"],
    )
    def test_a_hostile_token_is_a_verify_failure_saying_what_is_wrong(
        self,
        tmp_path: Path,
        keys: KeyMaterial,
        capsys: pytest.CaptureFixture[str],
        change: Callable[[str], str],
        said: str,
    ) -> None:
        token = seal(
            {"referral_id": "r-1"},
            signing_key=load_private_key(keys.bridge_private),
            recipient=load_key_set(keys.provider_public["lancashire-victim-services"]),
        )
        path = tmp_path / "hostile.txt"
        path.write_text(change(token), encoding="utf-8")

        code = open_with(keys, path, "lancashire-victim-services")

        assert code == cli.RET_VERIFY
        assert said in capsys.readouterr().err


def _off_curve(token: str) -> str:
    segments = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    header["epk"]["y"] = header["epk"]["x"]
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return ".".join([encoded, *segments[1:]])


def sample_personal_values(path: Path) -> list[str]:
    """Every personal value of the sample's victims: names, birth dates, contact details."""
    data = json.loads(path.read_bytes())["data"]
    values: list[str] = []
    for victim in data.get("victims", []):
        name = victim["name"]
        values += [v for v in (name.get("given"), name.get("family")) if v]
        contact = victim["contact"]
        values += [v for v in (contact.get("phone"), contact.get("email")) if v]
        if contact.get("address"):
            values += [*contact["address"]["lines"], contact["address"]["postcode"]]
        if contact.get("safe_contact_notes"):
            values.append(contact["safe_contact_notes"])
        if victim.get("date_of_birth"):
            values.append(victim["date_of_birth"])
    return values


BURGLARY = SAMPLES / "crime-recorded-burglary.json"


class TestRulesExplain:
    def explain_after(self, event: Path, earlier: Path) -> int:
        return run(
            "rules", "explain", str(event), "--after", str(earlier),
            "--policy", str(POLICY_FILE), "--now", NOW,
        )  # fmt: skip

    def explain(self, sample: str) -> int:
        return run(
            "rules", "explain", str(SAMPLES / sample), "--policy", str(POLICY_FILE), "--now", NOW
        )

    @pytest.mark.parametrize(
        ("sample", "expected"),
        [
            ("crime-recorded-burglary.json", "victim P-00918273: REFER (not_objected)"),
            ("incident-recorded-asb.json", "victim P-00455120: REFER (consent_given)"),
        ],
    )
    def test_each_victims_decision_is_printed_with_its_rule(
        self, sample: str, expected: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = self.explain(sample)

        out = capsys.readouterr().out
        assert code == cli.RET_OK
        assert expected in out
        assert "    rule " in out

    @pytest.mark.parametrize("now", ["yesterday", "2026-11-24T10:00:00", "2026-11-24"])
    def test_a_now_that_is_not_a_time_with_an_offset_is_a_usage_error(
        self, now: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as caught:
            run("rules", "explain", str(BURGLARY), "--policy", str(POLICY_FILE), "--now", now)

        err = capsys.readouterr().err
        assert caught.value.code == cli.RET_USAGE
        assert "--now" in err
        assert "with an offset" in err
        assert "unexpected" not in err

    def test_the_burglary_sample_is_decided_by_the_other_crime_rule(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.explain("crime-recorded-burglary.json")

        assert "rule 8 [opt_out]" in capsys.readouterr().out

    def test_after_an_earlier_referral_a_declined_consent_shows_the_withdrawal(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        crime = json.loads((SAMPLES / "crime-recorded-burglary.json").read_text("utf-8"))
        victim_id = crime["data"]["victims"][0]["victim_id"]
        declined = {
            "specversion": "1.0",
            "id": "explain-consent-1",
            "source": "test",
            "type": "consent.updated",
            "schemaversion": 1,
            "data": {
                "case_ref": crime["data"]["crime_ref"],
                "victim_id": victim_id,
                "referral": "declined",
                "recorded_at": "2026-11-23T10:30:00Z",
                "recorded_by": "PC 0000",
            },
        }
        consent = tmp_path / "declined.json"
        consent.write_text(json.dumps(declined), encoding="utf-8")

        code = self.explain_after(consent, BURGLARY)

        out = capsys.readouterr().out
        assert code == cli.RET_OK
        assert "after 1 earlier event(s)" in out
        assert f"victim {victim_id}: WITHDRAW (declined) -> lancashire-victim-services" in out
        assert f"victim {victim_id}: LEAFLET (declined)" in out

    def test_an_incident_with_a_crime_disclosed_shows_the_crime_rules_and_the_review(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        incident = json.loads((SAMPLES / "incident-recorded-asb.json").read_text("utf-8"))
        incident["data"].update(crime_disclosed=True, category="domestic_incident")
        disclosed = tmp_path / "disclosed.json"
        disclosed.write_text(json.dumps(incident), encoding="utf-8")

        code = run("rules", "explain", str(disclosed), "--policy", str(POLICY_FILE), "--now", NOW)

        out = capsys.readouterr().out
        assert code == cli.RET_OK
        assert "rule 6 [explicit]" in out  # domestic abuse, from the incident category
        assert "officer.task.crime_review" in out

    def test_after_an_earlier_referral_a_new_version_shows_the_update(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        crime = json.loads((SAMPLES / "crime-recorded-burglary.json").read_text("utf-8"))
        crime["id"] = "explain-v2"
        crime["data"]["version"] += 1
        crime["data"]["victims"][0]["contact"]["preferred"] = "post"
        newer = tmp_path / "v2.json"
        newer.write_text(json.dumps(crime), encoding="utf-8")

        code = self.explain_after(newer, BURGLARY)

        out = capsys.readouterr().out
        assert code == cli.RET_OK
        assert "UPDATE (referral_changed)" in out
        assert "to revision 2" in out

    @pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.json")))
    def test_an_explanation_holds_no_personal_data_from_the_sample(
        self, sample: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = self.explain(sample)

        captured = capsys.readouterr()
        shown = captured.out + captured.err
        assert code == cli.RET_OK
        assert shown.strip()
        assert [v for v in sample_personal_values(SAMPLES / sample) if v in shown] == []

    def test_an_invalid_event_is_reported_without_echoing_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text('{"specversion": "1.0", "name": "Test Person"', encoding="utf-8")

        code = run("rules", "explain", str(bad), "--policy", str(POLICY_FILE))

        out = capsys.readouterr().out
        assert code != cli.RET_OK
        assert "invalid_json" in out
        assert "Test Person" not in out


class TestSchemas:
    def test_the_committed_schemas_match_the_models(self) -> None:
        assert run("schemas", "check", str(REPO / "schemas")) == cli.RET_OK

    def test_missing_schema_files_are_drift(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run("schemas", "check", str(tmp_path)) == cli.RET_DRIFT
        assert "out of date" in capsys.readouterr().err
