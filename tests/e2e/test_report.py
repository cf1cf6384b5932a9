# mypy: disallow-untyped-calls=False
# selenium leaves WebDriver.get_log unannotated.
"""The compliance report over a ledger the real worker built from real events (issue 8).

Ten victims of ten burglaries: seven reported just now and referred at once (in time), one
reported ten days ago (referred, but after its 2-working-day deadline), two who declined (leaflet
tasks): one reported now, its task completed now (on time), one reported ten days ago, its task
completed now (late). The provider reports contacting two of the eight referred victims. Every
personal field of every victim carries a marker that must appear in no format.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from referral_bridge.core import ids
from referral_bridge.core.calendar import LONDON
from tests.e2e.browser import headless_chromium
from tests.e2e.conftest import postgres_database
from tests.e2e.helpers import (
    LANCASHIRE,
    BridgeEnv,
    cli_command,
    crime_event,
    encode,
    iso,
    new_ref,
    worker_environment,
)
from tests.fakes import bridge_role

pytestmark = pytest.mark.e2e

#: Put in every personal field; the report must never show any of them.
MARKERS = {
    "given": "Zephyrine",
    "family": "Quillfeather",
    "phone": "07700 955317",
    "email": "zq.marker@example.org",
    "line": "17 Marker Lane",
    "postcode": "PR9 9ZZ",
    "notes": "marker-notes-after-six",
    "dob": "1961-07-23",
}


def marked(event: dict[str, Any]) -> dict[str, Any]:
    victim = event["data"]["victims"][0]
    victim["name"].update(given=MARKERS["given"], family=MARKERS["family"])
    victim["date_of_birth"] = MARKERS["dob"]
    contact = victim["contact"]
    contact.update(
        phone=MARKERS["phone"],
        email=MARKERS["email"],
        safe_contact_notes=MARKERS["notes"],
    )
    contact["address"] = {"lines": [MARKERS["line"], "Preston"], "postcode": MARKERS["postcode"]}
    return event


def completion(task_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:force:tasks",
        "type": "task.completed",
        "time": iso(datetime.now(UTC)),
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": {
            "task_id": task_id,
            "completed_at": iso(datetime.now(UTC)),
            "completed_by": "PC 4412",
            "result": "leaflet_given",
        },
    }


def contact(referral_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:provider:lancashire",
        "type": "victim.referral.outcome",
        "time": iso(datetime.now(UTC)),
        "schemaversion": 1,
        "datacontenttype": "application/json",
        "data": {
            "referral_id": referral_id,
            "provider": LANCASHIRE,
            "outcome": "contacted",
            "at": iso(datetime.now(UTC)),
        },
    }


def publish_outcomes(env: BridgeEnv, outcomes: list[dict[str, Any]]) -> None:
    """As a provider does: on the outcomes exchange, with its own id as the routing key."""
    with env.connection() as connection:
        producer = connection.Producer()
        for outcome in outcomes:
            producer.publish(
                encode(outcome),
                exchange=env.topology.outcomes_exchange,
                routing_key=LANCASHIRE,
                content_type="application/cloudevents+json",
                content_encoding="utf-8",
                delivery_mode=2,
            )


class _Page(HTMLParser):
    """What the page is made of: tags seen, and anything that could fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.fetching: list[str] = []
        self.svg_in_figure = 0
        self._figure = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "figure":
            self._figure += 1
        if tag == "svg" and self._figure:
            self.svg_in_figure += 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value and not value.startswith("#"):
                self.fetching.append(f"{tag} {name}={value}")
        if tag in ("script", "link", "iframe", "object", "embed", "img"):
            self.fetching.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure -= 1


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def reported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str
) -> Iterator[Path]:
    """Run the events through a real worker once per ledger kind; yield the report's files."""
    with contextlib.ExitStack() as stack:
        # PostgreSQL: migrated by the owner, run as a least-privilege role (run refuses owners).
        ledger_url = (
            stack.enter_context(bridge_role(stack.enter_context(postgres_database())))
            if request.param == "postgresql"
            else ""
        )
        yield stack.enter_context(_reported(tmp_path_factory, rabbitmq_url, ledger_url))


@contextlib.contextmanager
def _reported(
    tmp_path_factory: pytest.TempPathFactory, rabbitmq_url: str, ledger_url: str
) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("report")
    env = BridgeEnv.create(root / "bridge", rabbitmq_url=rabbitmq_url, ledger_url=ledger_url)
    try:
        now = datetime.now(UTC)
        ten_days_ago = now - timedelta(days=10)
        events = [
            marked(crime_event(crime_ref=new_ref("RPT"), victim_id=new_ref("P"))) for _ in range(7)
        ]
        events.append(
            marked(
                crime_event(
                    crime_ref=new_ref("RPT"), victim_id=new_ref("P"), reported_at=ten_days_ago
                )
            )
        )
        events.append(
            marked(
                crime_event(crime_ref=new_ref("RPT"), victim_id=new_ref("P"), consent="declined")
            )
        )
        events.append(
            marked(
                crime_event(
                    crime_ref=new_ref("RPT"),
                    victim_id=new_ref("P"),
                    consent="declined",
                    reported_at=ten_days_ago,
                )
            )
        )
        env.start_worker()
        env.publish(*events)
        env.wait_settled(len(events), timeout=90)
        declined = [e["data"] for e in events[8:]]
        completions = [
            completion(
                ids.leaflet_task_id(d["crime_ref"], d["victims"][0]["victim_id"], "declined")
            )
            for d in declined
        ]
        env.publish(*completions)
        contacted = [e["data"] for e in events[:2]]
        publish_outcomes(
            env,
            [
                contact(ids.referral_id(LANCASHIRE, d["crime_ref"], d["victims"][0]["victim_id"]))
                for d in contacted
            ],
        )
        env.wait_settled(len(events) + 4, timeout=90)
        env.workers[0].terminate()
        today = now.astimezone(LONDON).date()
        period = [
            "--from",
            (today - timedelta(days=1)).isoformat(),
            "--to",
            (today + timedelta(days=1)).isoformat(),
        ]
        out = root / "out"
        out.mkdir()
        for form, name in (("table", "report.txt"), ("csv", "report.csv"), ("json", "report.json")):
            done = subprocess.run(
                [*cli_command(), "report", "--config", str(env.config), *period, "--format", form],
                capture_output=True,
                env=worker_environment(),
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            (out / name).write_bytes(done.stdout)
        html = out / "report.html"
        done = subprocess.run(
            [
                *cli_command(),
                "report",
                "--config",
                str(env.config),
                *period,
                "--format",
                "html",
                "--out",
                str(html),
            ],
            capture_output=True,
            env=worker_environment(),
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert str(html) in done.stderr.decode()
        yield out
    finally:
        env.close()


def test_the_shares_worked_out_by_hand(reported: Path) -> None:
    document = json.loads((reported / "report.json").read_text())
    headlines = document["headlines"]
    assert headlines["victims"] == 10
    assert headlines["referrals"] == 8
    # 7 handed over in time, 1 after its deadline.
    assert headlines["share_referred_in_time"] == 0.875
    assert headlines["referred_late"] == 1
    assert headlines["dead_letters"] == 0
    # Two leaflet tasks: one completed by its due time, one after it.
    assert headlines["tasks_issued"] == 2
    assert headlines["share_tasks_on_time"] == 0.5
    assert headlines["tasks_overdue"] == 0
    # The provider reached 2 of the 8 victims referred, within 2 working days.
    assert headlines["share_contacted_within_2wd"] == 0.25
    referrals = next(
        t for t in document["tables"] if t["section"] == "referrals" and t["dimension"] == "all"
    )
    assert referrals["rows"][0]["in_time"] == 7
    assert referrals["rows"][0]["late"] == 1
    reasons = next(t for t in document["tables"] if t["section"] == "victim_reasons")
    by_reason = {row["outcome"]: row["victims"] for row in reasons["rows"]}
    assert by_reason["leaflet: declined"] == 2
    assert by_reason["refer: not_objected"] == 8

    text = (reported / "report.txt").read_text()
    assert "share referred in time" in text
    assert "87.5%" in text
    assert "50.0%" in text

    rows = list(csv.DictReader(io.StringIO((reported / "report.csv").read_text())))
    share = next(
        r
        for r in rows
        if r["section"] == "referrals"
        and r["dimension"] == "all"
        and r["measure"] == "share_in_time"
    )
    assert share["value"] == "0.875"
    burglary = next(
        r
        for r in rows
        if r["section"] == "victims" and r["dimension"] == "category" and r["measure"] == "victims"
    )
    assert (burglary["key"], burglary["value"]) == ("burglary", "10")


def test_the_page_holds_its_charts_inline_and_fetches_nothing(reported: Path) -> None:
    page = _Page()
    page.feed((reported / "report.html").read_text())
    page.close()
    assert page.svg_in_figure == 3
    assert page.fetching == []
    assert "table" in page.tags


@pytest.mark.parametrize("name", ["report.txt", "report.csv", "report.json", "report.html"])
def test_no_personal_data_in_any_format(reported: Path, name: str) -> None:
    text = (reported / name).read_text()
    for field, value in MARKERS.items():
        assert value not in text, f"{field} marker in {name}"


def test_the_page_renders_in_a_real_browser_without_network_or_errors(reported: Path) -> None:
    driver = headless_chromium(reported, logging=True)
    try:
        url = (reported / "report.html").resolve().as_uri()
        driver.get(url)
        figures = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure svg')).map(s => {"
            " const r = s.getBoundingClientRect();"
            " return [r.width, r.height, s.querySelectorAll('path, rect, use').length]; });"
        )
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        console = driver.get_log("browser")
        requests = [
            message["params"]
            for message in (
                json.loads(e["message"])["message"] for e in driver.get_log("performance")
            )
            if message["method"] == "Network.requestWillBeSent"
        ]
    finally:
        driver.quit()
    assert len(figures) == 3
    for width, height, shapes in figures:
        assert width > 100
        assert height > 50
        assert shapes > 5
    assert resources == []
    assert console == []
    # The page asked for nothing but itself; nothing at all went to the network (the browser's
    # own chrome:// pages are not the network).
    assert [r["request"]["url"] for r in requests if r.get("documentURL") == url] == [url]
    assert [
        r["request"]["url"]
        for r in requests
        if "://" in r["request"]["url"]
        and r["request"]["url"].split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")
    ] == []
