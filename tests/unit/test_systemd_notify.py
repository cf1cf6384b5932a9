"""sd_notify over a real AF_UNIX datagram socket: the Notifier, the watchdog, and the worker.

The worker test runs `referral-bridge run` as a subprocess on the embedded broker in a tmp dir,
with NOTIFY_SOCKET and WATCHDOG_USEC set as systemd would, and listens on the socket it names.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from referral_bridge.runtime.health import Heartbeat
from referral_bridge.runtime.systemd import Notifier, Watchdog, watchdog_interval
from referral_bridge.runtime.worker import LoopTick
from tests.fakes import POLICY_FILE, make_keys
from tests.waiting import wait_until


class NotifySocket:
    """The listening end systemd would hold: collects every datagram sent to it."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.received: list[str] = []

    def drain(self, seconds: float = 0.2) -> list[str]:
        """Collect what arrives within `seconds`; return everything received so far."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(65536).decode())
            except TimeoutError:
                break
        return self.received

    def wait_for(self, assignment: str, timeout: float = 30.0) -> bool:
        """Whether `assignment` arrives within `timeout` (the socket is read while waiting)."""
        return wait_until(
            lambda: any(assignment in message.splitlines() for message in self.drain(0.2)),
            timeout=timeout,
            interval=0,
        )


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield NotifySocket(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    name = f"referral-bridge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestNotifier:
    def test_ready_sends_ready_and_the_status_in_one_datagram(
        self, notify_socket: NotifySocket
    ) -> None:
        Notifier(notify_socket.address).ready("consuming q")

        assert notify_socket.drain() == ["READY=1\nSTATUS=consuming q"]

    def test_an_abstract_socket_named_with_an_at_sign_is_reached(
        self, abstract_socket: NotifySocket
    ) -> None:
        Notifier(abstract_socket.address).watchdog()

        assert abstract_socket.drain() == ["WATCHDOG=1"]

    def test_stopping_is_sent_once_however_often_it_is_asked(
        self, notify_socket: NotifySocket
    ) -> None:
        notifier = Notifier(notify_socket.address)

        notifier.stopping()
        notifier.stopping("again")

        assert notify_socket.drain() == ["STOPPING=1"]

    def test_a_status_is_flattened_to_one_line(self, notify_socket: NotifySocket) -> None:
        Notifier(notify_socket.address).status("two\nlines")

        assert notify_socket.drain() == ["STATUS=two lines"]

    def test_without_a_notify_socket_nothing_is_sent_and_nothing_fails(self) -> None:
        notifier = Notifier.from_environment({})

        assert not notifier.enabled
        assert notifier.ready() is False

    def test_a_vanished_socket_is_reported_as_not_sent_rather_than_raised(
        self, tmp_path: Path
    ) -> None:
        assert Notifier(str(tmp_path / "gone.sock")).watchdog() is False


class TestWatchdogInterval:
    def test_pings_are_due_at_half_the_watchdog_timeout(self) -> None:
        assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0

    def test_no_watchdog_usec_means_no_watchdog(self) -> None:
        assert watchdog_interval({}) == 0.0

    def test_a_watchdog_meant_for_another_process_is_ignored(self) -> None:
        env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}

        assert watchdog_interval(env, pid=4242) == 0.0

    def test_a_watchdog_meant_for_this_process_is_used(self) -> None:
        env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}

        assert watchdog_interval(env, pid=4242) == 2.0


class TestWatchdog:
    def test_beats_closer_together_than_the_interval_send_one_ping(
        self, notify_socket: NotifySocket
    ) -> None:
        clock = FakeMonotonic()
        watchdog = Watchdog(Notifier(notify_socket.address), 2.0, monotonic=clock)

        watchdog.beat()
        clock.now += 1.0
        watchdog.beat()

        assert notify_socket.drain() == ["WATCHDOG=1"]

    def test_a_beat_after_the_interval_sends_another_ping(
        self, notify_socket: NotifySocket
    ) -> None:
        clock = FakeMonotonic()
        watchdog = Watchdog(Notifier(notify_socket.address), 2.0, monotonic=clock)

        watchdog.beat()
        clock.now += 2.0
        watchdog.beat()

        assert notify_socket.drain() == ["WATCHDOG=1", "WATCHDOG=1"]

    def test_no_ping_is_sent_when_the_loop_does_not_come_round(
        self, notify_socket: NotifySocket
    ) -> None:
        """Pings come only from beats: nothing keeps a hung worker looking alive."""
        clock = FakeMonotonic()
        watchdog = Watchdog(Notifier(notify_socket.address), 0.05, monotonic=clock)
        watchdog.beat()
        notify_socket.drain()

        time.sleep(0.2)
        clock.now += 100.0

        assert notify_socket.drain() == ["WATCHDOG=1"]


class TestLoopTick:
    def test_the_first_tick_says_ready_before_the_first_watchdog_ping(
        self, notify_socket: NotifySocket
    ) -> None:
        notifier = Notifier(notify_socket.address)
        tick = LoopTick(
            scheduler=lambda: None,
            heartbeat=Heartbeat(),
            watchdog=Watchdog(notifier, 1.0),
            on_first=notifier.ready,
        )

        tick()
        tick()

        assert notify_socket.drain() == ["READY=1", "WATCHDOG=1"]

    def test_every_tick_runs_the_scheduler_and_beats_the_heartbeat(self) -> None:
        runs: list[int] = []
        heartbeat = Heartbeat()
        tick = LoopTick(
            scheduler=lambda: runs.append(1),
            heartbeat=heartbeat,
            watchdog=Watchdog(Notifier(None), 1.0),
            on_first=lambda: None,
        )

        tick()
        tick()

        assert (len(runs), heartbeat.age() is not None) == (2, True)


# --- the real worker -------------------------------------------------------------------------


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("referral-bridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "referral_bridge"]


def embedded_config(root: Path) -> Path:
    """A configuration on the embedded broker with its own keys, ledger and a free metrics port."""
    keys = make_keys(root / "keys")
    shutil.copy(POLICY_FILE, root / "policy.toml")
    providers = "".join(
        f'[providers.{provider}]\npublic_keys = "{path}"\n'
        for provider, path in keys.provider_public.items()
    )
    config = root / "referral-bridge.toml"
    config.write_text(
        '[bridge]\ndata_dir = "data"\npolicy_file = "policy.toml"\n'
        "scheduler_interval_seconds = 0.5\n\n"
        '[metrics]\nlisten = "127.0.0.1:0"\n\n'
        f'[keys]\nsigning_key = "{keys.bridge_private}"\n\n{providers}',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def worker_under_systemd(
    tmp_path: Path, notify_socket: NotifySocket
) -> Iterator[tuple[subprocess.Popen[bytes], NotifySocket, Path]]:
    """`referral-bridge run` with NOTIFY_SOCKET and a 1 s watchdog (pings every 0.5 s)."""
    config = embedded_config(tmp_path)
    log_path = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFERRAL_BRIDGE_")}
    env.update(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="1000000")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*cli_command(), "--log-json", "run", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield process, notify_socket, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def assignments(received: list[str]) -> list[str]:
    return [line.split("=", 1)[0] for message in received for line in message.splitlines()]


@pytest.mark.slow
class TestWorkerUnderSystemd:
    def test_the_worker_says_ready_once_consuming(
        self, worker_under_systemd: tuple[subprocess.Popen[bytes], NotifySocket, Path]
    ) -> None:
        _, notify, log_path = worker_under_systemd

        assert notify.wait_for("READY=1"), log_path.read_text()
        consuming = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert "transport.consuming" in [line.get("event") for line in consuming]

    def test_the_worker_pings_the_watchdog_repeatedly_while_consuming(
        self, worker_under_systemd: tuple[subprocess.Popen[bytes], NotifySocket, Path]
    ) -> None:
        _, notify, log_path = worker_under_systemd
        assert notify.wait_for("READY=1"), log_path.read_text()

        # The consumer's loop comes round about once a second when idle (drain timeout 1 s), so
        # a 0.5 s ping interval means a ping per loop: at least three in four seconds.
        notify.drain(4.0)

        after_ready = assignments(notify.received)
        after_ready = after_ready[after_ready.index("READY") :]
        assert after_ready.count("WATCHDOG") >= 3

    def test_sigterm_sends_stopping_and_the_worker_exits_cleanly(
        self, worker_under_systemd: tuple[subprocess.Popen[bytes], NotifySocket, Path]
    ) -> None:
        process, notify, log_path = worker_under_systemd
        assert notify.wait_for("READY=1"), log_path.read_text()

        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)

        assert notify.wait_for("STOPPING=1", timeout=2)
        assert code == 0
        assert assignments(notify.received).count("STOPPING") == 1
