"""A provider trickling its answer a byte a second cannot hold a delivery attempt past its
deadline (issue 10, finding 2: one attempt stayed busy for 42 s with connect 1 s + read 2 s).

Against a real HTTPS server on 127.0.0.1; the worker-level proof (it keeps processing and keeps
feeding the systemd watchdog meanwhile) is tests/e2e/test_trickling_provider.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from referral_bridge.delivery import HttpsRoute
from referral_bridge.delivery.errors import TransientDeliveryError
from referral_bridge.ledger import OutboxMessage
from tests.integration.test_delivery_helpers import (
    LANCASHIRE,
    Pki,
    TricklingProvider,
    make_pki,
    trickling_provider,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

#: Far longer than any deadline here: an attempt that lasts it was not cut.
TRICKLE_SECONDS = 120.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def trickler(pki: Pki) -> Iterator[TricklingProvider]:
    with trickling_provider(pki, seconds=TRICKLE_SECONDS) as provider:
        yield provider


def message() -> OutboxMessage:
    return OutboxMessage(
        message_id="r-1",
        event_id="e-1",
        kind="referral",
        exchange="victim-services.referrals",
        routing_key=LANCASHIRE,
        headers={},
        body=b'{"specversion":"1.0"}',
        provider=LANCASHIRE,
    )


def route(pki: Pki, url: str) -> HttpsRoute:
    return HttpsRoute.build(
        provider=LANCASHIRE,
        url=url,
        ca_bundle=pki.ca_cert,
        connect_timeout=1.0,
        read_timeout=2.0,
    )


def test_a_trickled_answer_ends_the_attempt_at_its_deadline(
    pki: Pki, trickler: TricklingProvider
) -> None:
    https = route(pki, trickler.url)
    try:
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError) as caught:
            https.deliver(message())
        elapsed = time.monotonic() - started
    finally:
        https.close()

    assert caught.value.code == "timeout"
    assert "deadline of 3 s" in str(caught.value)
    # The deadline is 3 s; the trickle lasts 120 s. The bound is loose for a loaded machine.
    assert trickler.requests == 1
    assert elapsed < TRICKLE_SECONDS / 4


def test_the_abandoned_connection_is_cut_not_left_trickling(
    pki: Pki, trickler: TricklingProvider
) -> None:
    https = route(pki, trickler.url)
    try:
        with pytest.raises(TransientDeliveryError):
            https.deliver(message())
        # The provider's next write fails: the bridge shut the socket down at the deadline.
        assert wait_until(lambda: trickler.cut_by_client == 1, timeout=30)
    finally:
        https.close()


def test_the_next_attempt_gets_its_own_deadline(pki: Pki, trickler: TricklingProvider) -> None:
    https = route(pki, trickler.url)
    try:
        for _ in range(2):
            with pytest.raises(TransientDeliveryError):
                https.deliver(message())
            # Once the first attempt's thread has ended, the route tries again.
            assert wait_until(lambda: trickler.cut_by_client >= 1, timeout=30)
        assert wait_until(lambda: trickler.requests == 2, timeout=30)
    finally:
        https.close()
