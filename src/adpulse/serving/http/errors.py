"""Error answers: every refusal as ``{"error": <code>, "detail": ...}`` with its status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from adpulse.serving.http.encoding import BAD_INPUT, error_response
from adpulse.serving.queries import FilterError


def add_error_handlers(app: FastAPI) -> None:
    """Bad input is a 422 whoever finds it (a filter the query layer refuses, a value
    not in the data, a parameter FastAPI refuses), and an ``HTTPException`` its own
    status with a code for it."""

    @app.exception_handler(FilterError)
    async def _filter_error(request: Request, exc: FilterError) -> Response:
        return error_response(BAD_INPUT, "invalid_parameter", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        details = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path"))
            details.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return error_response(BAD_INPUT, "invalid_parameter", "; ".join(details))

    # Starlette's HTTPException: FastAPI's (raised by the routes) is a subclass, and
    # Starlette raises its own for unknown paths and methods; one handler serves both.
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found"}
        codes |= {405: "method_not_allowed", 429: "too_many_requests", 503: "unavailable"}
        response = error_response(exc.status_code, codes.get(exc.status_code, "error"), exc.detail)
        response.headers.update(exc.headers or {})  # WWW-Authenticate, Retry-After
        return response
