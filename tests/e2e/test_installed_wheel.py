"""An installed wheel works without the checkout: its default policy and samples are package data.

The wheel is built from a copy of the sources and installed (without dependencies) into a fresh
virtual environment that borrows this one's site-packages for the dependencies, so the test is
quick and needs no package index. Every command then runs from a folder outside the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, worker_environment

pytestmark = pytest.mark.e2e

NOW = "2026-11-24T10:00:00Z"


@dataclass(frozen=True)
class Installed:
    venv: Path
    elsewhere: Path

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = worker_environment()
        env.pop("PYTHONPATH", None)
        return subprocess.run(
            [str(self.venv / "bin" / "referral-bridge"), *argv],
            capture_output=True,
            text=True,
            cwd=self.elsewhere,
            env=env,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str) -> str:
        return subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            cwd=self.elsewhere,
            check=True,
            timeout=60,
        ).stdout.strip()


def _build_wheel(work: Path) -> Path:
    """`pip wheel` on a copy of what the wheel is made of (the build writes into its source)."""
    source = work / "source"
    shutil.copytree(
        REPO / "referral_bridge",
        source / "referral_bridge",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(dist), str(source)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    [wheel] = dist.glob("referral_bridge-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    installed = Installed(work / "venv", elsewhere)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(installed.venv)], check=True)
    site = Path(installed.python("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    # The dependencies from this environment; a path line only: its own .pth files (the
    # editable install of the checkout among them) are not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", "utf-8")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(installed.venv / "bin" / "python"),
         "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return installed


def test_the_package_runs_from_the_install_not_the_checkout(installed: Installed) -> None:
    location = Path(installed.python("import referral_bridge; print(referral_bridge.__file__)"))

    assert location.is_relative_to(installed.venv)
    assert not location.is_relative_to(REPO)


def test_the_default_policy_and_samples_are_installed_with_it(installed: Installed) -> None:
    policy, samples = installed.python(
        "from referral_bridge.resources import DEFAULT_POLICY, SAMPLES; "
        "print(DEFAULT_POLICY); print(sorted(p.name for p in SAMPLES.glob('*.json')))"
    ).splitlines()

    assert Path(policy).is_file()
    assert Path(policy).is_relative_to(installed.venv)
    assert "crime-recorded-burglary.json" in samples


def test_rules_explain_decides_a_sample_with_the_installed_policy(installed: Installed) -> None:
    samples = installed.python("from referral_bridge.resources import SAMPLES; print(SAMPLES)")

    done = installed.run(
        "rules", "explain", str(Path(samples) / "crime-recorded-burglary.json"), "--now", NOW
    )

    assert done.returncode == 0, done.stderr
    assert "victim P-00918273: REFER (not_objected)" in done.stdout
    assert str(installed.venv) in done.stdout  # "with policy <the installed one>"


def test_the_demo_runs_with_the_installed_samples(installed: Installed) -> None:
    data = installed.elsewhere / "demo"

    done = installed.run("demo", "--data-dir", str(data), "--cases", "5", timeout=240)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "(3 contract samples;" in done.stdout
    assert (data / "report.html").is_file()
