"""`referral-bridge demo` in marker mode: it works, and no personal value reaches its output."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from referral_bridge.devtools.simulate import MARKER_DATE_OF_BIRTH
from tests.e2e.helpers import cli_command, worker_environment

pytestmark = pytest.mark.e2e

#: The demo puts this in every personal field of its synthetic victims.
MARKER = "MARKERXYZ"
PERSONAL = (MARKER, MARKER_DATE_OF_BIRTH)


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    bridge_log: str
    dead_letter_details: list[str]
    report: Path


def _dead_letter_details(queue_folder: Path) -> list[str]:
    """x-rb-detail of every dead letter the embedded broker holds (one JSON file per message)."""
    details = []
    for path in sorted(queue_folder.glob("*dead-letter*")):
        headers = json.loads(path.read_text(encoding="utf-8")).get("headers", {})
        details.append(str(headers.get("x-rb-detail", "")))
    return details


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    root = tmp_path_factory.mktemp("demo")
    data_dir = root / "data"
    completed = subprocess.run(
        [
            *cli_command(),
            "demo",
            "--data-dir",
            str(data_dir),
            "--cases",
            "60",
            "--marker",
            MARKER,
        ],
        capture_output=True,
        cwd=root,
        env=worker_environment(),
        timeout=240,
        check=False,
    )
    return DemoRun(
        returncode=completed.returncode,
        stdout=completed.stdout.decode("utf-8", errors="replace"),
        stderr=completed.stderr.decode("utf-8", errors="replace"),
        bridge_log=(data_dir / "bridge.log").read_text(encoding="utf-8", errors="replace"),
        dead_letter_details=_dead_letter_details(data_dir / "broker" / "queue"),
        report=data_dir / "report.html",
    )


def test_the_demo_exits_with_code_zero(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr


def test_the_demo_summary_reports_referrals_sent(demo_run: DemoRun) -> None:
    section = demo_run.stdout.split("referrals sent, by provider/service", 1)[1]
    first_row = section.strip().splitlines()[0]
    assert "lancashire-victim-services/" in section
    assert int(first_row.split()[-1]) > 0


def test_the_demo_output_holds_no_marker_value(demo_run: DemoRun) -> None:
    output = demo_run.stdout + demo_run.stderr
    assert [value for value in PERSONAL if value in output] == []


def test_the_demo_workers_log_holds_no_marker_value(demo_run: DemoRun) -> None:
    assert "event.processed" in demo_run.bridge_log
    assert [value for value in PERSONAL if value in demo_run.bridge_log] == []


def test_the_demo_dead_letter_details_hold_no_marker_value(demo_run: DemoRun) -> None:
    assert demo_run.dead_letter_details
    leaked = [d for d in demo_run.dead_letter_details if any(v in d for v in PERSONAL)]
    assert leaked == []


def test_the_demo_ends_by_writing_its_html_report_and_saying_where(demo_run: DemoRun) -> None:
    last = demo_run.stdout.strip().splitlines()[-1]
    assert last.endswith(str(demo_run.report.resolve()))
    page = demo_run.report.read_text(encoding="utf-8")
    assert page.count("<svg") == 3
    assert 'id="referrals"' in page
    assert [value for value in PERSONAL if value in page] == []


def _section(stdout: str, title: str) -> dict[str, int]:
    """The rows of one summary section, label -> count."""
    rows: dict[str, int] = {}
    for line in stdout.split(title, 1)[1].splitlines()[1:]:
        if not line.startswith("  "):
            break
        label, _, count = line.strip().rpartition(" ")
        rows[label.strip()] = int(count)
    return rows


def test_the_demo_closes_the_loop_with_outcomes_completions_and_escalations(
    demo_run: DemoRun,
) -> None:
    outcomes = _section(demo_run.stdout, "provider outcomes (the latest per referral)")
    task_states = _section(demo_run.stdout, "officer tasks, by kind and state")
    dead = _section(demo_run.stdout, "dead letters, by reason")

    assert sum(outcomes.values()) > 0
    assert (
        task_states.get("leaflet: completed", 0) + task_states.get("leaflet: escalated, done", 0)
        > 0
    )
    assert any(label.startswith("escalation") for label in task_states)
    assert (dead["unknown_referral"], dead["unknown_task"]) == (1, 1)
