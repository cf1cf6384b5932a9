"""The shipped Prometheus rules and Grafana dashboard: valid, unit-tested, and naming only metrics
the bridge exports (a renamed metric would otherwise leave an alert silently blind).

promtool comes with Debian's `prometheus` package; .ci/run installs it when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from referral_bridge.ledger import Ledger
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.runtime.gauges import CompliancePoller, LedgerGauges
from referral_bridge.transport import broker_spec

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "referral-bridge.rules.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "referral-bridge.rules.test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "referral-bridge.json"
#: Series Prometheus itself makes (scrape health, blackbox probes), not the bridge.
PROMETHEUS_OWN = {"up", "probe_success"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (.ci/run does it)"
    return found


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def exported_names(tmp_path: Path) -> set[str]:
    """Every series name /metrics can show, as the worker registers it (worker.py)."""
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        poller = CompliancePoller(ledger.engine)
        poller.refresh()
        registry = CollectorRegistry()
        registry.register(BridgeMetrics().registry)
        registry.register(
            LedgerGauges(
                engine=ledger.engine,
                broker=broker_spec(None, tmp_path),
                dead_letter_queue="dlq",
                depth=lambda _spec, _queue: 0,
                compliance=poller,
            )
        )
        registry.register(ProcessCollector(registry=None))
        names: set[str] = set()
        for family in registry.collect():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            else:
                names.add(family.name)
            names |= {sample.name for sample in family.samples}
        return names
    finally:
        ledger.dispose()


def expressions() -> dict[str, list[str]]:
    rules = [
        line.split("expr:", 1)[1].strip()
        for line in RULES.read_text().splitlines()
        if line.strip().startswith("expr:")
    ]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())
    ]
    return {"rules": rules, "dashboard": panels}


_FUNCTIONS_AND_KEYWORDS = {
    "max",
    "min",
    "sum",
    "by",
    "without",
    "or",
    "and",
    "absent",
    "increase",
    "rate",
    "delta",
}


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not followed by `(` that are not
    label names inside braces, functions or keywords."""
    without_labels = re.sub(r"\{[^}]*\}", "{}", expression)
    without_grouping = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "[]", without_grouping)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", without_ranges))
    return {n for n in names if n not in _FUNCTIONS_AND_KEYWORDS and not n.isdigit()}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_named_is_one_the_bridge_exports(source: str, tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    named = set().union(*(metric_names(e) for e in expressions()[source]))
    assert named - exported - PROMETHEUS_OWN == set()
    # The extraction finds what it should (so the check above cannot pass by finding nothing).
    assert {
        "referral_bridge_dead_letter_queue_depth",
        "referral_bridge_tasks_overdue",
        "referral_bridge_crime_reviews_open",
        "referral_bridge_provider_circuit_open",
    } <= named


def test_the_extraction_sees_a_misspelt_metric() -> None:
    assert metric_names('max by (provider) (referral_bridge_circut_open{job="x"}[5m]) > 0') == {
        "referral_bridge_circut_open"
    }
