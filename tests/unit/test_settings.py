"""load_settings: one TOML file plus environment overrides, every problem naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from referral_bridge.bootstrap import topology_of
from referral_bridge.errors import ConfigError
from referral_bridge.runtime.worker import retry_policy_of
from referral_bridge.settings import (
    CONFIG_ENV,
    PROVIDER_FILE_KEYS,
    ProviderSection,
    load_settings,
)
from referral_bridge.transport import Topology

MINIMAL = """\
[bridge]
policy_file = "policy.toml"
data_dir = "data"

[keys]
signing_key = "keys/bridge.private.jwk"

[providers.lancashire-victim-services]
public_keys = "keys/lancashire-victim-services.public.jwk"
"""


def write_config(folder: Path, text: str = MINIMAL) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "referral-bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return caught.value.problems


class TestReadingTheFile:
    def test_a_missing_file_is_reported_with_its_path(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"

        assert problems_of(path) == [f"{path}: file not found"]

    def test_a_file_that_is_not_toml_is_reported_with_its_path(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, "[bridge\nsource = ")

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: not valid TOML")

    def test_without_a_path_the_environment_names_the_file(self, tmp_path: Path) -> None:
        path = write_config(tmp_path)

        settings = load_settings(None, env={CONFIG_ENV: str(path)})

        assert settings.config_path == path

    def test_without_a_path_or_environment_the_error_says_how_to_name_one(self) -> None:
        [problem] = problems_of(None)

        assert "--config" in problem
        assert CONFIG_ENV in problem

    def test_a_minimal_file_gets_the_contract_defaults(self, tmp_path: Path) -> None:
        settings = load_settings(write_config(tmp_path), env={})

        assert settings.broker.topology.inbound_exchange == "police.events"
        assert settings.broker.topology.dead_letter_queue == "referral-bridge.dead-letter"
        assert settings.embedded_broker
        assert settings.ledger_url == f"sqlite:///{tmp_path / 'data' / 'ledger.sqlite3'}"


class TestValidation:
    def test_an_unknown_key_is_reported_with_the_file_and_key(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL.replace("[bridge]\n", "[bridge]\ncolour = 1\n"))

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: bridge.colour:")

    def test_an_unknown_section_is_reported_with_the_file_and_section(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL + "\n[brokers]\nurl = ''\n")

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: brokers:")

    def test_a_missing_keys_section_is_reported_with_the_file_and_key(self, tmp_path: Path) -> None:
        text = MINIMAL.replace('[keys]\nsigning_key = "keys/bridge.private.jwk"\n', "")
        path = write_config(tmp_path, text)

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: keys:")

    def test_a_configuration_without_providers_is_refused(self, tmp_path: Path) -> None:
        text = MINIMAL.split("[providers.")[0]
        path = write_config(tmp_path, text)

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: providers:")

    def test_an_out_of_range_value_is_reported_with_the_file_and_key(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, MINIMAL.replace("[bridge]\n", "[bridge]\nmax_processing_attempts = 0\n")
        )

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: bridge.max_processing_attempts:")

    def test_every_problem_is_reported_at_once(self, tmp_path: Path) -> None:
        text = MINIMAL.replace("[bridge]\n", "[bridge]\ncolour = 1\nprefetch = 2\n")
        path = write_config(tmp_path, text)

        assert len(problems_of(path)) == 2


class TestEnvironment:
    def test_the_ledger_url_can_be_overridden_from_the_environment(self, tmp_path: Path) -> None:
        url = "postgresql+psycopg://referral_bridge@db.example/rb"

        settings = load_settings(write_config(tmp_path), env={"REFERRAL_BRIDGE_LEDGER_URL": url})

        assert settings.ledger_url == url

    def test_the_broker_url_can_be_overridden_from_the_environment(self, tmp_path: Path) -> None:
        url = "amqps://rb:pw@broker.example:5671/victims"

        settings = load_settings(write_config(tmp_path), env={"REFERRAL_BRIDGE_BROKER_URL": url})

        assert settings.broker.url == url
        assert not settings.embedded_broker

    def test_the_data_dir_can_be_overridden_from_the_environment(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "elsewhere"

        settings = load_settings(
            write_config(tmp_path / "conf"), env={"REFERRAL_BRIDGE_DATA_DIR": str(elsewhere)}
        )

        assert settings.data_dir == elsewhere

    def test_an_empty_override_leaves_the_file_value(self, tmp_path: Path) -> None:
        text = MINIMAL + '\n[ledger]\nurl = "sqlite:////var/lib/rb/ledger.sqlite3"\n'

        settings = load_settings(
            write_config(tmp_path, text), env={"REFERRAL_BRIDGE_LEDGER_URL": ""}
        )

        assert settings.ledger_url == "sqlite:////var/lib/rb/ledger.sqlite3"

    def test_a_variable_in_a_path_expands_from_the_environment(self, tmp_path: Path) -> None:
        text = MINIMAL.replace(
            '"keys/bridge.private.jwk"', '"${CREDENTIALS_DIRECTORY}/bridge.private.jwk"'
        )

        settings = load_settings(
            write_config(tmp_path, text), env={"CREDENTIALS_DIRECTORY": "/run/credentials/rb"}
        )

        assert settings.keys.signing_key == Path("/run/credentials/rb/bridge.private.jwk")

    def test_an_unset_variable_in_a_path_is_reported_with_the_file_key_and_variable(
        self, tmp_path: Path
    ) -> None:
        text = MINIMAL.replace(
            '"keys/bridge.private.jwk"', '"${CREDENTIALS_DIRECTORY}/bridge.private.jwk"'
        )
        path = write_config(tmp_path, text)

        [problem] = problems_of(path)
        assert problem.startswith(f"{path}: keys.signing_key:")
        assert "CREDENTIALS_DIRECTORY" in problem


class TestWithoutResolvingKeys:
    """Operator tools (`dlq`, `audit`) load settings without the keys they do not use."""

    def test_an_unset_credentials_directory_is_no_problem(self, tmp_path: Path) -> None:
        text = MINIMAL.replace(
            '"keys/bridge.private.jwk"', '"${CREDENTIALS_DIRECTORY}/bridge.private.jwk"'
        ).replace(
            '"keys/lancashire-victim-services.public.jwk"', '"${CREDENTIALS_DIRECTORY}/p.jwk"'
        )

        settings = load_settings(write_config(tmp_path, text), env={}, resolve_keys=False)

        assert settings.keys.signing_key == Path("${CREDENTIALS_DIRECTORY}/bridge.private.jwk")

    def test_every_provider_file_is_left_as_written(self, tmp_path: Path) -> None:
        files = {
            "public_keys": "${CREDENTIALS_DIRECTORY}/p.jwk",
            "broker_ca_bundle": "${CREDENTIALS_DIRECTORY}/provider-ca.pem",
        }
        text = MINIMAL.replace(
            'public_keys = "keys/lancashire-victim-services.public.jwk"',
            'broker_url = "amqps://bridge@provider.example/referrals"\n'
            + "".join(f'{key} = "{value}"\n' for key, value in files.items()),
        )

        settings = load_settings(write_config(tmp_path, text), env={}, resolve_keys=False)

        [provider] = settings.providers.values()
        assert {key: str(getattr(provider, key)) for key in files} == files

    def test_every_path_a_provider_has_is_a_provider_file(self) -> None:
        paths = {
            name
            for name, field in ProviderSection.model_fields.items()
            if field.annotation in (Path, Path | None)
        }

        assert paths == set(PROVIDER_FILE_KEYS)

    def test_other_paths_are_still_expanded_and_resolved(self, tmp_path: Path) -> None:
        text = MINIMAL.replace('"data"', '"${STATE_DIRECTORY}"')

        settings = load_settings(
            write_config(tmp_path, text), env={"STATE_DIRECTORY": "/var/lib/rb"}, resolve_keys=False
        )

        assert (settings.data_dir, settings.bridge.policy_file) == (
            Path("/var/lib/rb"),
            tmp_path / "policy.toml",
        )

    def test_other_problems_are_still_reported(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL + "\n[bridge.oops]\n")

        with pytest.raises(ConfigError):
            load_settings(path, env={}, resolve_keys=False)


class TestRelativePaths:
    def test_relative_paths_resolve_against_the_config_files_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        folder = tmp_path / "etc" / "referral-bridge"
        path = write_config(folder)
        monkeypatch.chdir(tmp_path)

        settings = load_settings(path, env={})

        assert settings.keys.signing_key == folder / "keys" / "bridge.private.jwk"
        assert settings.bridge.policy_file == folder / "policy.toml"
        assert settings.data_dir == folder / "data"
        assert settings.providers["lancashire-victim-services"].public_keys == (
            folder / "keys" / "lancashire-victim-services.public.jwk"
        )

    def test_relative_paths_resolve_against_the_folder_even_for_a_relative_config_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_config(tmp_path / "conf")
        monkeypatch.chdir(tmp_path)

        settings = load_settings(Path("conf/referral-bridge.toml"), env={})

        assert settings.bridge.policy_file == tmp_path / "conf" / "policy.toml"

    def test_absolute_paths_are_kept(self, tmp_path: Path) -> None:
        text = MINIMAL.replace('"policy.toml"', '"/etc/referral-bridge/policy.toml"')

        settings = load_settings(write_config(tmp_path, text), env={})

        assert settings.bridge.policy_file == Path("/etc/referral-bridge/policy.toml")

    def test_the_shipped_configuration_loads(self) -> None:
        shipped = Path(__file__).resolve().parents[2] / "config" / "referral-bridge.toml"

        settings = load_settings(shipped, env={})

        assert set(settings.providers) == {"lancashire-victim-services", "homicide-service"}
        assert settings.bridge.policy_file == shipped.parent / "policy.toml"


class TestProviderDelivery:
    """Provider settings that keep delivery secure and the consumer thread responsive."""

    def test_an_https_attempt_longer_than_the_pass_budget_is_refused(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            MINIMAL
            + 'delivery = "https"\nurl = "https://p.example/r"\nread_timeout_seconds = 30\n',
        )

        [problem] = problems_of(path)
        assert "connect_timeout_seconds + read_timeout_seconds" in problem

    def test_a_plain_amqp_provider_broker_is_refused(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path, MINIMAL + 'broker_url = "amqp://bridge:pw@broker.provider.example/"\n'
        )

        [problem] = problems_of(path)
        assert "amqps://" in problem
        assert "bridge:pw" not in problem

    def test_a_plain_amqp_provider_broker_on_loopback_is_allowed(self, tmp_path: Path) -> None:
        path = write_config(tmp_path, MINIMAL + 'broker_url = "amqp://guest@127.0.0.1:5672/"\n')

        settings = load_settings(path, env={})

        assert settings.providers["lancashire-victim-services"].broker_url.startswith("amqp://")

    def test_an_amqps_provider_broker_takes_a_ca_bundle_relative_to_the_file(
        self, tmp_path: Path
    ) -> None:
        path = write_config(
            tmp_path,
            MINIMAL + 'broker_url = "amqps://bridge@broker.provider.example/"\n'
            'broker_ca_bundle = "pki/provider-ca.pem"\n',
        )

        provider = load_settings(path, env={}).providers["lancashire-victim-services"]

        assert provider.broker_ca_bundle == tmp_path / "pki" / "provider-ca.pem"


class TestRetries:
    """Attempts and delays of failed messages, and the retry queue's name."""

    def test_the_defaults_are_five_attempts_1_2_4_and_8_s_apart(self, tmp_path: Path) -> None:
        settings = load_settings(write_config(tmp_path), env={})

        policy = retry_policy_of(settings)

        assert policy.max_attempts == 5
        assert [policy.delay(n).total_seconds() for n in range(1, 5)] == [1, 2, 4, 8]
        assert topology_of(settings).retry_queue == "referral-bridge.events.retry"

    def test_a_maximum_delay_below_the_first_is_refused(self, tmp_path: Path) -> None:
        path = write_config(
            tmp_path,
            MINIMAL.replace(
                "[bridge]\n", "[bridge]\nretry_delay_seconds = 10\nretry_max_delay_seconds = 5\n"
            ),
        )

        [problem] = problems_of(path)
        assert "retry_max_delay_seconds" in problem

    def test_the_retry_queue_follows_a_renamed_work_queue_unless_named(
        self, tmp_path: Path
    ) -> None:
        renamed = MINIMAL + '\n[broker.topology]\nwork_queue = "rb.events"\n'
        named = renamed + 'retry_queue = "rb.later"\n'

        assert topology_of(load_settings(write_config(tmp_path / "a", renamed), env={})) == (
            Topology(work_queue="rb.events", retry_queue="rb.events.retry")
        )
        assert topology_of(load_settings(write_config(tmp_path / "b", named), env={})) == (
            Topology(work_queue="rb.events", retry_queue="rb.later")
        )
