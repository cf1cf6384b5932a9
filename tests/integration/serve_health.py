"""Runs a HealthServer alone, for tests that flood it in a process with few file descriptors.

`python -m tests.integration.serve_health DEADLINE MAX_CONNECTIONS` prints the port it listens
on (127.0.0.1, chosen by the kernel), logs JSON lines to stderr, and serves until stdin closes.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from referral_bridge.logging import configure_logging
from referral_bridge.runtime.health import CheckResult, HealthServer, Readiness
from referral_bridge.runtime.http_server import ServerLimits


def main(argv: list[str]) -> None:
    deadline, max_connections = float(argv[0]), int(argv[1])
    configure_logging(json=True)
    server = HealthServer(
        host="127.0.0.1",
        port=0,
        registry=CollectorRegistry(),
        readiness=Readiness({"always": lambda: CheckResult(True, "fine")}),
        limits=ServerLimits(
            request_seconds=deadline, handshake_seconds=deadline, max_connections=max_connections
        ),
    )
    server.start()
    print(server.port, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
