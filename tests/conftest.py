"""Fixtures every layer of tests shares, and the Hypothesis profiles (`--hypothesis-profile`).

The service fixtures take `layer` from the nearer conftest or module: unit tests wire the
service on an in-memory ledger with a recording sealer, integration tests on each ledger
backend with real keys. Nothing here connects to a broker or a database.
"""

from __future__ import annotations

import pytest

from referral_bridge.bootstrap import ServiceLayer
from referral_bridge.service.handler import ReferralService
from referral_bridge.service.holds import HoldExpiry
from referral_bridge.service.scheduled import ScheduledWork
from tests import profiles as _profiles  # noqa: F401  (registration is the import's effect)
from tests.fakes import START, FakeClock, RecordingPublisher


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def service(layer: ServiceLayer) -> ReferralService:
    return layer.service


@pytest.fixture
def holds(layer: ServiceLayer) -> HoldExpiry:
    return layer.holds


@pytest.fixture
def scheduled(layer: ServiceLayer) -> ScheduledWork:
    return layer.scheduled
