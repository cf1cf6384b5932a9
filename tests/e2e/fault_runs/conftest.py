"""The fault suite (issue 9): real workers under broker, ledger and process faults.

Every scenario runs the same workload (tests/faults/harness.py) and checks the same promises:
every valid event's referral reaches the provider's queue (at least once), nothing valid is
dead-lettered, every bad message is, and the workers stop cleanly afterwards. The results table
is printed at the end of the session; `make chaos` runs the long version. One file per kind
of fault, so that `make test`'s parallel run (a process per file) spreads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import RABBITMQ_URL
from tests.faults.disk import SmallDisk
from tests.faults.harness import LONG
from tests.faults.proxy import FaultProxy


@pytest.fixture
def broker_proxy() -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(RABBITMQ_URL).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def ledger_proxy(postgres_ledger_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy.for_url(postgres_ledger_url).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs to fill up. Ask for it before `make_bridge`, so that the workers are stopped
    before it is unmounted (it is unmounted lazily otherwise)."""
    disk = SmallDisk(tmp_path / "small-disk", size_bytes=(256 if LONG else 64) << 20).mount()
    try:
        yield disk
    finally:
        disk.unmount()
