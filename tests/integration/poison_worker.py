"""A worker whose handler dies with its process, for the poison-message test on a classic queue.

`python -m tests.integration.poison_worker AMQP_URL WORK_QUEUE LEDGER_URL CALLS_FILE` consumes
the test's work queue (its other names derived as unique_topology derives them) with at most 3
attempts, counting redeliveries in the ledger. Each message it is handed is noted in CALLS_FILE,
then the process kills itself with SIGKILL, as the OOM killer would: nothing is settled. It
exits 0 once the queue has stayed empty for a second (the message went to the dead letters).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from referral_bridge.core.retry import RetryPolicy
from referral_bridge.ledger import Ledger
from referral_bridge.transport import (
    Consumer,
    InboundMessage,
    Publisher,
    Topology,
    Verdict,
    broker_spec,
)


def main(argv: list[str]) -> None:
    url, work_queue, ledger_url, calls = argv[0], argv[1], argv[2], Path(argv[3])
    tag = work_queue.removesuffix(".referral-bridge.events")
    topology = Topology(
        inbound_exchange=f"{tag}.police.events",
        work_queue=work_queue,
        referrals_exchange=f"{tag}.victim-services.referrals",
        outcomes_exchange=f"{tag}.victim-services.outcomes",
        tasks_exchange=f"{tag}.officer.tasks",
        dead_letter_queue=f"{tag}.referral-bridge.dead-letter",
    )
    spec = broker_spec(url, calls.parent)
    ledger = Ledger.open(ledger_url)

    def die(message: InboundMessage) -> Verdict:
        with calls.open("a") as noted:
            noted.write(f"{message.attempts}\n")
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    last_busy = [time.monotonic()]
    stop = threading.Event()

    def idle() -> None:
        if time.monotonic() - last_busy[0] > 1.0:
            stop.set()

    publisher = Publisher(spec, topology)
    consumer = Consumer(
        spec,
        topology,
        handler=die,
        publisher=publisher,
        idle_callback=idle,
        drain_timeout=0.2,
        retry_policy=RetryPolicy(
            max_attempts=3, first_delay=timedelta(seconds=1), longest_delay=timedelta(seconds=1)
        ),
        count_redelivery=ledger.count_redelivery,
    )
    try:
        consumer.run(stop)
    finally:
        publisher.close()
        ledger.dispose()


if __name__ == "__main__":
    main(sys.argv[1:])
