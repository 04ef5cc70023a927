"""A local webhook receiver for the alert tests: a real HTTP server on a free loopback
port that checks each request's signature the way docs/alerts.md tells receivers to."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "test-webhook-secret"


def valid_signature(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """The documented check: HMAC-SHA256 of ``TIMESTAMP.BODY``, compared in constant time,
    and a timestamp no older than 5 minutes."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest("sha256=" + expected.hexdigest(), header)


class Receiver:
    """Collects the alerts POSTed to :attr:`url`; ``fail_first`` answers 503 that often."""

    def __init__(self, fail_first: int = 0) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.requests = 0
        self.fail_first = fail_first
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    receiver.requests += 1
                    if receiver.requests <= receiver.fail_first:
                        self.send_response(503)
                        self.end_headers()
                        return
                    ok = valid_signature(
                        SECRET,
                        self.headers["X-Adpulse-Timestamp"],
                        body,
                        self.headers["X-Adpulse-Signature"],
                    )
                    if ok:
                        receiver.alerts.append(json.loads(body))
                    else:
                        receiver.bad_signatures += 1
                    receiver._changed.notify_all()
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, str]]:
        """Wait until ``count`` alerts arrived; returns (rule, state) of all of them."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.alerts) >= count, timeout)
        return self.seen()

    def seen(self) -> list[tuple[str, str]]:
        with self._changed:
            return [(a["rule"], a["state"]) for a in self.alerts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
