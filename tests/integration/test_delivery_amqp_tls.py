"""TLS to a provider-facing broker: the certificate must chain to `broker_ca_bundle` and name the
URL's host. The "broker" is a TLS listener on loopback that records whether the bridge completed
a handshake with it (it speaks no AMQP, so every publish then fails as unreachable)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from referral_bridge.delivery.amqp import ReferralsBrokerPublisher, tls_options
from referral_bridge.transport.errors import BrokerUnavailableError
from tests.integration.test_delivery_helpers import _ca, _leaf

pytestmark = pytest.mark.integration

EXCHANGE = "victim-services.referrals"


class TlsListener:
    """Accepts connections on loopback and notes each handshake's outcome."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        self._context = context
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(5)
        self.port = int(self._socket.getsockname()[1])
        self.handshakes: list[bool] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            connection, _ = self._socket.accept()
        except OSError:
            return
        with connection:
            try:
                with self._context.wrap_socket(connection, server_side=True):
                    self.handshakes.append(True)
            except (ssl.SSLError, OSError):
                self.handshakes.append(False)

    @contextmanager
    def running(self) -> Iterator[TlsListener]:
        self._thread.start()
        try:
            yield self
        finally:
            self._thread.join(timeout=5)
            self._socket.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("amqps")
    ca_key, ca_cert = _ca("Provider Broker CA")
    right_key, right_cert = _leaf(ca_key, ca_cert, "127.0.0.1", server=True)  # 127.0.0.1 SAN
    files: dict[str, Path] = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # Issued by the trusted CA, but for another host only.
    wrong_key, wrong_cert = _other_host_leaf(ca_key, ca_cert)
    for name, key, cert in (("right", right_key, right_cert), ("wrong", wrong_key, wrong_cert)):
        files[f"{name}_cert"] = folder / f"{name}.pem"
        files[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = folder / f"{name}.key"
        files[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def _other_host_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other.example")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def publish_once(port: int, ca: Path) -> None:
    publisher = ReferralsBrokerPublisher(
        f"amqps://guest:guest@127.0.0.1:{port}//", exchange=EXCHANGE, ca_bundle=ca
    )
    try:
        with pytest.raises(BrokerUnavailableError):
            publisher.publish(
                exchange=EXCHANGE,
                routing_key="lancashire-victim-services",
                body=b"{}",
                headers={},
                message_id="m-1",
                content_type="application/cloudevents+json",
                mandatory=True,
            )
    finally:
        publisher.close()


class TestProviderBrokerTls:
    def test_a_certificate_from_the_configured_ca_for_the_host_is_accepted(
        self, pki: dict[str, Path]
    ) -> None:
        with TlsListener(pki["right_cert"], pki["right_key"]).running() as broker:
            publish_once(broker.port, pki["ca"])

        assert broker.handshakes == [True]

    def test_a_certificate_from_the_configured_ca_for_another_host_is_refused(
        self, pki: dict[str, Path]
    ) -> None:
        with TlsListener(pki["wrong_cert"], pki["wrong_key"]).running() as broker:
            publish_once(broker.port, pki["ca"])

        assert broker.handshakes == [False]

    def test_amqps_options_check_the_host_name_against_the_urls_host(self) -> None:
        options = tls_options("amqps://bridge@broker.provider.example:5671/", ca_bundle=None)

        assert options == {
            "context": {"check_hostname": True},
            "server_hostname": "broker.provider.example",
        }
