"""The long-running worker: consume, run the hold scheduler, flush the outbox, stop cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import structlog

from referral_bridge.bootstrap import Bridge
from referral_bridge.scheduler import Scheduler
from referral_bridge.transport.consumer import Consumer

log = structlog.get_logger("referral_bridge.worker")


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the worker to stop after the message in hand."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("worker.stopping", reason=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def run(bridge: Bridge, stop: threading.Event) -> None:
    """Consume until `stop` is set; publish everything left in the outbox before returning."""
    settings = bridge.settings
    if bridge.broker.embedded:
        log.warning(
            "broker.embedded",
            detail="using the embedded broker under the data directory: for trying the bridge "
            "only, not for production (a crash loses in-flight messages; no publisher confirms)",
            path=str(settings.data_dir),
        )
    # Crash recovery: whatever an earlier run committed but did not publish goes out first.
    recovered = bridge.service.flush()
    log.info(
        "worker.started",
        transport="embedded" if bridge.broker.embedded else "amqp",
        queue=bridge.topology.work_queue,
        count=recovered,
    )
    consumer = Consumer(
        bridge.broker,
        bridge.topology,
        handler=bridge.service.handle,
        publisher=bridge.publisher,
        prefetch=settings.broker.prefetch,
        idle_callback=Scheduler(bridge, interval=settings.bridge.scheduler_interval_seconds),
        on_dead_lettered=bridge.count_dead_letter,
    )
    consumer.run(stop)
    flushed = bridge.service.flush()
    log.info("worker.stopped", count=flushed)
