"""README's "Running it for real", followed as a new user would: its commands, as written.

The first fenced block of the section is run command by command in a copy of the checkout (with
this environment as its `.venv`, as `make` would have made it): `run` starts in the background,
the commands after it run "from another terminal" (each waits for the worker to process what the
one before fed it), and the worker must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, worker_environment
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

_FENCE = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)
_COPY_IGNORES = shutil.ignore_patterns(
    ".git", ".venv", "var", "__pycache__", ".*_cache", ".hypothesis", "build", "dist", "*.egg-info"
)


def readme_section(heading: str) -> str:
    """The README section whose `## ` heading holds `heading`, up to the next one."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    [start] = [m.end() for m in re.finditer(r"^## .*$", text, re.MULTILINE) if heading in m[0]]
    following = re.search(r"^## ", text[start:], re.MULTILINE)
    return text[start : start + following.start()] if following else text[start:]


def commands(block: str) -> list[str]:
    """Shell commands of a fenced block: comments dropped, `\\` continuations joined."""
    lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def blocks() -> list[list[str]]:
    return [commands(block) for block in _FENCE.findall(readme_section("for real"))]


def is_worker(command: str) -> bool:
    return " run " in f" {command} " and "referral-bridge" in command


def caught_up(log: Path, published: int) -> bool:
    """Whether the worker's log shows at least `published` events processed."""
    return log.read_text().count('"event.processed"') >= published


def test_the_section_has_a_trial_and_a_production_run_of_the_same_command() -> None:
    trial, production = blocks()[:2]
    [run] = [c for c in trial if is_worker(c)]
    [production_run] = production

    assert [c for c in trial if "keys generate" in c]
    assert any("check-config" in c for c in trial)
    # The production run is the trial's, with the broker and ledger from the environment.
    assert production_run.endswith(run)
    assert {word.split("=")[0] for word in production_run.removesuffix(run).split()} == {
        "REFERRAL_BRIDGE_BROKER_URL",
        "REFERRAL_BRIDGE_LEDGER_URL",
    }


def test_the_steps_work_on_a_fresh_copy_of_the_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "referral-bridge"
    shutil.copytree(REPO, checkout, ignore=_COPY_IGNORES, symlinks=True)
    (checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    env = worker_environment()
    log = tmp_path / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    published = 0
    audits: list[str] = []
    try:
        for command in blocks()[0]:
            if is_worker(command):
                with log.open("wb") as sink:
                    worker = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"],
                        cwd=checkout, env=env, stdout=sink, stderr=subprocess.STDOUT,
                    )  # fmt: skip
                assert wait_until(lambda: '"worker.ready"' in log.read_text(), timeout=60), (
                    log.read_text()
                )
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=checkout, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if found := re.search(r"published (\d+) messages", done.stdout):
                # What comes next in the README reads what the worker made of them.
                published += int(found[1])
                assert wait_until(partial(caught_up, log, published), timeout=120), log.read_text()[
                    -3000:
                ]
            if " audit " in command:
                audits.append(done.stdout)
        assert worker is not None, "the steps never start the worker"
        assert published > 0, "the steps never feed the worker"
        assert audits, "the steps never show the audit trail"
        assert all("referral_sent" in audit for audit in audits)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
    with sqlite3.connect(checkout / "var" / "data" / "ledger.sqlite3") as ledger:
        [(referred,)] = ledger.execute(
            "SELECT count(*) FROM rb_actions WHERE action = 'referral'"
        ).fetchall()
    assert referred > 0
