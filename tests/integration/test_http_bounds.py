"""The provider inbox and the health endpoint under slow and many clients (issue 10, finding 1).

What the review did to the ThreadingHTTPServer versions, done again: a client trickling a byte a
second, hundreds of idle half-sent requests, and more connections than the process has file
descriptors. Each slow client is cut off within the deadline, a legitimate request is served
meanwhile, the connection cap keeps the process clear of its descriptor limit, and when the limit
is hit anyway accepting backs off instead of spinning. Limits on header and body size and an
unparseable Content-Length get answers, not dropped connections.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from referral_bridge.provider.inbox import MAX_BODY_BYTES
from referral_bridge.runtime.health import CheckResult, HealthServer, Readiness
from referral_bridge.runtime.http_server import ServerLimits
from tests.e2e.helpers import worker_environment
from tests.e2e.test_inbox_cli import free_port, inbox_command, referral_event
from tests.fakes import KeyMaterial, make_keys
from tests.integration.test_delivery_helpers import (
    LANCASHIRE,
    Inbox,
    Pki,
    make_pki,
    running_inbox,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The deadline the servers here are given: short, so the tests are quick.
DEADLINE = 2.0
#: A trickler sends at most this many bytes, one a second, before the test calls it a failure:
#: far beyond the deadline, far short of the minutes the old server allowed.
TRICKLE_BYTES = 60
#: How long a legitimate client waits for its answer; generous, for a loaded machine.
PATIENCE = 60.0
#: Idle connections in the flood that stays under the cap: the old health server held a thread
#: for each of them for good.
FLOOD = 300
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Target:
    """A running server, how to open a raw connection to it, and one legitimate request."""

    name: str
    port: int
    tls: ssl.SSLContext | None
    #: The start of a request that never finishes.
    half_request: bytes
    legitimate: Callable[[], int]
    expected_status: int

    def connect(self, timeout: float = 10.0) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return raw
        return self.tls.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, KeyMaterial, Path]:
    folder = tmp_path_factory.mktemp("bounds")
    return make_pki(folder / "pki"), make_keys(folder / "keys"), folder


def post_referral(url: str, pki: Pki, keys: KeyMaterial) -> int:
    referral_id = f"r-{uuid.uuid4().hex[:12]}"
    with httpx.Client(
        verify=ssl.create_default_context(cafile=pki.ca_cert), timeout=PATIENCE
    ) as client:
        response = client.post(
            url,
            content=referral_event(keys, referral_id),
            headers={
                "Content-Type": "application/cloudevents+json",
                "Idempotency-Key": referral_id,
            },
        )
    return response.status_code


def get_healthz(port: int) -> int:
    with httpx.Client(timeout=PATIENCE) as client:
        return client.get(f"http://127.0.0.1:{port}/healthz").status_code


LIMITS = ServerLimits(request_seconds=DEADLINE, handshake_seconds=DEADLINE, max_connections=512)


def inbox_as_target(inbox: Inbox, pki: Pki, keys: KeyMaterial) -> Target:
    return Target(
        name="inbox",
        port=inbox.server.port,
        tls=ssl.create_default_context(cafile=pki.ca_cert),
        half_request=b"POST /referrals HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        legitimate=lambda: post_referral(inbox.url, pki, keys),
        expected_status=201,
    )


@pytest.fixture(scope="module")
def inbox_target(material: tuple[Pki, KeyMaterial, Path]) -> Iterator[Target]:
    pki, keys, folder = material
    with running_inbox(pki, keys, LANCASHIRE, folder / "inbox.sqlite3", limits=LIMITS) as inbox:
        yield inbox_as_target(inbox, pki, keys)


@pytest.fixture(scope="module")
def health_target() -> Iterator[Target]:
    server = HealthServer(
        host="127.0.0.1",
        port=0,
        registry=CollectorRegistry(),
        readiness=Readiness({"always": lambda: CheckResult(True, "fine")}),
        limits=LIMITS,
    )
    server.start()
    try:
        yield Target(
            name="health",
            port=server.port,
            tls=None,
            half_request=b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            legitimate=lambda: get_healthz(server.port),
            expected_status=200,
        )
    finally:
        server.stop()


@pytest.fixture(params=["inbox", "health"])
def target(request: pytest.FixtureRequest) -> Target:
    chosen: Target = request.getfixturevalue(f"{request.param}_target")
    return chosen


def closed_by_server(sock: socket.socket) -> bool:
    """Waits up to the socket's timeout for the server to close it; True when it has."""
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return False
    except OSError:  # reset, broken pipe, a TLS connection cut short
        return True
    return data == b""


def trickle(sock: socket.socket, pieces: Iterator[bytes]) -> bool:
    """Send one piece a second until the server cuts the connection (True) or pieces run out."""
    sock.settimeout(1.0)  # the trickle's pace: each wait for the server's close is a second
    for piece in pieces:
        try:
            sock.sendall(piece)
        except OSError:
            return True
        if closed_by_server(sock):
            return True
    return False


def trickled(target: Target, phase: str) -> Iterator[bytes]:
    if phase == "idle":
        return (b"" for _ in range(TRICKLE_BYTES))
    if phase == "headers":
        head = target.half_request + b"X-Slow: " + b"a" * TRICKLE_BYTES
        return (head[i : i + 1] for i in range(len(head)))
    head = target.half_request + b"Content-Length: 1000\r\n\r\n"
    return iter([head, *(b"x" for _ in range(TRICKLE_BYTES))])


@pytest.mark.parametrize("phase", ["idle", "headers", "body"])
def test_a_client_trickling_a_byte_a_second_is_cut_off_while_others_are_served(
    target: Target, phase: str
) -> None:
    sock = target.connect()
    outcome: list[bool] = []
    trickler = threading.Thread(
        target=lambda: outcome.append(trickle(sock, trickled(target, phase)))
    )
    trickler.start()
    try:
        assert target.legitimate() == target.expected_status
    finally:
        trickler.join(timeout=TRICKLE_BYTES * 3)
        sock.close()

    assert outcome == [True], f"the {target.name} kept a {phase} trickle for {TRICKLE_BYTES} s"


def test_hundreds_of_idle_half_sent_requests_are_cut_off_and_a_legitimate_one_served(
    target: Target,
) -> None:
    flood = []
    try:
        for _ in range(FLOOD):
            sock = target.connect()
            sock.sendall(target.half_request)
            flood.append(sock)

        assert target.legitimate() == target.expected_status

        for sock in flood:
            sock.settimeout(0.2)
        still_open = list(flood)

        def all_cut() -> bool:
            still_open[:] = [sock for sock in still_open if not closed_by_server(sock)]
            return not still_open

        assert wait_until(all_cut, timeout=120, interval=0), f"{len(still_open)} still held"
    finally:
        for sock in flood:
            sock.close()


def status_of(target: Target, request: bytes) -> int:
    """The status a raw request is answered with; 0 when the connection is dropped unanswered."""
    with target.connect() as sock:
        sock.settimeout(PATIENCE)
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def test_an_unparseable_content_length_is_answered_400(target: Target) -> None:
    request = target.half_request + "Content-Length: ²\r\n\r\n".encode()

    assert status_of(target, request) == 400


def test_headers_past_the_limit_are_answered_400(target: Target) -> None:
    # Unfinished headers past the limit: what a client growing them without end sends.
    request = target.half_request + b"X-Big: " + b"a" * (LIMITS.max_header_bytes + 1)

    assert status_of(target, request) == 400


def test_a_body_past_the_limit_is_answered_413_before_it_is_sent(inbox_target: Target) -> None:
    request = inbox_target.half_request + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()

    assert status_of(inbox_target, request) == 413


def test_a_post_without_content_length_is_answered_411(inbox_target: Target) -> None:
    request = inbox_target.half_request + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"

    assert status_of(inbox_target, request) == 411


# --- a process with few file descriptors -------------------------------------------------------


#: Lowers the open-file limit, then becomes the command (no preexec_fn: pytest has threads).
_WITH_DESCRIPTORS = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, "
    "(int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def with_descriptors(count: int, command: list[str]) -> list[str]:
    return [sys.executable, "-c", _WITH_DESCRIPTORS, str(count), *command]


@dataclass
class Process:
    """A server in a subprocess: its port, its log, and its CPU time so far."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_count(self, event: str) -> int:
        return self.log.read_text().count(f'"{event}"')


def start_inbox(
    material: tuple[Pki, KeyMaterial, Path], descriptors: int, *extra: str
) -> tuple[Process, Target]:
    pki, keys, folder = material
    port = free_port()
    log = folder / f"inbox-{port}.log"
    store = folder / f"inbox-{port}.sqlite3"
    command = [
        *inbox_command(pki, keys, port, store),
        "--request-deadline",
        str(DEADLINE),
        *extra,
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(
            with_descriptors(descriptors, command),
            env=worker_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )
    running = Process(process, port, log)
    assert wait_until(lambda: running.log_count("inbox.listening") == 1, timeout=30), (
        log.read_text()
    )
    url = f"https://127.0.0.1:{port}/referrals"
    return running, Target(
        name="inbox",
        port=port,
        tls=ssl.create_default_context(cafile=pki.ca_cert),
        # Raw connections that never start TLS: each sits in the handshake.
        half_request=b"",
        legitimate=lambda: post_referral(url, pki, keys),
        expected_status=201,
    )


def start_health(folder: Path, descriptors: int, max_connections: int) -> tuple[Process, Target]:
    log = folder / f"health-{uuid.uuid4().hex[:8]}.log"
    with log.open("w") as sink:
        command = [sys.executable, "-m", "tests.integration.serve_health", str(DEADLINE)]
        process = subprocess.Popen(
            with_descriptors(descriptors, [*command, str(max_connections)]),
            cwd=REPO,
            env=worker_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    return Process(process, port, log), Target(
        name="health",
        port=port,
        tls=None,
        half_request=b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        legitimate=lambda: get_healthz(port),
        expected_status=200,
    )


def open_flood(target: Target, count: int) -> list[socket.socket]:
    """`count` connections that send at most half a request; the kernel queues what the server
    has not accepted, so each connect returns at once."""
    flood = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", target.port), timeout=10)
        if target.half_request:
            sock.sendall(target.half_request)
        flood.append(sock)
    return flood


@contextlib.contextmanager
def stopped_at_end(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.process.terminate()
        process.process.wait(timeout=30)
        for pipe in (process.process.stdin, process.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("name", ["inbox", "health"])
def test_more_connections_than_descriptors_stay_under_the_cap_and_a_legitimate_one_is_served(
    material: tuple[Pki, KeyMaterial, Path], name: str
) -> None:
    # 128 descriptors: the default cap is 64 connections, and 180 connect.
    if name == "inbox":
        process, target = start_inbox(material, 128)
    else:
        process, target = start_health(material[2], 128, max_connections=64)
    with stopped_at_end(process):
        flood = open_flood(target, 180)
        try:
            assert target.legitimate() == target.expected_status
        finally:
            for sock in flood:
                sock.close()

        assert process.log_count("http.accept_backoff") == 0, process.log.read_text()[-2000:]
        assert process.process.poll() is None


@pytest.mark.parametrize("name", ["inbox", "health"])
def test_out_of_descriptors_accepting_backs_off_instead_of_spinning(
    material: tuple[Pki, KeyMaterial, Path], name: str
) -> None:
    # 64 descriptors and a cap far above them: accept() runs into EMFILE.
    if name == "inbox":
        process, target = start_inbox(material, 64, "--max-connections", "1000")
    else:
        process, target = start_health(material[2], 64, max_connections=1000)
    with stopped_at_end(process):
        cpu_before, started = process.cpu_seconds(), time.monotonic()
        flood = open_flood(target, 150)
        try:
            assert wait_until(lambda: process.log_count("http.accept_backoff") > 0, timeout=30)
            assert target.legitimate() == target.expected_status
        finally:
            for sock in flood:
                sock.close()
        cpu, elapsed = process.cpu_seconds() - cpu_before, time.monotonic() - started

        # A second's pause per back-off: a spinning loop would log thousands, and burn a core.
        assert process.log_count("http.accept_backoff") <= elapsed + 2
        assert cpu < 0.5 * elapsed, f"{cpu:.1f} s of CPU in {elapsed:.1f} s"


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_stopping_mid_flood_leaves_no_socket_open(material: tuple[Pki, KeyMaterial, Path]) -> None:
    pki, keys, folder = material
    with running_inbox(pki, keys, LANCASHIRE, folder / "stopped.sqlite3") as inbox:
        inbox.server.stop()
        before = open_descriptors()
        inbox.server.start()
        target = inbox_as_target(inbox, pki, keys)
        # Established connections with half a request, then raw ones still in their handshake.
        flood = [target.connect() for _ in range(20)]
        for sock in flood:
            sock.sendall(target.half_request)
        flood += open_flood(replace(target, half_request=b""), 100)

        inbox.server.stop()
        for sock in flood:
            sock.close()

        assert open_descriptors() == before
