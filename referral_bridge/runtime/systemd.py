"""Talking to systemd: the sd_notify protocol over $NOTIFY_SOCKET, and the service watchdog.

The protocol is a datagram of newline-separated `NAME=value` assignments sent to the AF_UNIX
socket named in $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace). Implemented here
with the standard library so the bridge needs no libsystemd binding. Outside systemd (no
$NOTIFY_SOCKET) every call does nothing, so the worker runs the same under a terminal or a test.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("referral_bridge.runtime.systemd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

#: systemd truncates STATUS= text it shows in `systemctl status`; keep ours short and one line.
_MAX_STATUS_CHARS = 200


def _socket_address(raw: str) -> str | None:
    """The address to send to, or None for a value this implementation cannot use."""
    if raw.startswith("@") and len(raw) > 1:
        # Linux abstract namespace: systemd writes a leading '@' for the leading NUL byte.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when not started by systemd with a socket.

    Send failures are logged, never raised: losing a status message must not stop the bridge
    (systemd then acts on the missing READY or WATCHDOG itself, which is the right outcome).
    """

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            log.warning(
                "systemd.notify_unsupported",
                detail="NOTIFY_SOCKET is neither a path nor an abstract socket; notifications "
                "are off, so a Type=notify unit will time out: use a systemd that offers an "
                "AF_UNIX notify socket",
            )
        self._stopping = False

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get(NOTIFY_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send `NAME=value` assignments in one datagram; True if systemd's socket took it."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("systemd.notify_failed", error_type=type(exc).__name__)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd marks the unit active and starts the watchdog."""
        return self.send("READY=1", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun; sent once, however many times it is asked for."""
        if self._stopping:
            return False
        self._stopping = True
        return self.send("STOPPING=1", *self._status(status))

    def watchdog(self) -> bool:
        """The service is alive: resets systemd's watchdog timer."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status for `systemctl status`; never personal data."""
        return self.send(*self._status(text))

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if not text:
            return ()
        return ("STATUS=" + " ".join(text.split())[:_MAX_STATUS_CHARS],)


def watchdog_interval(env: Mapping[str, str] | None = None, *, pid: int | None = None) -> float:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or 0.0 when there is no watchdog.

    Half the timeout is what sd_watchdog_enabled(3) recommends: one late ping is not fatal.
    $WATCHDOG_PID, when set, must name this process (the variable leaks to children otherwise).
    """
    env = os.environ if env is None else env
    raw_usec = env.get(WATCHDOG_USEC_ENV, "")
    raw_pid = env.get(WATCHDOG_PID_ENV, "")
    try:
        usec = int(raw_usec)
    except ValueError:
        return 0.0
    if usec <= 0:
        return 0.0
    if raw_pid:
        try:
            if int(raw_pid) != (os.getpid() if pid is None else pid):
                return 0.0
        except ValueError:
            return 0.0
    return usec / 2_000_000


class Watchdog:
    """Pings systemd's watchdog when the consumer loop comes round, at most once per interval.

    It is driven by the loop itself (`beat` from the idle callback), never by a timer thread: a
    thread would keep pinging while the worker hangs, which is exactly what the watchdog is for.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._interval = interval
        self._monotonic = monotonic
        self._next = 0.0

    @property
    def enabled(self) -> bool:
        return self._interval > 0 and self._notifier.enabled

    @property
    def interval(self) -> float:
        return self._interval

    def beat(self) -> None:
        if not self.enabled:
            return
        now = self._monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        self._notifier.watchdog()
