"""The shipped unit file: it parses, it is Type=notify with a watchdog, and its sandbox rates at
most 2.0 on `systemd-analyze security --offline=yes`.

systemd-analyze comes with the `systemd` package (apt-get install systemd), which runs in a
container without booting it. Skipped where it is missing, except under CI=true, where it must
be installed.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from referral_bridge.settings import DeliverySection, ProviderSection

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "referral-bridge.service"
MAX_EXPOSURE = 2.0
INSTALLED_CLI = "/opt/referral-bridge/.venv/bin/referral-bridge"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must provide it")
        pytest.skip(message)
    return found


def service_section() -> dict[str, list[str]]:
    """The [Service] section, every value of repeated keys kept in order."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


class TestUnitSettings:
    def test_the_unit_is_a_notify_service_accepting_notifications_from_its_main_process(
        self,
    ) -> None:
        service = service_section()

        assert (service["Type"], service["NotifyAccess"]) == (["notify"], ["main"])

    def test_the_unit_has_a_watchdog_and_restarts_on_failure(self) -> None:
        service = service_section()

        assert int(service["WatchdogSec"][0]) > 0
        assert service["Restart"] == ["on-failure"]

    def test_the_stop_timeout_outlasts_the_worst_in_place_delivery_of_the_message_in_hand(
        self,
    ) -> None:
        """A stop drains the message in hand; SIGKILL mid-drain is not the clean stop promised."""
        delivery, provider = DeliverySection(), ProviderSection(public_keys=Path("p.jwk"))
        per_attempt = provider.connect_timeout_seconds + provider.read_timeout_seconds

        assert int(service_section()["TimeoutStopSec"][0]) > (
            delivery.attempts_in_place * per_attempt
        )

    def test_a_configuration_error_is_not_restarted(self) -> None:
        assert service_section()["RestartPreventExitStatus"] == ["3"]

    def test_the_signing_key_comes_as_a_credential_and_the_service_has_its_own_user(
        self,
    ) -> None:
        service = service_section()

        assert service["LoadCredential"][0].startswith("bridge.private.jwk:")
        assert service["User"] == ["referral-bridge"]

    def test_the_unit_is_plain_ini_without_duplicate_sections(self) -> None:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case

        parser.read_string(UNIT.read_text(encoding="utf-8"))

        assert parser.sections() == ["Unit", "Service", "Install"]


class TestSystemdAnalyze:
    def test_systemd_analyze_verify_accepts_the_unit(self, tmp_path: Path) -> None:
        """The install path does not exist here: verify a copy whose commands point at /bin/true,
        so every other directive is still checked."""
        analyze = systemd_analyze()
        copy = tmp_path / UNIT.name
        copy.write_text(
            UNIT.read_text(encoding="utf-8").replace(INSTALLED_CLI, "/bin/true"), encoding="utf-8"
        )

        result = subprocess.run(
            [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
        )

        assert result.returncode == 0, result.stderr

    def test_the_security_exposure_is_at_most_2_0(self) -> None:
        analyze = systemd_analyze()

        result = subprocess.run(
            [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
            capture_output=True,
            text=True,
            check=False,
        )

        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert found is not None, result.stdout + result.stderr
        assert float(found.group(1)) <= MAX_EXPOSURE
