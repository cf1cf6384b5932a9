"""/metrics and /readyz of a real `referral-bridge run` subprocess on RabbitMQ.

The worker reaches RabbitMQ through a small TCP proxy the test owns, so "the broker stops" is the
proxy cutting every connection and refusing new ones: the shared RabbitMQ server keeps running
for the tests alongside. The worker is given port 0 for its endpoint and logs the port it got.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import (
    BridgeEnv,
    Worker,
    consent_event,
    crime_event,
    new_ref,
)
from tests.faults.proxy import FaultProxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MARKER = "HEALTHMARKERQX"
#: Samples of a /metrics page, keyed by metric name and label set.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LANCASHIRE = "lancashire-victim-services"


def health_port(worker: Worker) -> int | None:
    for line in worker.log_events():
        if line.get("event") == "health.listening":
            return int(str(line["url_host"]).rsplit(":", 1)[1])
    return None


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def samples(page: str) -> Samples:
    """Every sample on a /metrics page, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(page_samples: Samples, name: str, **labels: str) -> float | None:
    return page_samples.get((name, frozenset(labels.items())))


@dataclass
class RunningBridge:
    env: BridgeEnv
    proxy: FaultProxy
    worker: Worker
    port: int


def start_bridge(root: Path, rabbitmq_url: str) -> RunningBridge:
    """A BridgeEnv whose worker talks to RabbitMQ through a proxy and serves on a free port."""
    env = BridgeEnv.create(
        root, rabbitmq_url=rabbitmq_url, scheduler_interval=0.5, metrics_listen="127.0.0.1:0"
    )
    proxy = FaultProxy.for_url(rabbitmq_url).start()
    text = env.config.read_text(encoding="utf-8")
    text = text.replace(
        f"url = {json.dumps(rabbitmq_url)}", f'url = "{proxy.url_through(rabbitmq_url)}"', 1
    )
    # The month's compliance gauges recomputed every second, not every minute.
    text = text.replace("[metrics]\n", "[metrics]\ncompliance_refresh_seconds = 1\n", 1)
    env.config.write_text(text, encoding="utf-8")
    worker = env.start_worker()
    assert wait_until(lambda: health_port(worker) is not None, timeout=30), worker.log_text()
    port = health_port(worker)
    assert port is not None
    return RunningBridge(env=env, proxy=proxy, worker=worker, port=port)


def marked(event: dict[str, Any]) -> dict[str, Any]:
    """The event with the marker in every personal field of its victim."""
    victim = event["data"]["victims"][0]
    victim["name"] = {"title": "Mx", "given": MARKER, "family": MARKER}
    victim["contact"]["phone"] = "07700 900999"
    victim["contact"]["email"] = f"{MARKER.lower()}@example.org"
    victim["contact"]["safe_contact_notes"] = MARKER
    victim["contact"]["address"] = {"lines": [MARKER], "postcode": "PR1 9ZZ"}
    return event


@dataclass
class Scraped:
    page: str
    samples: Samples


@pytest.fixture(scope="module")
def after_workload(
    rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    """One worker, one known workload, one scrape: 4 crimes (2 referrals, 1 hold, 1 leaflet),
    1 consent for an unknown case, and 2 undecodable messages (invalid JSON, not a CloudEvent)."""
    running = start_bridge(tmp_path_factory.mktemp("health-workload"), rabbitmq_url)
    try:
        env = running.env
        env.publish(
            marked(crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))),
            marked(crime_event(crime_ref=new_ref(), victim_id=new_ref("P"))),
            marked(
                crime_event(
                    crime_ref=new_ref(), victim_id=new_ref("P"), category="sexual", ho_class="17"
                )
            ),
            marked(crime_event(crime_ref=new_ref(), victim_id=new_ref("P"), consent="declined")),
        )
        env.publish(consent_event(case_ref=new_ref(), victim_id=new_ref("P"), referral="given"))
        env.publish(b"{ not json " + MARKER.encode(), routing_key="crime.recorded")
        env.publish(json.dumps({"hello": MARKER}).encode(), routing_key="crime.recorded")
        env.wait_settled(5)
        env.wait_dead_letters(2)
        # The compliance thread's next round sees the workload.
        assert wait_until(
            lambda: (
                'referral_bridge_compliance_month_referrals{state="in_time"} 2.0'
                in get(running.port, "/metrics")[1]
            ),
            timeout=30,
        )
        status, page = get(running.port, "/metrics")
        assert status == 200
        yield Scraped(page=page, samples=samples(page))
    finally:
        running.env.close()
        running.proxy.cut()


class TestMetricsAfterAKnownWorkload:
    def test_events_consumed_are_counted_by_type(self, after_workload: Scraped) -> None:
        counted = {
            kind: value(after_workload.samples, "referral_bridge_events_consumed_total", type=kind)
            for kind in ("crime.recorded", "consent.updated", "incident.recorded")
        }

        assert counted == {"crime.recorded": 4.0, "consent.updated": 1.0, "incident.recorded": 0.0}

    def test_decisions_are_counted_by_outcome_and_reason(self, after_workload: Scraped) -> None:
        decisions = {
            (dict(labels)["outcome"], dict(labels)["reason"]): count
            for (name, labels), count in after_workload.samples.items()
            if name == "referral_bridge_decisions_total"
        }

        assert decisions == {
            ("refer", "not_objected"): 2.0,
            ("hold", "awaiting_consent"): 1.0,
            ("leaflet", "consent_needed"): 1.0,
            ("leaflet", "declined"): 1.0,
        }

    def test_dead_letters_are_counted_by_reason(self, after_workload: Scraped) -> None:
        dead = {
            reason: value(after_workload.samples, "referral_bridge_dead_letters_total", reason=r)
            for reason, r in (
                ("invalid_json", "invalid_json"),
                ("not_cloudevent", "not_cloudevent"),
                ("schema_violation", "schema_violation"),
            )
        }

        assert dead == {"invalid_json": 1.0, "not_cloudevent": 1.0, "schema_violation": 0.0}

    def test_the_dead_letter_queue_depth_is_reported(self, after_workload: Scraped) -> None:
        assert value(after_workload.samples, "referral_bridge_dead_letter_queue_depth") == 2.0

    def test_the_held_victim_is_reported_as_an_open_hold(self, after_workload: Scraped) -> None:
        assert value(after_workload.samples, "referral_bridge_holds_open") == 1.0

    def test_nothing_is_left_undelivered(self, after_workload: Scraped) -> None:
        age = value(
            after_workload.samples, "referral_bridge_oldest_undelivered_referral_age_seconds"
        )

        assert age == 0.0

    def test_both_referrals_are_counted_as_delivered_to_the_provider(
        self, after_workload: Scraped
    ) -> None:
        delivered = value(
            after_workload.samples,
            "referral_bridge_deliveries_total",
            provider=LANCASHIRE,
            kind="referral",
        )

        assert delivered == 2.0

    def test_this_months_compliance_figures_are_reported(self, after_workload: Scraped) -> None:
        figures = after_workload.samples
        # 2 referrals in time; the declined victim's leaflet task and the sexual offence's
        # consent_needed task are open, not yet due.
        assert value(figures, "referral_bridge_compliance_ratio", figure="referred_in_time") == 1.0
        assert value(figures, "referral_bridge_compliance_month_tasks", state="open") == 2.0
        assert value(figures, "referral_bridge_gauge_source_up", source="compliance") == 1.0
        assert value(figures, "referral_bridge_tasks_overdue", kind="leaflet") == 0.0
        assert value(figures, "referral_bridge_crime_reviews_open") == 0.0

    def test_the_page_holds_no_personal_data(self, after_workload: Scraped) -> None:
        page = after_workload.page

        assert [m for m in (MARKER, MARKER.lower(), "07700 900999", "PR1 9ZZ") if m in page] == []


@pytest.fixture
def running_bridge(rabbitmq_url: str, tmp_path: Path) -> Iterator[RunningBridge]:
    running = start_bridge(tmp_path / "bridge", rabbitmq_url)
    try:
        yield running
    finally:
        running.env.close()
        running.proxy.cut()


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/readyz")
    document: dict[str, Any] = json.loads(body)
    return status, document


class TestReadiness:
    def test_healthz_answers_while_the_worker_runs(self, running_bridge: RunningBridge) -> None:
        assert get(running_bridge.port, "/healthz") == (200, "ok\n")

    def test_readyz_goes_unready_when_the_broker_stops_and_ready_when_it_returns(
        self, running_bridge: RunningBridge
    ) -> None:
        port, proxy = running_bridge.port, running_bridge.proxy
        assert wait_until(lambda: readiness(port)[0] == 200, timeout=30), readiness(port)

        proxy.cut()
        assert wait_until(lambda: readiness(port)[0] == 503, timeout=30), readiness(port)
        assert "broker" in readiness(port)[1]["failed"]

        proxy.restore()
        assert wait_until(lambda: readiness(port)[0] == 200, timeout=60), readiness(port)
        assert running_bridge.worker.running
