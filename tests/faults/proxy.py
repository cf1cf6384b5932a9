"""A TCP fault proxy the tests own, between the bridge and RabbitMQ or PostgreSQL.

Toxiproxy is not packaged for Debian, so this is the small part of it the fault runs need:
forward a local port to an upstream, and on demand reset every connection, refuse new ones,
go silent (a half-open connection: nothing arrives and nothing fails), or pause (a network
partition that heals: nothing moves for a while, then everything held back arrives). The
upstream server keeps running for every other test; only the connections through this proxy
are hurt.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream` until told to misbehave."""

    def __init__(self, upstream: tuple[str, int], *, port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self.connections = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._silent: set[threading.Event] = set()
        #: Cleared while paused: every pump holds what it has read (an end of stream too).
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        """A proxy (not started) in front of the host and port of `url`."""
        parts = urlsplit(url)
        return cls((parts.hostname or "127.0.0.1", parts.port or 5672))

    def url_through(self, url: str) -> str:
        """`url` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    # --- lifecycle ---

    def start(self) -> FaultProxy:
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        self.resume()  # no pump may stay parked on a paused proxy
        self.refuse()
        self.reset()

    # --- faults ---

    def reset(self) -> None:
        """Drop every open connection (new ones are still accepted unless refused)."""
        with self._lock:
            open_sockets = list(self._sockets)
            self._silent.clear()
        for sock in open_sockets:
            self._close(sock)

    def refuse(self) -> None:
        """Stop listening: new connections are refused until `restore`."""
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave the port
            # listening until that call returned.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def cut(self) -> None:
        """The server 'stops': refuse new connections and drop every open one."""
        self.refuse()
        self.reset()

    def restore(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self.start()

    def silence(self) -> None:
        """Open connections stop carrying anything, without closing; new ones work."""
        with self._lock:
            for flag in self._silent:
                flag.set()

    def pause(self) -> None:
        """Nothing moves either way, on open connections and new ones (still accepted), until
        `resume`: what was sent meanwhile then arrives, as after a network partition heals.

        Unlike `silence`, nothing is lost: the streams stay whole, so a pause shorter than the
        peers' patience (heartbeats, timeouts) is a mere stall, and a longer one is noticed by
        them and ends in a reconnection.
        """
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    # --- plumbing ---

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused or closed
            if self._listener is not listener:  # refused while this one was being accepted
                client.close()
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            silent = threading.Event()
            with self._lock:
                self.connections += 1
                self._sockets.update((client, upstream))
                self._silent.add(silent)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target, silent), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, silent: threading.Event) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                self._flowing.wait()  # a pause holds the end of a stream back too
                if not chunk:
                    break
                if not silent.is_set():
                    target.sendall(chunk)
            if silent.is_set():
                return  # not even the close gets through
        except OSError:
            pass
        for end in (source, target):
            self._close(end)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):  # already closed by the other pump
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
