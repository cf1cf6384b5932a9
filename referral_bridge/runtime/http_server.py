"""A bounded HTTP(S) server for the provider inbox and the health endpoint: uvicorn's HTTP/1.1
protocol (h11) behind an accept loop that caps connections.

uvicorn's own `Server` accepts every connection the kernel hands it (TLS handshakes, which it does
not count, included) and has no deadline for receiving a request: its keep-alive timer is not
armed before the first request and is reset by every byte. One client trickling a byte every few
seconds, or a few hundred idle ones, would hold the server's file descriptors. So the accept loop
here is our own (about the size of asyncio's), and the rest is uvicorn's:

- a connection cap counted from accept, TLS handshakes included; at the cap, accepting pauses and
  new connections wait in the kernel's backlog instead of taking file descriptors;
- a TLS handshake deadline (asyncio's `ssl_handshake_timeout`);
- a request deadline: a request's line, headers and body must all arrive within
  `request_seconds` of the connection opening or of the previous response; a client that trickles
  is cut off when it passes, however steadily it sends;
- a limit on the request line and headers (h11's `max_incomplete_event_size`: 400 past it);
- on EMFILE/ENFILE accepting pauses for `accept_backoff_seconds` instead of spinning;
- the body limit is the application's (Starlette's `max_body_size`: 413).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import h11
import structlog
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

log = structlog.get_logger("referral_bridge.runtime.http_server")

#: Connections taken per wake-up of the accept loop, so a burst cannot starve the open ones.
_ACCEPT_BATCH = 64
#: Share of the process's file-descriptor limit that connections may take by default: the rest
#: stays for the store, the ledger, the broker and the log.
_FD_SHARE = 2


def default_max_connections() -> int:
    """Half the process's soft file-descriptor limit, between 16 and 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // _FD_SHARE))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How much of the server one client, or many, can hold, and for how long."""

    #: From the connection opening (or the previous response) to the whole request received.
    request_seconds: float = 10.0
    #: A TLS handshake not finished by then is dropped.
    handshake_seconds: float = 10.0
    #: An idle keep-alive connection is closed after this (uvicorn takes whole seconds).
    keep_alive_seconds: int = 5
    #: Open connections, handshakes included; None: `default_max_connections()`.
    max_connections: int | None = None
    #: Request line and headers together.
    max_header_bytes: int = 16 * 1024
    #: How long accepting pauses when the process runs out of file descriptors.
    accept_backoff_seconds: float = 1.0
    #: The kernel's queue of connections not yet accepted.
    backlog: int = 128

    def connection_cap(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        return default_max_connections()


@dataclass(slots=True)
class _Slot:
    """One accepted connection's place under the cap; released exactly once."""

    release_to: Callable[[], None]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.release_to()


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, cut off when a request has not fully arrived by its deadline."""

    def __init__(
        self,
        *,
        config: uvicorn.Config,
        server_state: ServerState,
        loop: asyncio.AbstractEventLoop,
        slot: _Slot,
        request_seconds: float,
    ) -> None:
        super().__init__(config=config, server_state=server_state, app_state={}, _loop=loop)
        self._slot = slot
        self._request_seconds = request_seconds
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
            self._disarm()  # the whole request is in; answering it is the application's time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state not in (
            h11.DONE,
            h11.MUST_CLOSE,
        ):
            self._arm()  # the next request on this connection gets a deadline of its own

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._slot.release()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._request_seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.warning("http.request_deadline", detail="request not received in time")
            # abort, not close: a TLS close would wait for the same client's close_notify.
            self.transport.abort()


class _Listener:
    """Accepts connections up to the cap, pausing at the cap and backing off when out of fds."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        config: uvicorn.Config,
        limits: ServerLimits,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.config = config
        self.limits = limits
        self.ssl_context = ssl_context
        self.server_state = ServerState()
        self._cap = limits.connection_cap()
        self._open = 0
        self._reading = False
        self._backing_off = False
        self._closed = False
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()

    def _resume(self) -> None:
        if not self._closed and not self._reading and not self._backing_off:
            self._reading = True
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def _end_backoff(self) -> None:
        self._backing_off = False
        if self._open < self._cap:
            self._resume()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._open >= self._cap:
                # New connections wait in the backlog until a slot frees.
                self._pause()
                return
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # Out of descriptors (or another failure of accept itself): the listening
                # socket stays readable, so retrying at once would spin. Pause instead.
                log.warning(
                    "http.accept_backoff",
                    error_type=errno.errorcode.get(exc.errno or 0, type(exc).__name__),
                    detail=f"accepting paused for {self.limits.accept_backoff_seconds} s",
                )
                self._pause()
                self._backing_off = True
                self.loop.call_later(self.limits.accept_backoff_seconds, self._end_backoff)
                return
            conn.setblocking(False)
            self._open += 1
            slot = _Slot(self._release)
            task = self.loop.create_task(self._establish(conn, slot))
            self._handshakes.add(task)
            task.add_done_callback(partial(self._established, conn=conn, slot=slot))

    def _established(self, task: asyncio.Task[None], *, conn: socket.socket, slot: _Slot) -> None:
        self._handshakes.discard(task)
        if task.cancelled():
            # Cancelled by `close`, perhaps before it ever ran: the socket is still ours.
            conn.close()
            slot.release()

    def _release(self) -> None:
        self._open -= 1
        if self._open < self._cap:
            self._resume()

    async def _establish(self, conn: socket.socket, slot: _Slot) -> None:
        def protocol() -> _DeadlineProtocol:
            return _DeadlineProtocol(
                config=self.config,
                server_state=self.server_state,
                loop=self.loop,
                slot=slot,
                request_seconds=self.limits.request_seconds,
            )

        try:
            await self.loop.connect_accepted_socket(
                protocol,
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=(
                    self.limits.handshake_seconds if self.ssl_context is not None else None
                ),
            )
        except Exception as exc:  # noqa: BLE001 (one bad connection never stops the server)
            # A failed or timed-out handshake (an untrusted client certificate, a port scan).
            log.warning("http.connection_failed", error_type=type(exc).__name__)
            conn.close()
            slot.release()

    async def close(self) -> None:
        """Stop accepting and cut every connection, as a stopped process would."""
        self._closed = True
        self._pause()
        self.sock.close()
        for task in list(self._handshakes):
            task.cancel()
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        # Requests being answered see the disconnect and end; one stuck is cancelled.
        pending = [*self._handshakes, *self.server_state.tasks]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=5)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=1)
        # An aborted transport closes its socket in a callback: let those run before the loop
        # closes, or the sockets are left to the garbage collector.
        for _ in range(100):
            if not self.server_state.connections:
                break
            await asyncio.sleep(0.01)
        # A handshake cancelled above closes its half-made transport with `call_soon`: a few
        # turns of the loop run those callbacks before the loop is closed.
        for _ in range(5):
            await asyncio.sleep(0)


def bind_socket(host: str, port: int, *, reuse_address: bool, backlog: int) -> socket.socket:
    """A listening TCP socket; raises OSError (e.g. address in use) here, in the caller's thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class BoundedServer:
    """Serves an ASGI app under `ServerLimits` from a thread with its own event loop."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str,
        port: int,
        limits: ServerLimits,
        ssl_context: ssl.SSLContext | None = None,
        reuse_address: bool = False,
        name: str = "referral-bridge-http",
    ) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        self._ssl_context = ssl_context
        self._reuse_address = reuse_address
        self._name = name
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=limits.keep_alive_seconds,
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
        self._config.load()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Bind (raising OSError here when the address is taken) and serve in a thread.

        Port 0 picks a free port, which `port` then holds (and a restart reuses).
        """
        if self._thread is not None:
            return
        sock = bind_socket(
            self.host, self.port, reuse_address=self._reuse_address, backlog=self.limits.backlog
        )
        self.port = int(sock.getsockname()[1])
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, started), name=self._name, daemon=True
        )
        self._thread.start()
        started.wait(timeout=10)

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop, sock, started))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, started: threading.Event
    ) -> None:
        self._loop, self._stopping = loop, asyncio.Event()
        listener = _Listener(
            loop,
            sock,
            config=self._config,
            limits=self.limits,
            ssl_context=self._ssl_context,
        )
        listener.start()
        started.set()
        try:
            await self._stopping.wait()
        finally:
            await listener.close()


def server_ssl_context(
    certfile: str, keyfile: str, *, client_ca: str | None = None
) -> ssl.SSLContext:
    """TLS 1.2 or later; with `client_ca`, a client certificate issued by it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context
