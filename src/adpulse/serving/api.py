"""The HTTP query API, by its long-standing name: the public names of
:mod:`adpulse.serving.http` (one module per topic there), re-exported so that callers
keep importing them from here."""

from __future__ import annotations

from adpulse.serving.http.app import StatusSource, create_app
from adpulse.serving.http.encoding import ORJSONPlainResponse, json_body, ok, plain
from adpulse.serving.http.feed import (
    CLIENT_QUEUE,
    MAX_STREAM_CLIENTS,
    MAX_STREAM_KEYS,
    MIN_PUSH_GAP,
    LiveFeed,
)
from adpulse.serving.http.middleware import (
    MAX_QUERY_STRING,
    AnswerShortcut,
    KnownRequests,
    RequestLimits,
    SharedAnswers,
    SharedRequest,
)
from adpulse.serving.http.params import (
    DIMENSIONS,
    MAX_RANGE,
    METRICS,
    ByParam,
    FiltersDep,
    LimitParam,
    MinClicksParam,
    filters_param,
)
from adpulse.serving.http.routes import API_PREFIX, STATIC_FILES, VENDOR_FILES, WEB_DIR
from adpulse.serving.http.server import (
    GIL_SWITCH_INTERVAL_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    bind,
    make_server,
    stop_server,
    url_of,
)
from adpulse.serving.queries.filters import parse_time

__all__ = [
    "API_PREFIX",
    "CLIENT_QUEUE",
    "DIMENSIONS",
    "GIL_SWITCH_INTERVAL_SECONDS",
    "MAX_QUERY_STRING",
    "MAX_RANGE",
    "MAX_STREAM_CLIENTS",
    "MAX_STREAM_KEYS",
    "METRICS",
    "MIN_PUSH_GAP",
    "SHUTDOWN_GRACE_SECONDS",
    "STATIC_FILES",
    "VENDOR_FILES",
    "WEB_DIR",
    "AnswerShortcut",
    "ByParam",
    "FiltersDep",
    "KnownRequests",
    "LimitParam",
    "LiveFeed",
    "MinClicksParam",
    "ORJSONPlainResponse",
    "RequestLimits",
    "SharedAnswers",
    "SharedRequest",
    "StatusSource",
    "bind",
    "create_app",
    "filters_param",
    "json_body",
    "make_server",
    "ok",
    "parse_time",
    "plain",
    "stop_server",
    "url_of",
]
