"""JSON encoding of answers: frames as lists of row objects, money (Decimal) as a JSON
number, datetimes as ISO-8601 UTC with a ``Z``, undefined ratios and NaN as ``null``;
errors as ``{"error": <code>, "detail": <what was wrong>}``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import polars as pl
from fastapi.responses import JSONResponse, Response

#: The status of every answer to bad input (a value, a time, a parameter): one code.
BAD_INPUT = 422


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: frames as lists of row objects, see module doc."""
    if isinstance(value, pl.DataFrame):
        return [plain(row) for row in value.to_dicts()]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def dumps(value: Any) -> bytes:
    """The JSON bytes of ``value`` (through :func:`plain`)."""
    return orjson.dumps(plain(value))


class ORJSONPlainResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def ok(content: Any) -> Response:
    return ORJSONPlainResponse(content)


def json_body(body: bytes) -> Response:
    """A response from an already serialized JSON body (no second validation or encoding)."""
    return Response(body, media_type="application/json")


def error_response(status: int, error: str, detail: Any) -> JSONResponse:
    """The error body of every 4xx/5xx answer, see module doc."""
    return ORJSONPlainResponse({"error": error, "detail": detail}, status_code=status)
