"""A provider trickling its answers a byte a second does not stall the worker (issue 10,
finding 2): each attempt ends at its deadline (connect 1 s + read 2 s), every event is
processed, and the systemd watchdog keeps being fed within its timeout throughout.

The real `referral-bridge run` on RabbitMQ, with NOTIFY_SOCKET and WATCHDOG_USEC set as systemd
sets them, every provider delivering by HTTPS to a trickling server on 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BridgeFactory
from tests.e2e.helpers import crime_event, new_ref
from tests.integration.test_delivery_helpers import (
    TricklingProvider,
    make_pki,
    trickling_provider,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: systemd's watchdog timeout for the test worker; it pings every half of it.
WATCHDOG_SECONDS = 15.0
EVENTS = 3


class NotifyListener:
    """The socket systemd would listen on, recording when each message arrived."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._sock.recv(65536).decode()
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), message))

    def pings(self) -> list[float]:
        return [at for at, message in list(self.received) if "WATCHDOG=1" in message.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def trickler(tmp_path: Path) -> Iterator[TricklingProvider]:
    with trickling_provider(make_pki(tmp_path / "pki"), seconds=300.0) as provider:
        yield provider


def test_a_trickling_provider_neither_stalls_the_worker_nor_starves_the_watchdog(
    make_bridge: BridgeFactory,
    trickler: TricklingProvider,
    notify: NotifyListener,
    tmp_path: Path,
) -> None:
    env = make_bridge(scheduler_interval=0.5)
    https = (
        'delivery = "https"\n'
        f'url = "{trickler.url}"\n'
        f'ca_bundle = "{tmp_path / "pki" / "ca_cert.pem"}"\n'
        "connect_timeout_seconds = 1.0\n"
        "read_timeout_seconds = 2.0\n"
    )
    config = env.config.read_text(encoding="utf-8")
    env.config.write_text(
        re.sub(r'(?m)^(public_keys = "[^"]+"\n)', lambda m: m.group(1) + https, config),
        encoding="utf-8",
    )
    worker = env.worker()
    worker.env.update(
        NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(int(WATCHDOG_SECONDS * 1_000_000))
    )
    worker.start()
    assert wait_until(lambda: any("READY=1" in m for _, m in notify.received), timeout=60), (
        worker.log_text()
    )

    env.publish(
        *(
            crime_event(crime_ref=new_ref(), victim_id=f"V-{n}", consent="given")
            for n in range(EVENTS)
        )
    )
    assert wait_until(lambda: trickler.requests >= 1, timeout=60), worker.log_text()
    started = time.monotonic()

    # Each event's referral gets one attempt, cut at 3 s: the worker goes on to the next one.
    # (With group commit the events of a batch are recorded first, then their referrals tried.)
    assert wait_until(lambda: env.processed_count() == EVENTS, timeout=60), worker.log_text()
    assert wait_until(lambda: trickler.requests >= EVENTS, timeout=60), worker.log_text()
    assert trickler.requests == EVENTS
    # Watch the watchdog for a while longer than its timeout, through and after those attempts.
    wait_until(lambda: time.monotonic() - started > 1.2 * WATCHDOG_SECONDS, timeout=60)
    ended = time.monotonic()

    pings = [at for at in notify.pings() if started <= at <= ended]
    gaps = [b - a for a, b in zip([started, *pings], [*pings, ended], strict=True)]
    assert len(pings) >= 2
    assert max(gaps) < WATCHDOG_SECONDS, gaps
    assert worker.running
    worker.terminate()
