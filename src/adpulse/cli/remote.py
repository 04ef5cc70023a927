"""``adpulse query`` and ``status`` through a running server's HTTP API.

While ``adpulse demo`` or ``adpulse serve`` holds a DuckDB warehouse, no other process
can open it; those servers announce their URL next to the file
(:mod:`adpulse.serving.http.announce`), and the commands ask there instead, with the same
parameters and the same answers (the API and the CLI share one query layer and one JSON
shape). A read key, when the server needs one, comes from ``$ADPULSE_READ_KEY``.
"""

from __future__ import annotations

import os
from typing import Any, Final

import httpx

from adpulse.config import Settings
from adpulse.runtime import UserError
from adpulse.serving.http.announce import RunningServer, running_server
from adpulse.storage.warehouse.duckdb import WarehouseLockedError

#: The environment variable holding a read key for a server that requires one.
READ_KEY_ENV: Final = "ADPULSE_READ_KEY"
TIMEOUT_SECONDS: Final = 30.0


def server_holding(settings: Settings, error: UserError) -> RunningServer:
    """The running server to ask instead, when ``error`` says the warehouse is locked by
    a process that announced one; otherwise ``error`` itself is raised."""
    if not isinstance(error.__cause__, WarehouseLockedError):
        raise error
    server = running_server(settings)
    if server is None:
        raise error
    return server


def get(server: RunningServer, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """``GET <server>/api/v1/<path>`` with ``params`` (None values left out): the JSON
    answer, or a :class:`UserError` saying what the server refused and what to do."""
    headers = {}
    key = os.environ.get(READ_KEY_ENV)
    if key:
        headers["X-API-Key"] = key
    url = server.url.rstrip("/") + "/api/v1/" + path
    query = {k: str(v) for k, v in params.items() if v is not None}
    try:
        response = httpx.get(url, params=query, headers=headers, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise UserError(
            f"the warehouse is held by process {server.pid}, whose server at {server.url}"
            f" did not answer ({exc}); wait for it or stop it, then try again"
        ) from exc
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:200]}
    if response.status_code in (401, 403):
        raise UserError(
            f"the server at {server.url} (process {server.pid}, which holds the warehouse)"
            f" needs a read key: set {READ_KEY_ENV} (`adpulse keys create --scope read`)"
        )
    if response.status_code != 200:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise UserError(
            str(detail or f"the server at {server.url} answered {response.status_code}")
        )
    if not isinstance(body, dict):
        raise UserError(f"the server at {server.url} answered something other than an object")
    return body
