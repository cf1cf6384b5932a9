"""Process faults: the worker SIGKILLed mid-run and restarted, as systemd would."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import BridgeFactory
from tests.faults.harness import assert_nothing_lost, run_with_faults

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_worker_killed_and_restarted(make_bridge: BridgeFactory) -> None:
    env = make_bridge()
    worker = env.worker()

    def crash(_: int) -> None:
        worker.kill()
        worker.start()

    result = run_with_faults("worker: SIGKILL, restarted", env, [worker], crash)
    # The kills' exit codes are recorded on the worker; the final stop must be clean.
    assert_nothing_lost(result)
