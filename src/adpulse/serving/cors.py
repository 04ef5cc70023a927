"""CORS for the collector's browser endpoints only (``/v1/...``).

Web pages on the origins listed in ``cors_origins`` may send events from a browser
(``fetch`` with ``X-API-Key`` or ``Authorization``); the read API (``/api/v1/...``) gets
no CORS headers, so another origin's page can never read the numbers with a visitor's
dashboard cookie. No credentials are allowed cross-origin: a sender names its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: The collector's paths (the read API is ``/api/v1/``).
COLLECTOR_PREFIX: Final = "/v1/"


class CollectorCors:
    """Starlette's :class:`CORSMiddleware` for ``/v1/`` paths, the app alone elsewhere."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Content-Encoding"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(COLLECTOR_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
