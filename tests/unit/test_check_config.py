"""check-config's checks in-process: each problem found, named, and given the right exit code.

Nothing here needs a running service: the broker is the embedded one or a closed local port, and
the ledger is SQLite in a tmp dir.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from referral_bridge.bootstrap import broker_of, provider_routes
from referral_bridge.cli.check_config import (
    Finding,
    Status,
    exit_code,
    render,
    run_checks,
)
from referral_bridge.cli.exit_codes import RET_CONFIG, RET_CONNECT, RET_OK
from referral_bridge.errors import ConfigError
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.sealing import generate_key_pair
from referral_bridge.sealing.rotation import rotate_key_set
from referral_bridge.settings import load_settings
from referral_bridge.transport import Topology
from referral_bridge.transport.publisher import Publisher
from tests.fakes import POLICY_FILE, KeyMaterial, make_keys
from tests.integration.test_delivery_helpers import Pki, make_pki


def write_config(root: Path, keys: KeyMaterial, *, broker_url: str = "", extra: str = "") -> Path:
    shutil.copy(POLICY_FILE, root / "policy.toml")
    providers = "".join(
        f'[providers.{provider}]\npublic_keys = "{path}"\n'
        for provider, path in keys.provider_public.items()
    )
    config = root / "referral-bridge.toml"
    config.write_text(
        '[bridge]\ndata_dir = "data"\npolicy_file = "policy.toml"\n\n'
        f"[broker]\nurl = {json.dumps(broker_url)}\n\n{extra}\n"
        f'[keys]\nsigning_key = "{keys.bridge_private}"\n\n{providers}',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def keys(tmp_path: Path) -> KeyMaterial:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def config(tmp_path: Path, keys: KeyMaterial) -> Path:
    return write_config(tmp_path, keys)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def failures(findings: list[Finding], check: str) -> list[str]:
    return [f.detail for f in findings if f.check == check and f.status is Status.FAIL]


def statuses(findings: list[Finding], check: str) -> list[Status]:
    return [f.status for f in findings if f.check == check]


class TestAGoodSetup:
    def test_a_complete_setup_on_the_embedded_broker_passes(self, config: Path) -> None:
        findings = run_checks(config, env={})

        assert exit_code(findings) == RET_OK
        assert [f.check for f in findings if f.status is Status.FAIL] == []

    def test_the_embedded_broker_is_a_warning_not_a_failure(self, config: Path) -> None:
        assert statuses(run_checks(config, env={}), "broker") == [Status.WARN]

    def test_a_ledger_not_created_yet_is_a_warning(self, config: Path) -> None:
        assert statuses(run_checks(config, env={}), "ledger") == [Status.WARN]

    def test_offline_skips_the_broker_and_the_ledger(self, config: Path) -> None:
        findings = run_checks(config, offline=True, env={})

        assert [f.detail for f in findings if f.check in {"broker", "ledger"}] == [
            "not checked (--offline)",
            "not checked (--offline)",
        ]


class TestConfiguration:
    def test_a_missing_file_fails_and_stops_there(self, tmp_path: Path) -> None:
        findings = run_checks(tmp_path / "absent.toml", env={})

        assert [f.check for f in findings] == ["config"]
        assert exit_code(findings) == RET_CONFIG

    def test_every_invalid_setting_is_listed(self, tmp_path: Path, keys: KeyMaterial) -> None:
        config = write_config(tmp_path, keys, extra="[delivery]\nattempts_in_place = 0\n")
        config.write_text(
            config.read_text().replace("[bridge]\n", "[bridge]\nprefetch_typo = 1\n"),
            encoding="utf-8",
        )

        problems = failures(run_checks(config, env={}), "config")

        assert len(problems) == 2

    def test_a_malformed_metrics_address_fails(self, tmp_path: Path, keys: KeyMaterial) -> None:
        config = write_config(tmp_path, keys, extra='[metrics]\nlisten = "9464"\n')

        findings = run_checks(config, env={})

        assert failures(findings, "metrics")
        assert exit_code(findings) == RET_CONFIG


class TestKeys:
    def test_a_group_readable_signing_key_fails_naming_the_file(
        self, config: Path, keys: KeyMaterial
    ) -> None:
        keys.bridge_private.chmod(0o640)

        problems = failures(run_checks(config, env={}), "keys")

        assert [str(keys.bridge_private) in p and "chmod 600" in p for p in problems] == [True]

    def test_a_public_file_next_to_the_signing_key_that_is_another_key_fails(
        self, config: Path, keys: KeyMaterial, tmp_path: Path
    ) -> None:
        other = generate_key_pair("bridge-test", tmp_path / "other")
        shutil.copy(other.public_path, keys.bridge_public)

        problems = failures(run_checks(config, env={}), "keys")

        assert len(problems) == 1
        assert "not a pair" in problems[0]

    def test_a_public_file_next_to_the_signing_key_with_another_kid_fails(
        self, config: Path, keys: KeyMaterial, tmp_path: Path
    ) -> None:
        other = generate_key_pair("someone-else", tmp_path / "other")
        shutil.copy(other.public_path, keys.bridge_public)

        problems = failures(run_checks(config, env={}), "keys")

        assert len(problems) == 1
        assert "'bridge-test'" in problems[0]

    def test_a_rotated_signing_set_with_its_public_set_next_to_it_passes(
        self, config: Path, keys: KeyMaterial
    ) -> None:
        rotate_key_set(keys.bridge_private, "bridge-test-2", public_out=keys.bridge_public)

        findings = run_checks(config, env={})

        assert exit_code(findings) == RET_OK
        signing = next(f.detail for f in findings if f.detail.startswith("signing key"))
        assert "kid bridge-test-2 (also holds bridge-test)" in signing
        assert "matches bridge-test.public.jwk" in signing

    def test_a_public_file_missing_the_rotated_signing_kid_fails(
        self, config: Path, keys: KeyMaterial
    ) -> None:
        rotate_key_set(keys.bridge_private, "bridge-test-2")

        problems = failures(run_checks(config, env={}), "keys")

        assert len(problems) == 1
        assert "'bridge-test-2'" in problems[0]

    def test_a_matching_public_file_is_reported_as_a_pair(self, config: Path) -> None:
        details = [f.detail for f in run_checks(config, env={}) if f.check == "keys"]

        assert any("matches bridge-test.public.jwk" in detail for detail in details)

    def test_a_provider_kid_equal_to_the_signing_kid_on_another_key_fails(
        self, tmp_path: Path, keys: KeyMaterial
    ) -> None:
        clash = generate_key_pair("bridge-test", tmp_path / "clash")
        provider = "homicide-service"
        config = write_config(tmp_path, keys)
        config.write_text(
            config.read_text().replace(str(keys.provider_public[provider]), str(clash.public_path)),
            encoding="utf-8",
        )

        problems = failures(run_checks(config, env={}), "keys")

        assert len(problems) == 1
        assert "kid 'bridge-test'" in problems[0]
        assert provider in problems[0]

    def test_a_provider_file_holding_private_keys_is_a_warning(
        self, tmp_path: Path, keys: KeyMaterial
    ) -> None:
        provider = "homicide-service"
        config = write_config(tmp_path, keys)
        config.write_text(
            config.read_text().replace(
                str(keys.provider_public[provider]), str(keys.provider_private[provider])
            ),
            encoding="utf-8",
        )

        findings = run_checks(config, env={})

        assert any(f.status is Status.WARN and "holds private keys" in f.detail for f in findings)
        assert exit_code(findings) == RET_OK

    def test_a_missing_provider_key_file_fails_naming_the_provider(
        self, config: Path, keys: KeyMaterial
    ) -> None:
        keys.provider_public["homicide-service"].unlink()

        problems = failures(run_checks(config, env={}), "keys")

        assert [p.startswith("providers.homicide-service.public_keys") for p in problems] == [True]


class TestProviderTls:
    """`--offline` loads providers' TLS files as `run` does, so it cannot pass where `run` fails."""

    @pytest.fixture
    def pki(self, tmp_path: Path) -> Pki:
        return make_pki(tmp_path / "pki")

    @staticmethod
    def with_last_provider(config: Path, keys: KeyMaterial, lines: str) -> str:
        """Add `lines` to the last provider's table (the file ends with it); return its id."""
        config.write_text(config.read_text(encoding="utf-8") + lines, encoding="utf-8")
        return list(keys.provider_public)[-1]

    @staticmethod
    def https(ca_bundle: Path, cert: Path | None = None, key: Path | None = None) -> str:
        lines = 'delivery = "https"\nurl = "https://provider.example/referrals"\n'
        lines += f'ca_bundle = "{ca_bundle}"\n'
        if cert is not None:
            lines += f'client_cert = "{cert}"\nclient_key = "{key}"\n'
        return lines

    def bad_files(self, pki: Pki, tmp_path: Path) -> dict[str, str]:
        not_pem = tmp_path / "not-pem.pem"
        not_pem.write_text("this is not a certificate\n", encoding="utf-8")
        broker = 'broker_url = "amqps://bridge@provider.example/referrals"\n'
        return {
            "ca_bundle not PEM": self.https(not_pem),
            "ca_bundle missing": self.https(tmp_path / "absent.pem"),
            "client_cert missing": self.https(pki.ca_cert, tmp_path / "absent.pem", pki.client_key),
            "client_cert not its key's": self.https(pki.ca_cert, pki.client_cert, pki.server_key),
            "broker_ca_bundle not PEM": f'{broker}broker_ca_bundle = "{not_pem}"\n',
        }

    def test_usable_files_pass(self, config: Path, keys: KeyMaterial, pki: Pki) -> None:
        provider = self.with_last_provider(
            config, keys, self.https(pki.ca_cert, pki.client_cert, pki.client_key)
        )

        findings = run_checks(config, offline=True, env={})

        assert exit_code(findings) == RET_OK
        assert [f.detail for f in findings if f.check == "tls"] == [
            f"provider {provider}: trusts {pki.ca_cert}, client certificate {pki.client_cert}"
        ]

    @pytest.mark.parametrize(
        "case",
        [
            "ca_bundle not PEM",
            "ca_bundle missing",
            "client_cert missing",
            "client_cert not its key's",
            "broker_ca_bundle not PEM",
        ],
    )
    def test_a_file_run_cannot_load_fails_offline_too(
        self, case: str, config: Path, keys: KeyMaterial, pki: Pki, tmp_path: Path
    ) -> None:
        provider = self.with_last_provider(config, keys, self.bad_files(pki, tmp_path)[case])

        findings = run_checks(config, offline=True, env={})
        settings = load_settings(config, env={})
        publisher = Publisher(broker_of(settings), Topology())  # connects on first use only
        with pytest.raises(ConfigError) as at_start:
            provider_routes(settings, publisher, Topology())

        [problem] = failures(findings, "tls")
        assert exit_code(findings) == RET_CONFIG
        assert problem.startswith(f"providers.{provider}: TLS files cannot be loaded")
        assert at_start.value.problems == [problem]


class TestBroker:
    def test_an_unreachable_broker_fails_with_the_connect_exit_code(
        self, tmp_path: Path, keys: KeyMaterial
    ) -> None:
        url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
        config = write_config(tmp_path, keys, broker_url=url)

        findings = run_checks(config, timeout=2, env={})

        assert failures(findings, "broker")
        assert exit_code(findings) == RET_CONNECT

    @pytest.mark.parametrize(
        "credentials",
        ["guest:Sup3rSecretPw@{host}//", "guest@{host}//?token=Sup3rSecretPw"],
        ids=["password", "query-parameter"],
    )
    def test_the_broker_password_never_appears_in_a_finding(
        self, tmp_path: Path, keys: KeyMaterial, credentials: str
    ) -> None:
        url = "amqp://" + credentials.format(host=f"127.0.0.1:{closed_port()}")
        config = write_config(tmp_path, keys, broker_url=url)

        findings = run_checks(config, timeout=2, env={})

        assert [f.detail for f in findings if "Sup3rSecretPw" in f.detail] == []

    def test_an_unsupported_broker_scheme_is_a_configuration_error(
        self, tmp_path: Path, keys: KeyMaterial
    ) -> None:
        config = write_config(tmp_path, keys, broker_url="redis://127.0.0.1:6379/0")

        findings = run_checks(config, env={})

        assert failures(findings, "broker")
        assert exit_code(findings) == RET_CONFIG


class TestLedger:
    def test_an_existing_ledger_at_this_schema_version_passes(self, config: Path) -> None:
        Ledger.open(f"sqlite:///{config.parent / 'data' / 'ledger.sqlite3'}").dispose()

        findings = [f for f in run_checks(config, env={}) if f.check == "ledger"]

        assert [f.status for f in findings] == [Status.OK]
        assert f"schema version {t.SCHEMA_VERSION}" in findings[0].detail

    def test_a_ledger_newer_than_this_bridge_fails_as_a_configuration_problem(
        self, config: Path
    ) -> None:
        ledger = Ledger.open(f"sqlite:///{config.parent / 'data' / 'ledger.sqlite3'}")
        with ledger.engine.begin() as connection:
            connection.execute(update(t.schema_info).values(value=str(t.SCHEMA_VERSION + 1)))
        ledger.dispose()

        findings = run_checks(config, env={})

        assert "install the newer referral-bridge" in failures(findings, "ledger")[0]
        assert exit_code(findings) == RET_CONFIG

    def test_the_check_leaves_the_ledger_as_it_found_it(self, config: Path) -> None:
        database = config.parent / "data" / "ledger.sqlite3"
        Ledger.open(f"sqlite:///{database}").dispose()
        before = database.read_bytes()

        run_checks(config, env={})

        assert database.read_bytes() == before

    def test_a_ledger_password_given_as_a_query_parameter_is_masked(
        self, config: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # issue 10: check-config printed a password given as a URL query parameter.
        url = f"postgresql+psycopg://rb@127.0.0.1:{closed_port()}/rb?password=Sup3rSecretPw"

        findings = run_checks(config, timeout=2, env={"REFERRAL_BRIDGE_LEDGER_URL": url})
        render(findings, config, out=sys.stdout, err=sys.stderr)

        output = capsys.readouterr()
        assert "Sup3rSecretPw" not in output.out + output.err
        assert "password=***" in output.out


class TestExitCode:
    def test_a_configuration_failure_outranks_an_unreachable_service(self) -> None:
        findings = [
            Finding("broker", Status.FAIL, "down", RET_CONNECT),
            Finding("keys", Status.FAIL, "bad", RET_CONFIG),
        ]

        assert exit_code(findings) == RET_CONFIG

    def test_warnings_alone_exit_ok(self) -> None:
        assert exit_code([Finding("broker", Status.WARN, "embedded")]) == RET_OK
