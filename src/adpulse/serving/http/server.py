"""Running the API: a listening socket, the uvicorn server (its connection limits from
the settings, :mod:`adpulse.serving.limits`), and a stop that ends live streams first."""

from __future__ import annotations

import sys
import threading
from typing import Any, Final

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from adpulse.config import Settings
from adpulse.serving.http.feed import LiveFeed
from adpulse.serving.http.front import FrontedFastAPI, front_protocol


def bind(host: str, port: int) -> Any:
    """A listening socket on ``host:port`` (port 0: a free one); OSError when taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: Any) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


#: FastAPI's own OpenTelemetry layer, off: adpulse exports Prometheus metrics
#: (:mod:`adpulse.telemetry`), and the layer's check whether a tracer, meter or logger
#: provider is configured (three environment lookups) ran on every request, a twentieth
#: of a pixel's time. Pass as ``FastAPI(telemetry=...)``.
FASTAPI_TELEMETRY_OFF: Final[TelemetryConfig] = {"tracing": False, "metrics": False, "logs": False}

#: How often (seconds) Python hands the GIL between threads while the API serves; the
#: default is 5 ms. In ``adpulse demo`` the processor's threads run Python between their
#: vectorized calls, and each request waits for the GIL: at 0.005 s, 100 wrk connections
#: over the dashboard mix got p99 142 ms; at 0.001 s, p99 64 ms at the same 7.9k
#: requests/s, with ingest keeping pace (``adpulse bench-api``, one run each).
GIL_SWITCH_INTERVAL_SECONDS = 0.001


def make_server(app: FastAPI, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app`` (run it with ``server.run(sockets=[sock])``).

    Also shortens the process's GIL switch interval (see
    :data:`GIL_SWITCH_INTERVAL_SECONDS`): the server shares the process with the
    processor in the demo. Connection limits (:mod:`adpulse.serving.limits`) come from
    the app's settings.
    """
    import uvicorn

    from adpulse.serving.limits import HttpLimits, uvicorn_options

    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_SECONDS))
    settings = getattr(app.state, "settings", None)
    limits = HttpLimits()
    if isinstance(settings, Settings):
        limits = HttpLimits(
            header_timeout_seconds=settings.http_header_timeout_seconds,
            keep_alive_seconds=settings.http_keep_alive_seconds,
            max_header_bytes=settings.http_max_header_bytes,
            max_connections=settings.http_max_connections,
        )
    protocol = _httptools_protocol()
    if isinstance(app, FrontedFastAPI) and protocol is not None:
        # the collector's pixel and click answered by the protocol itself
        options = uvicorn_options(limits, front_protocol(protocol, app))
    else:
        options = uvicorn_options(limits)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", **options)
    return uvicorn.Server(config)


def _httptools_protocol() -> type[Any] | None:
    """uvicorn's httptools protocol (the one it picks when httptools is installed, as
    it is with adpulse); None without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed
        return None
    return HttpToolsProtocol


#: Seconds a stopping server waits for open requests to finish before it closes them.
SHUTDOWN_GRACE_SECONDS = 3.0


def stop_server(server: Any, thread: threading.Thread) -> None:
    """Stop a server of :func:`make_server` running in ``thread``: graceful first, then,
    after :data:`SHUTDOWN_GRACE_SECONDS`, closing what is still open."""
    feed = getattr(getattr(server.config.app, "state", None), "feed", None)
    if isinstance(feed, LiveFeed):
        feed.end_streams()
    server.should_exit = True
    thread.join(SHUTDOWN_GRACE_SECONDS)
    if thread.is_alive():
        server.force_exit = True
        thread.join(SHUTDOWN_GRACE_SECONDS)
