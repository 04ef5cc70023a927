"""Connection limits of the HTTP server, so that it is safe to expose.

uvicorn closes a connection that stays idle *after* a response (``timeout_keep_alive``),
but not one that never completes its request headers: a client that connects and sends
nothing, or one header byte every few seconds, holds its connection (and one place under
``limit_concurrency``) forever, and with the httptools parser the headers may also grow
without bound. :func:`guarded_protocol` adds both missing limits to uvicorn's HTTP
protocol class: the headers of each request must be complete within
``http_header_timeout_seconds`` of the connection opening (or of the previous response
ending), and within ``http_max_header_bytes``; otherwise the connection is closed (with
``431`` for oversized headers). A request whose headers are complete is not timed here:
its body and response (a live stream lasts for hours) are the application's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final

#: Sent before closing a connection whose request headers are too large.
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 30\r\n\r\n"
    b"request headers are too large\n"
)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The server's connection limits (settings ``http_*``, see docs/security.md)."""

    header_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000


class OneWriteResponses:
    """A connection's transport that sends a response's head with the first part of its
    body, in one ``write`` (one ``send(2)``, one TCP segment) instead of two.

    uvicorn writes the status line and headers, then the body, each straight to the
    socket: for a small answer (the pixel's 43 bytes) the second system call was a tenth
    of the request's time. The head is held until the next write, or until the event
    loop's next turn when none comes at once (a ``HEAD`` answer, a live stream's first
    event later on), and before closing; bytes always leave in the order written.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):  # a head
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        if self._held is not None:
            data, self._held = self._held, None
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(base: type[Any], limits: HttpLimits) -> type[Any]:
    """``base`` (uvicorn's httptools or h11 protocol class) with the header deadline and
    size limit of the module doc."""

    class GuardedProtocol(base):  # type: ignore[misc,valid-type]
        # One timer per connection, not one per request: arming moves the deadline
        # (_due), and the timer, when it fires before it, waits on until it (a timer
        # made and cancelled for every request was a tenth of a pixel's time).
        _deadline: asyncio.TimerHandle | None = None
        _due: float | None = None  # the loop's time the headers are due by, when armed
        _header_bytes = 0

        def _awaiting_headers(self) -> bool:
            cycle = self.cycle
            return cycle is None or bool(cycle.response_complete)

        def _arm(self) -> None:
            self._header_bytes = 0
            loop = self.loop
            self._due = loop.time() + limits.header_timeout_seconds
            if self._deadline is None:
                self._deadline = loop.call_at(self._due, self._headers_too_slow)

        def _disarm(self) -> None:
            self._due = None
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            due = self._due
            if due is None:
                return
            if self.loop.time() < due - 0.001:  # armed again since: wait until then
                self._deadline = self.loop.call_at(due, self._headers_too_slow)
            elif self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(OneWriteResponses(transport))
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            counting = self._awaiting_headers()
            if counting:
                self._header_bytes += len(data)
            super().data_received(data)
            # checked after parsing: a first chunk may hold the headers and part of a body
            if (
                counting
                and self._awaiting_headers()
                and self._header_bytes > limits.max_header_bytes
                and not self.transport.is_closing()
            ):
                self.transport.write(_TOO_LARGE)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers get their own deadline

    GuardedProtocol.__name__ = f"Guarded{base.__name__}"
    return GuardedProtocol


def uvicorn_options(limits: HttpLimits, protocol: type[Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` applying ``limits`` to ``protocol``
    (uvicorn's HTTP protocol class, or a subclass; default: the one uvicorn picks)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return {
        "http": guarded_protocol(protocol or AutoHTTPProtocol, limits),
        "timeout_keep_alive": limits.keep_alive_seconds,
        "limit_concurrency": limits.max_connections,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }
