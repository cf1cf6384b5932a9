# mypy: disallow-untyped-calls=False
# kombu ships py.typed but leaves most functions unannotated; calling them is this module's job.
"""Which broker to talk to: RabbitMQ over AMQP, or the embedded filesystem broker by default.

The embedded broker is kombu's filesystem transport, with every queue a folder of files under
DATA_DIR/broker. It lets the bridge run with no server at all, for demos and a single worker.
Measured limits that shape the rest of the transport layer:

- a message is removed from disk when it is fetched, not when it is acked: a crash (not a clean
  stop, which puts unacked messages back) loses the message in hand;
- it never dead-letters, and it has no publisher confirms: `publish` returns once the file is
  written;
- exchange types and bindings are held in the memory of the process that declared them, so the
  Publisher declares the topology itself and `publish_inbound` writes straight to the work queue;
- every fetch lists and sorts the queue folder, so it slows as a queue grows, and the order of
  messages is not guaranteed across machine restarts;
- kombu's own `_put` creates a message's file empty and then writes it, and a fetch takes any
  file it sees without a lock: one taken in between is read empty, deleted and lost. Our channel
  (`_AtomicChannel`) writes under a name fetches skip and renames the finished file into place.

Use RabbitMQ for anything that must not lose messages or runs several workers.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from kombu.connection import Connection
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from referral_bridge.display import mask_url
from referral_bridge.files import private_dir
from referral_bridge.transport.errors import TransportConfigError

EMBEDDED_URL = "filesystem://"

_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
_EMBEDDED_SCHEMES = frozenset({"filesystem", "embedded"})

#: How often the embedded consumer looks for new files, in seconds. Short enough that a demo
#: feels immediate, long enough that an idle worker does not spin on listdir.
_EMBEDDED_POLL_SECONDS = 0.1

#: Seconds to wait for a TCP connection to RabbitMQ before treating it as unreachable.
_CONNECT_TIMEOUT_SECONDS = 10.0


class _AtomicChannel(filesystem.Channel):
    """kombu's filesystem channel, with each message file complete before any reader can see it."""

    # kombu names the argument "payload" here and "message" in the base class: keep its own.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name kombu gives (its monotonic milliseconds order a queue); the file is written as
        # ".NAME.partial", which a fetch skips (it takes names whose text after the first dot is
        # "QUEUE.msg"), and renamed in one step.
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class _AtomicFilesystemTransport(filesystem.Transport):
    Channel = _AtomicChannel


@dataclass(frozen=True, kw_only=True)
class BrokerSpec:
    """How to reach the broker, and what it can promise. Connects nothing until asked."""

    url: str = field(repr=False)  # may hold a password; use `display_url` in logs
    transport_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    supports_confirms: bool
    embedded: bool
    data_folders: tuple[Path, ...] = ()

    @property
    def display_url(self) -> str:
        """The URL with any password and secret query value masked, fit for logs and errors."""
        return mask_url(self.url)

    def connection(self, *, heartbeat: float = 0) -> Connection:
        """A new, not yet connected kombu Connection; creates the embedded folders if needed.

        `heartbeat` (seconds, AMQP only) asks RabbitMQ for heartbeats, so that a half-open
        connection is noticed; whoever asks must call `heartbeat_check()` about once a second,
        or RabbitMQ closes the connection. Short-lived connections leave it at 0.
        """
        for folder in self.data_folders:
            # Message files hold whole events; they are created 0600 under cli's umask 077.
            private_dir(folder)
        return Connection(
            self.url,
            transport=_AtomicFilesystemTransport if self.embedded else None,
            transport_options=dict(self.transport_options),
            connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            heartbeat=0 if self.embedded else heartbeat,
        )


def embedded_broker_spec(data_dir: Path) -> BrokerSpec:
    """The embedded filesystem broker keeping its queues under `data_dir`/broker."""
    queue_folder = data_dir / "broker" / "queue"
    control_folder = data_dir / "broker" / "control"
    options = {
        # One folder for both directions: what any process writes, any process reads.
        "data_folder_in": str(queue_folder),
        "data_folder_out": str(queue_folder),
        # Kombu would otherwise write binding tables to ./control in the working directory.
        "control_folder": str(control_folder),
        "store_processed": False,
        "polling_interval": _EMBEDDED_POLL_SECONDS,
    }
    return BrokerSpec(
        url=EMBEDDED_URL,
        transport_options=MappingProxyType(options),
        supports_confirms=False,
        embedded=True,
        data_folders=(queue_folder, control_folder),
    )


def broker_spec(url: str | None, data_dir: Path) -> BrokerSpec:
    """The broker the settings ask for: RabbitMQ for an amqp:// URL, else the embedded broker.

    Raises TransportConfigError for any other kind of URL, so a typo cannot silently fall back
    to a broker that loses messages on a crash.
    """
    if url is None or not url.strip():
        return embedded_broker_spec(data_dir)
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme in _EMBEDDED_SCHEMES:
        return embedded_broker_spec(data_dir)
    if scheme in _AMQP_SCHEMES:
        try:
            Connection(url.strip())  # parses only; kombu refuses query parameters it does not know
        except (TypeError, ValueError):
            raise TransportConfigError(
                f"the broker URL {mask_url(url.strip())} cannot be used: a query parameter is "
                "not one kombu knows (e.g. heartbeat, ssl); put the password in the user part"
            ) from None
        return BrokerSpec(
            url=url.strip(),
            # Every publish then waits for the broker's ack or nack (see Publisher).
            transport_options=MappingProxyType({"confirm_publish": True}),
            supports_confirms=True,
            embedded=False,
        )
    raise TransportConfigError(
        f"broker URL scheme {scheme!r} is not supported; use amqp:// or amqps:// for RabbitMQ, "
        "or leave the broker URL unset for the embedded broker under the data directory"
    )
