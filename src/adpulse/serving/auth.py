"""API keys and who may call what: read keys for the query API, the live stream and the
dashboard; write keys for the collector.

A key reads ``ap_live_<id>_<secret>``: ``id`` (10 hex digits) names the key in listings
and finds its row; ``secret`` (32 random bytes, URL-safe base64) is shown once, at
creation, and never stored. The warehouse keeps a random salt and SHA-256(salt + secret)
(:mod:`adpulse.storage.warehouse.api_keys` says why there); a presented key is hashed
the same way and compared with :func:`hmac.compare_digest`, in constant time. A slow
hash (scrypt) would add nothing here: the secret is 256 random bits, not a password
that could be guessed, and it is checked on every request.

Whether a key is needed at all is decided once, when the server starts
(:func:`access_for`), from the ``auth`` setting and the listening address:

- ``auto`` (default): on loopback (127.0.0.1, ::1, localhost) no key is needed, so the
  quickstart stays two commands; on any other address keys are required, and serving
  there while no key exists refuses to start unless ``--insecure`` is given;
- ``required``: keys are required on every address;
- ``off``: no key is ever checked (off loopback still only with ``--insecure``).

The servers cache the active keys and re-read them every ``auth_refresh_seconds``, so a
key created or revoked by ``adpulse keys`` in another process counts within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import polars as pl
from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from adpulse.storage.warehouse.base import Warehouse

if TYPE_CHECKING:
    from adpulse.config import Settings

log = logging.getLogger(__name__)

KeyScope = Literal["read", "write"]
SCOPES: Final[tuple[KeyScope, ...]] = ("read", "write")
AuthMode = Literal["auto", "required", "off"]

KEY_PREFIX: Final = "ap_live_"
#: The dashboard's cookie holding its read key (HttpOnly, SameSite=Strict).
COOKIE: Final = "adpulse_key"
#: Paths the read gate covers; the session route checks the key it is given itself.
READ_PREFIX: Final = "/api/v1/"
SESSION_PATH: Final = "/api/v1/session"
#: Prometheus metrics: read like the API (a scraper sends ``Authorization: Bearer``).
METRICS_PATH: Final = "/metrics"
#: Where :class:`ReadGate` leaves the id of the key a request was let in with (the live
#: stream caps streams per key).
KEY_ID_SCOPE: Final = "adpulse.key_id"
#: Longest accepted key text (a real one is 8 + 10 + 1 + 43 characters).
_MAX_KEY_LENGTH: Final = 128


class InsecureServeError(Exception):
    """Serving off loopback with nothing to check keys against; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One stored key: what ``adpulse keys list`` shows, plus the salted digest."""

    key_id: str
    name: str
    scope: KeyScope
    salt: str
    digest: str
    created_at: datetime
    revoked_at: datetime | None = None

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's, compared in constant time."""
        return hmac.compare_digest(key_digest(self.salt, secret), self.digest)


def key_digest(salt: str, secret: str) -> str:
    """What the warehouse stores of a key's secret: SHA-256 of the salt (hex) and the
    secret, in hex."""
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def parse_key(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a key's text, or None when it is not shaped like one."""
    if len(text) > _MAX_KEY_LENGTH or not text.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = text[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


# --- the stored keys ---------------------------------------------------------------------
def create_key(warehouse: Warehouse, scope: KeyScope, name: str = "") -> tuple[ApiKey, str]:
    """A new key stored (hashed) in ``warehouse``; returns it and its full text, which is
    shown once and cannot be recovered later."""
    if scope not in SCOPES:
        raise ValueError(f"unknown key scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    key_id = secrets.token_hex(5)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    created = datetime.now(UTC).replace(tzinfo=None)
    key = ApiKey(key_id, name, scope, salt, key_digest(salt, secret), created)
    warehouse.add_api_key(key_id, name, scope, salt, key.digest, created)
    return key, f"{KEY_PREFIX}{key_id}_{secret}"


def list_keys(warehouse: Warehouse) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return [_key_of(row) for row in warehouse.api_keys().iter_rows(named=True)]


def revoke_key(warehouse: Warehouse, key_id: str) -> bool:
    """Revoke a key by id; False when no unrevoked key has that id."""
    return warehouse.revoke_api_key(key_id, datetime.now(UTC).replace(tzinfo=None))


def _key_of(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"] or "",
        scope=row["scope"],
        salt=row["salt"],
        digest=row["digest"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class KeyRing:
    """The active (unrevoked) keys by id, re-read at most every ``refresh_seconds``.

    ``load`` reads the stored keys (a warehouse read: it runs in a thread, and one
    refresh at a time however many requests find the ring stale).
    """

    def __init__(
        self,
        load: Callable[[], Iterable[ApiKey]],
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._active: dict[str, ApiKey] = {}
        self._loaded_at = -float("inf")
        self._lock: asyncio.Lock | None = None

    @classmethod
    def of(cls, warehouse: Warehouse, refresh_seconds: float) -> KeyRing:
        return cls(lambda: list_keys(warehouse), refresh_seconds)

    def reload(self) -> int:
        """Read the keys now (blocking); the number of active ones."""
        self._active = {k.key_id: k for k in self._load() if k.revoked_at is None}
        self._loaded_at = self._clock()
        return len(self._active)

    async def _current(self) -> dict[str, ApiKey]:
        if self._clock() - self._loaded_at >= self.refresh_seconds:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._clock() - self._loaded_at >= self.refresh_seconds:
                    try:
                        await asyncio.to_thread(self.reload)
                    except Exception as exc:  # noqa: BLE001 - keep serving with the last keys
                        # a warehouse outage must not lock every client out; retried after
                        # refresh_seconds, not on every request
                        self._loaded_at = self._clock()
                        log.warning("could not re-read the API keys, using the last ones: %s", exc)
        return self._active

    async def find(self, text: str) -> ApiKey | None:
        """The active key whose text ``text`` is, or None."""
        parsed = parse_key(text)
        if parsed is None:
            return None
        key_id, secret = parsed
        key = (await self._current()).get(key_id)
        if key is None or not key.matches(secret):
            return None
        return key


# --- the decision at start -----------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) reaches this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class RateLimiter:
    """Requests per key: a token bucket per key id, ``rate`` a second with bursts of
    ``burst``; :meth:`take` says how long to wait when a key is over its rate."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self._clock = clock
        self.burst = max(1.0, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str) -> float:
        """0 when the request may go ahead (a token taken), else seconds to wait."""
        now = self._clock()
        tokens, at = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1 - tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Access:
    """What the running server checks: keys or nothing, the ring to check them in, and
    each key's request rate (``limiter``, None: unlimited)."""

    required: bool
    ring: KeyRing | None = None
    limiter: RateLimiter | None = None
    #: ``Host`` names requests may carry, besides loopback ones (None: any), see
    #: :class:`HostGate`.
    hosts: frozenset[str] | None = None

    @classmethod
    def open(cls) -> Access:
        return cls(required=False)


def access_for(mode: AuthMode, host: str, ring: KeyRing, *, insecure: bool = False) -> Access:
    """The access rule of a server listening on ``host`` (see the module doc); raises
    :class:`InsecureServeError` when it must not start."""
    loopback = is_loopback(host)
    if mode == "required":
        active = ring.reload()
        if not active and not loopback and not insecure:
            raise InsecureServeError(_refusal(host, "auth = 'required' but no key exists"))
        return Access(required=True, ring=ring)
    if loopback:
        return Access.open()
    if mode == "off":
        if not insecure:
            raise InsecureServeError(_refusal(host, "auth = 'off'"))
        return Access.open()
    if ring.reload():
        return Access(required=True, ring=ring)
    if not insecure:
        raise InsecureServeError(_refusal(host, "no API key exists"))
    return Access.open()


def access_of_server(warehouse: Warehouse, settings: Settings, host: str, insecure: bool) -> Access:
    """:func:`access_for` a server over ``warehouse`` with the settings' ``auth``,
    ``auth_refresh_seconds`` and ``key_rate_limit``."""
    ring = KeyRing.of(warehouse, settings.auth_refresh_seconds)
    access = access_for(settings.auth, host, ring, insecure=insecure)
    rate = settings.key_rate_limit
    if access.required and rate > 0:
        access = replace(access, limiter=RateLimiter(rate, max(2 * rate, 10)))
    listed = frozenset(h.lower() for h in settings.allowed_hosts)
    if is_loopback(host) or listed:
        access = replace(access, hosts=listed)
    return access


def _refusal(host: str, why: str) -> str:
    return (
        f"refusing to serve on {host} (not loopback): {why}, so anyone who can reach it"
        " could read the data; create a key with `adpulse keys create --scope read`"
        " (and `--scope write` for senders), or pass --insecure to serve it open anyway"
    )


# --- checking requests ---------------------------------------------------------------------
class KeyRejectedError(Exception):
    """A request's key does not allow the call: the status, error code and detail to
    answer with (and headers: ``WWW-Authenticate`` on 401, ``Retry-After`` on 429)."""

    def __init__(
        self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        if status == 401:
            self.headers["WWW-Authenticate"] = "Bearer"


def presented_key(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``X-API-Key``, or the
    dashboard's cookie, in that order."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header = headers.get("x-api-key", "").strip()
    if header:
        return header
    return cookies.get(COOKIE) or None


async def check(access: Access, needed: KeyScope, text: str | None) -> ApiKey | None:
    """The key that allows a ``needed`` call (None when none is required); raises
    :class:`KeyRejectedError` (401 no or unknown key, 403 wrong scope)."""
    if not access.required or access.ring is None:
        return None
    if not text:
        raise KeyRejectedError(
            401,
            "unauthorized",
            f"this server requires a {needed} key: send `Authorization: Bearer KEY`"
            " or `X-API-Key: KEY` (create one with `adpulse keys create --scope "
            f"{needed}`)",
        )
    key = await access.ring.find(text)
    if key is None:
        raise KeyRejectedError(
            401, "unauthorized", "the API key is unknown or revoked; ask for a new one"
        )
    if key.scope != needed:
        raise KeyRejectedError(
            403,
            "forbidden",
            f"key {key.key_id} is a {key.scope} key; this needs a {needed} key",
        )
    if access.limiter is not None:
        wait = access.limiter.take(key.key_id)
        if wait > 0:
            raise KeyRejectedError(
                429,
                "too_many_requests",
                f"key {key.key_id} is over its rate of {access.limiter.rate:g} requests/s"
                " (setting key_rate_limit); retry later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
    return key


def _access_of(request: Request) -> Access:
    access = getattr(request.app.state, "access", None)
    return access if isinstance(access, Access) else Access.open()


def _rejection_response(exc: KeyRejectedError) -> Response:
    import orjson

    return Response(
        orjson.dumps({"error": exc.error, "detail": exc.detail}),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


async def _require(request: Request, needed: KeyScope) -> ApiKey | None:
    try:
        return await check(
            _access_of(request), needed, presented_key(request.headers, request.cookies)
        )
    except KeyRejectedError as exc:
        raise HTTPException(exc.status, exc.detail, headers=exc.headers or None) from None


async def require_read_key(request: Request) -> ApiKey | None:
    """FastAPI dependency: a read key, when the server requires keys."""
    return await _require(request, "read")


async def require_write_key(request: Request) -> ApiKey | None:
    """FastAPI dependency: a write key (the collector), when the server requires keys."""
    return await _require(request, "write")


ReadKey = Annotated[ApiKey | None, Depends(require_read_key)]
WriteKey = Annotated[ApiKey | None, Depends(require_write_key)]


class ReadGate:
    """Requires a read key on every ``/api/v1/`` path but the session route, and on
    ``/metrics``, before anything else runs (the shared-answer shortcut answers without
    routing, so a route dependency alone would not be asked). Plain ASGI, like the
    other middleware here."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.access.required
            and scope["type"] == "http"
            and ((path.startswith(READ_PREFIX) and path != SESSION_PATH) or path == METRICS_PATH)
        ):
            from starlette.requests import HTTPConnection

            connection = HTTPConnection(scope)
            try:
                key = await check(
                    self.access, "read", presented_key(connection.headers, connection.cookies)
                )
            except KeyRejectedError as exc:
                await _rejection_response(exc)(scope, receive, send)
                return
            if key is not None:
                scope[KEY_ID_SCOPE] = key.key_id
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8080`` -> ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostGate:
    """Refuses (400) a request whose ``Host`` is neither a loopback name nor one of
    ``access.hosts``: a server on loopback needs no key, and DNS rebinding (a page on
    ``evil.example`` whose name is made to resolve to 127.0.0.1) would otherwise let any
    web page the user visits read it. No-op when ``access.hosts`` is None."""

    #: Most ``Host`` headers remembered as allowed (a client may send any number).
    MAX_REMEMBERED: Final = 64

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.hosts = access.hosts
        #: Raw ``Host`` headers found allowed: parsing an address per request cost a
        #: tenth of the pixel's time.
        self._allowed: set[bytes] = set()

    def allows(self, header: bytes) -> bool:
        """Whether a request with this raw ``Host`` header (b"" if none) is answered."""
        if self.hosts is None or header in self._allowed:
            return True
        name = host_name(header.decode("latin-1"))
        if not (is_loopback(name) or name in self.hosts):
            return False
        if len(self._allowed) >= self.MAX_REMEMBERED:
            self._allowed.clear()
        self._allowed.add(header)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hosts is not None and scope["type"] in ("http", "websocket"):
            header = next((v for k, v in scope["headers"] if k == b"host"), b"")
            if not self.allows(header):
                name = host_name(header.decode("latin-1"))
                rejection = KeyRejectedError(
                    400,
                    "invalid_host",
                    f"this server does not answer to Host {name!r}; add it to the"
                    " allowed_hosts setting if it is this server's name",
                )
                await _rejection_response(rejection)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- the dashboard's session -----------------------------------------------------------------
def session_routes() -> APIRouter:
    """``POST /api/v1/session`` (a read key in, an HttpOnly cookie out) and ``DELETE``."""
    router = APIRouter(tags=["session"])

    @router.post(SESSION_PATH)
    async def start_session(
        request: Request, key: Annotated[str, Body(embed=True, max_length=_MAX_KEY_LENGTH)]
    ) -> Response:
        """Check a read key and keep it in the browser as an HttpOnly, SameSite=Strict
        cookie, so the dashboard page (and its live stream) can use it."""
        access = _access_of(request)
        try:
            await check(access, "read", key.strip())
        except KeyRejectedError as exc:
            return _rejection_response(exc)
        response = Response(
            b'{"status":"ok"}', media_type="application/json", headers={"Cache-Control": "no-store"}
        )
        response.set_cookie(
            COOKIE,
            key.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.delete(SESSION_PATH)
    async def end_session() -> Response:
        """Forget the dashboard's key (the cookie)."""
        response = Response(b'{"status":"ok"}', media_type="application/json")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return router


def keys_frame(keys: Iterable[ApiKey]) -> pl.DataFrame:
    """What ``adpulse keys list`` shows: no secret, no digest."""
    return pl.DataFrame(
        [
            {
                "id": k.key_id,
                "name": k.name,
                "scope": k.scope,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
            }
            for k in keys
        ],
        schema={
            "id": pl.String(),
            "name": pl.String(),
            "scope": pl.String(),
            "created_at": pl.Datetime("us"),
            "revoked_at": pl.Datetime("us"),
        },
    )
