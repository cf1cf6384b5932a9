"""Shared by the delivery tests: a throwaway PKI and the reference inbox on loopback.

No tests here (pytest collects none); the lead may move this to a non-test module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from referral_bridge.delivery import (
    DeliveryEngine,
    DeliveryPolicy,
    FallbackIssuer,
    HttpsRoute,
    Route,
)
from referral_bridge.delivery.amqp import AmqpRoute
from referral_bridge.ledger import Ledger
from referral_bridge.metrics import BridgeMetrics
from referral_bridge.provider.inbox import InboxStore, ReferralInbox
from referral_bridge.provider.inbox_app import InboxServer
from referral_bridge.runtime.http_server import ServerLimits
from tests.fakes import FakeClock, KeyMaterial, RecordingPublisher

pytestmark = pytest.mark.integration

LANCASHIRE = "lancashire-victim-services"
HOMICIDE = "homicide-service"


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server and a client certificate it issued, and a rogue server."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_server_cert: Path
    rogue_server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("Test Provider CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "127.0.0.1", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "referral-bridge", server=False)
    rogue_key, rogue_cert = _ca("Rogue CA")
    rogue_server_key, rogue_server_cert = _leaf(rogue_key, rogue_cert, "127.0.0.1", server=True)
    pem = serialization.Encoding.PEM
    files = {
        "ca_cert": ca_cert,
        "server_cert": server_cert,
        "client_cert": client_cert,
        "rogue_ca_cert": rogue_cert,
        "rogue_server_cert": rogue_server_cert,
    }
    paths: dict[str, Path] = {}
    for name, cert in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(cert.public_bytes(pem))
    for name, key in (
        ("server_key", server_key),
        ("client_key", client_key),
        ("rogue_server_key", rogue_server_key),
    ):
        paths[name] = directory / f"{name}.pem"
        _write_key(paths[name], key)
    return Pki(**paths)


class Faults:
    """What the inbox does instead of answering normally: a status, or a stall (for timeouts).

    Counts every request it sees, so a test can tell whether the bridge called at all.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.stall_seconds = 0.0
        self.chooser: Callable[[], int | None] | None = None
        self.requests = 0
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        with self._lock:
            self.requests += 1
        if self.stall_seconds:
            threading.Event().wait(self.stall_seconds)
        if self.chooser is not None:
            return self.chooser()
        return self.status


@dataclass
class Inbox:
    server: InboxServer
    store: InboxStore
    faults: Faults

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def running_inbox(
    pki: Pki,
    keys: KeyMaterial,
    provider: str,
    store_path: Path,
    *,
    client_ca: Path | None = None,
    rogue: bool = False,
    store_plaintext: bool = False,
    limits: ServerLimits | None = None,
) -> Iterator[Inbox]:
    store = InboxStore(store_path)
    faults = Faults()
    server = InboxServer(
        ReferralInbox(
            provider=provider,
            decryption_keys=keys.provider_keys(provider),
            verification_keys=keys.bridge_verification_keys(),
            store=store,
            store_plaintext=store_plaintext,
        ),
        certfile=pki.rogue_server_cert if rogue else pki.server_cert,
        keyfile=pki.rogue_server_key if rogue else pki.server_key,
        client_ca=client_ca,
        path="/referrals",
        fault=faults,
        limits=limits,
    )
    server.start()
    try:
        yield Inbox(server=server, store=store, faults=faults)
    finally:
        server.stop()
        store.close()


def https_route(
    pki: Pki, provider: str, url: str, *, client_cert: bool = False, read_timeout: float = 2.0
) -> HttpsRoute:
    return HttpsRoute.build(
        provider=provider,
        url=url,
        ca_bundle=pki.ca_cert,
        client_cert=pki.client_cert if client_cert else None,
        client_key=pki.client_key if client_cert else None,
        connect_timeout=1.0,
        read_timeout=read_timeout,
    )


#: Fast in-place retries, and a circuit that stays out of the way unless a test asks for it.
QUICK = DeliveryPolicy(
    attempts_in_place=2,
    in_place_initial_seconds=0.01,
    in_place_max_seconds=0.02,
    park_jitter=0.0,
    circuit_failures=1000,
)


def make_engine(
    ledger: Ledger,
    clock: FakeClock,
    publisher: RecordingPublisher,
    routes: dict[str, Route],
    policy: DeliveryPolicy = QUICK,
    *,
    monotonic: Callable[[], float] | None = None,
    fallbacks: FallbackIssuer,
    metrics: BridgeMetrics,
) -> DeliveryEngine:
    return DeliveryEngine(
        ledger=ledger,
        default_route=AmqpRoute(publisher),
        routes=routes,
        policy=policy,
        clock=clock.now,
        metrics=metrics,
        fallbacks=fallbacks,
        sleep=lambda _seconds: None,
        monotonic=monotonic or time.monotonic,
    )


class TricklingProvider:
    """An HTTPS provider on 127.0.0.1 that reads each request whole, then answers one byte per
    second for `seconds` (a status line, then an endless header), never finishing in time.

    httpx's read timeout applies to each read, so one byte a second never trips it.
    """

    def __init__(self, pki: Pki, *, seconds: float = 120.0) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self._seconds = seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        #: Requests read in full, and connections the client cut before the trickle ended.
        self.requests = 0
        self.cut_by_client = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/referrals"

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with self._context.wrap_socket(connection, server_side=True) as tls:
                tls.settimeout(10)
                self._read_request(tls)
                with self._lock:
                    self.requests += 1
                answer = b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"a" * int(self._seconds)
                for index in range(len(answer)):
                    tls.sendall(answer[index : index + 1])
                    if self._stop.wait(1.0):
                        return
        except (OSError, ssl.SSLError):
            with self._lock:
                self.cut_by_client += 1

    @staticmethod
    def _read_request(tls: ssl.SSLSocket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionResetError("client went away before its request was complete")
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionResetError("client went away before its request was complete")
            body += chunk


@contextmanager
def trickling_provider(pki: Pki, *, seconds: float = 120.0) -> Iterator[TricklingProvider]:
    provider = TricklingProvider(pki, seconds=seconds)
    try:
        yield provider
    finally:
        provider.close()
