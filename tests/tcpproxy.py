"""A TCP proxy on 127.0.0.1 for tests of server failures, in the test's own process.

Clients connect to the proxy's port instead of the server's; the test can then drop every
connection at once (the server restarted, or a network cut) or pause the flow (a black
hole: connections stay open, nothing gets through, as with a hung server or a silent
network), without ever touching the shared servers.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards connections on ``127.0.0.1:port`` to ``target``. Use as a context manager."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._drop_after: bytes | None = None
        self._swallow = False
        self.dropped_after = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="tcpproxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 0)

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- failures -------------------------------------------------------------------------
    def drop(self) -> None:
        """Reset every open connection (new ones are still accepted)."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # Linger 0: close sends a RST, as a restarted server's host would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def drop_after(self, pattern: bytes) -> None:
        """Drop every connection right after the next client message holding ``pattern``
        reached the server (e.g. ``b"COMMIT"``: the client never learns the outcome)."""
        self.dropped_after.clear()
        self._drop_after = pattern

    def pause(self) -> None:
        """Black-hole: connections stay open (new ones too), but no byte gets through."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    # -- plumbing -------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._flowing.wait()  # a black hole does not reach the server either
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
                self.connections += 1
            for src, dst, upward in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, upward), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                pattern = self._drop_after
                if upward and pattern is not None and pattern in data:
                    self._drop_after = None
                    self._swallow = True  # the server's answer never reaches the client
                    dst.sendall(data)
                    time.sleep(0.3)  # the server acts on it
                    self.drop()
                    self._swallow = False
                    self.dropped_after.set()
                    break
                if upward or not self._swallow:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
