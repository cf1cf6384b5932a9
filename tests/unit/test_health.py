"""The health endpoint in-process: address parsing, readiness checks, the HTTP server, probes."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import select

from referral_bridge.bootstrap import Bridge, build
from referral_bridge.errors import ConfigError
from referral_bridge.ledger import Ledger
from referral_bridge.ledger import schema as t
from referral_bridge.runtime.health import (
    CachedCheck,
    CheckResult,
    HealthServer,
    Heartbeat,
    Readiness,
    consumer_check,
    ledger_check,
    parse_listen,
    probe_ledger,
)
from referral_bridge.runtime.systemd import Notifier
from referral_bridge.runtime.worker import (
    consumer_heartbeat_seconds,
    readiness_of,
    start_health_server,
)
from referral_bridge.settings import load_settings
from referral_bridge.transport.consumer import DEFAULT_HEARTBEAT_SECONDS
from tests.fakes import POLICY_FILE, make_keys


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


class TestParseListen:
    def test_host_and_port_are_split(self) -> None:
        assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)

    def test_an_ipv6_host_in_brackets_is_unwrapped(self) -> None:
        assert parse_listen("[::1]:9464") == ("::1", 9464)

    def test_empty_turns_the_endpoint_off(self) -> None:
        assert parse_listen("  ") is None

    @pytest.mark.parametrize(
        "value", ["9464", "localhost", "127.0.0.1:http", "h:70000", "h:\u00b2"]
    )
    def test_anything_else_is_a_configuration_error_naming_the_setting(self, value: str) -> None:
        with pytest.raises(ConfigError, match=r"metrics\.listen"):
            parse_listen(value)


class TestReadiness:
    def test_every_check_is_reported_by_name(self) -> None:
        readiness = Readiness(
            {"a": lambda: CheckResult(True, "fine"), "b": lambda: CheckResult(False, "down")}
        )

        assert readiness.evaluate() == {
            "a": CheckResult(True, "fine"),
            "b": CheckResult(False, "down"),
        }

    def test_a_check_that_raises_fails_with_only_the_exception_type(self) -> None:
        def broken() -> CheckResult:
            raise ValueError("Ms Sample Person, 07700 900123")

        result = Readiness({"broken": broken}).evaluate()["broken"]

        assert result == CheckResult(False, "check raised ValueError")


class TestConsumerCheck:
    def test_before_the_first_beat_the_consumer_is_not_ready(self) -> None:
        assert not consumer_check(Heartbeat())().ok

    def test_a_recent_beat_is_ready(self) -> None:
        clock = FakeMonotonic()
        heartbeat = Heartbeat(monotonic=clock)
        heartbeat.beat()
        clock.now += 5

        assert consumer_check(heartbeat, stale_after=30)().ok

    def test_a_silent_loop_is_not_ready(self) -> None:
        clock = FakeMonotonic()
        heartbeat = Heartbeat(monotonic=clock)
        heartbeat.beat()
        clock.now += 31

        assert not consumer_check(heartbeat, stale_after=30)().ok


class TestCachedCheck:
    def test_a_result_is_reused_within_its_time_to_live(self) -> None:
        clock, calls = FakeMonotonic(), []

        def check() -> CheckResult:
            calls.append(1)
            return CheckResult(True, "")

        cached = CachedCheck(check, ttl=2.0, monotonic=clock)
        cached()
        clock.now += 1.0
        cached()

        assert len(calls) == 1

    def test_the_check_runs_again_once_the_time_to_live_has_passed(self) -> None:
        clock, calls = FakeMonotonic(), []

        def check() -> CheckResult:
            calls.append(1)
            return CheckResult(True, "")

        cached = CachedCheck(check, ttl=2.0, monotonic=clock)
        cached()
        clock.now += 2.0
        cached()

        assert len(calls) == 2


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Readiness, Counter]]:
    registry = CollectorRegistry()
    counter = Counter("rb_test_things", "Things.", ["kind"], registry=registry)
    readiness = Readiness({"always": lambda: CheckResult(True, "fine")})
    server = HealthServer(host="127.0.0.1", port=0, registry=registry, readiness=readiness)
    server.start()
    try:
        yield server, readiness, counter
    finally:
        server.stop()


class TestHealthServer:
    def test_metrics_are_served_in_the_prometheus_text_format(
        self, served: tuple[HealthServer, Readiness, Counter]
    ) -> None:
        server, _, counter = served
        counter.labels(kind="x").inc(3)

        status, body = fetch(server.port, "/metrics")

        assert status == 200
        assert 'rb_test_things_total{kind="x"} 3.0' in body

    def test_healthz_answers_200(self, served: tuple[HealthServer, Readiness, Counter]) -> None:
        assert fetch(served[0].port, "/healthz") == (200, "ok\n")

    def test_readyz_answers_200_when_every_check_passes(
        self, served: tuple[HealthServer, Readiness, Counter]
    ) -> None:
        status, body = fetch(served[0].port, "/readyz")

        assert (status, json.loads(body)["status"]) == (200, "ready")

    def test_readyz_answers_503_naming_the_failed_check(
        self, served: tuple[HealthServer, Readiness, Counter]
    ) -> None:
        server, readiness, _ = served
        readiness.add("broker", lambda: CheckResult(False, "broker unreachable"))

        status, body = fetch(server.port, "/readyz")

        document = json.loads(body)
        assert (status, document["failed"]) == (503, ["broker"])
        assert document["checks"]["broker"] == {"ok": False, "detail": "broker unreachable"}

    def test_an_unknown_path_is_404(self, served: tuple[HealthServer, Readiness, Counter]) -> None:
        assert fetch(served[0].port, "/admin")[0] == 404

    def test_a_port_in_use_makes_start_raise(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = HealthServer(
                host="127.0.0.1", port=port, registry=CollectorRegistry(), readiness=Readiness()
            )

            with pytest.raises(OSError, match="in use"):
                server.start()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    try:
        yield opened
    finally:
        opened.dispose()


class TestProbeLedger:
    def test_a_migrated_ledger_reports_its_schema_version_and_takes_a_write(
        self, ledger: Ledger
    ) -> None:
        found = probe_ledger(ledger.engine)

        assert (found.reachable, found.schema_version, found.writable) == (
            True,
            t.SCHEMA_VERSION,
            True,
        )

    def test_the_write_is_rolled_back(self, ledger: Ledger) -> None:
        probe_ledger(ledger.engine)

        with ledger.engine.connect() as connection:
            rows = connection.execute(select(t.schema_info)).all()
            locks = connection.execute(select(t.locks)).all()
        assert [(row.key, row.value) for row in rows] == [("schema_version", str(t.SCHEMA_VERSION))]
        assert locks == []

    def test_a_read_only_ledger_is_reachable_but_not_writable(
        self, tmp_path: Path, ledger: Ledger
    ) -> None:
        ledger.dispose()
        database = tmp_path / "ledger.sqlite3"
        read_only = Ledger.open(f"sqlite:///file:{database}?mode=ro&uri=true")
        try:
            found = probe_ledger(read_only.engine)
        finally:
            read_only.dispose()

        assert (found.reachable, found.writable) == (True, False)

    def test_the_readiness_check_passes_on_a_writable_ledger(self, ledger: Ledger) -> None:
        assert ledger_check(ledger.engine)() == CheckResult(True, "writable")


# --- the worker's endpoint -----------------------------------------------------------------------


def embedded_bridge(root: Path, listen: str) -> Bridge:
    """A bridge on the embedded broker and a SQLite ledger under `root`, built for real."""
    keys = make_keys(root / "keys")
    shutil.copy(POLICY_FILE, root / "policy.toml")
    providers = "".join(
        f'[providers.{provider}]\npublic_keys = "{path}"\n'
        for provider, path in keys.provider_public.items()
    )
    config = root / "referral-bridge.toml"
    config.write_text(
        '[bridge]\ndata_dir = "data"\npolicy_file = "policy.toml"\n\n'
        f"[metrics]\nlisten = {json.dumps(listen)}\n\n"
        f'[keys]\nsigning_key = "{keys.bridge_private}"\n\n{providers}',
        encoding="utf-8",
    )
    return build(load_settings(config, env={}))


class TestWorkerEndpoint:
    def test_a_port_in_use_is_logged_and_the_worker_carries_on_without_the_endpoint(
        self, tmp_path: Path
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            bridge = embedded_bridge(tmp_path, f"127.0.0.1:{taken.getsockname()[1]}")
            try:
                with structlog.testing.capture_logs() as logs:
                    server = start_health_server(bridge, Readiness(), Notifier(None))
            finally:
                bridge.close()

        assert server is None
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["health.unavailable"]

    def test_an_empty_address_turns_the_endpoint_off(self, tmp_path: Path) -> None:
        bridge = embedded_bridge(tmp_path, "")
        try:
            assert start_health_server(bridge, Readiness(), Notifier(None)) is None
        finally:
            bridge.close()

    def test_a_malformed_address_is_a_configuration_error(self, tmp_path: Path) -> None:
        bridge = embedded_bridge(tmp_path, "localhost")
        try:
            with pytest.raises(ConfigError, match=r"metrics\.listen"):
                start_health_server(bridge, Readiness(), Notifier(None))
        finally:
            bridge.close()

    def test_the_endpoint_serves_the_bridge_counters_and_the_ledger_gauges(
        self, tmp_path: Path
    ) -> None:
        bridge = embedded_bridge(tmp_path, "127.0.0.1:0")
        server = start_health_server(bridge, Readiness(), Notifier(None))
        assert server is not None
        try:
            _, page = fetch(server.port, "/metrics")
        finally:
            server.stop()
            bridge.close()

        assert 'referral_bridge_dead_letters_total{reason="invalid_json"} 0.0' in page
        assert "referral_bridge_holds_open 0.0" in page


class TestWorkerReadiness:
    def test_readiness_has_no_check_that_cannot_fail(self, tmp_path: Path) -> None:
        """Keys are loaded once at start; a constant `keys: ok` would only pad /readyz."""
        bridge = embedded_bridge(tmp_path, "")
        try:
            heartbeat = Heartbeat()
            heartbeat.beat()
            checks = readiness_of(bridge, heartbeat).evaluate()
        finally:
            bridge.close()

        assert sorted(checks) == ["broker", "consumer", "ledger"]


class TestConsumerHeartbeat:
    def test_it_outlasts_the_slowest_in_place_delivery(self, tmp_path: Path) -> None:
        bridge = embedded_bridge(tmp_path, "")
        bridge.close()
        settings = bridge.settings
        slowest = max(
            p.connect_timeout_seconds + p.read_timeout_seconds for p in settings.providers.values()
        )

        heartbeat = consumer_heartbeat_seconds(settings)

        # Both ends drop a connection silent for about two heartbeat periods.
        assert 2 * heartbeat > settings.delivery.attempts_in_place * slowest

    def test_it_is_never_below_the_default(self, tmp_path: Path) -> None:
        bridge = embedded_bridge(tmp_path, "")
        bridge.close()
        quick = bridge.settings.model_copy(update={"providers": {}})

        assert consumer_heartbeat_seconds(quick) == DEFAULT_HEARTBEAT_SECONDS

    def test_the_configured_heartbeat_wins(self, tmp_path: Path) -> None:
        """`[broker] heartbeat_seconds`: a half-open connection noticed sooner (fault runs)."""
        bridge = embedded_bridge(tmp_path, "")
        bridge.close()
        settings = bridge.settings
        broker = settings.broker.model_copy(update={"heartbeat_seconds": 2})

        heartbeat = consumer_heartbeat_seconds(settings.model_copy(update={"broker": broker}))

        assert heartbeat == 2.0 < consumer_heartbeat_seconds(settings)
