"""The one registry of backends: which scheme of a URL setting opens what.

Three settings name a backend by URL: ``transport_url`` (the log between sources and the
processor), ``warehouse_url`` (the source of truth) and ``serving_url`` (the live-view
store). Each is a :class:`UrlSetting` below, a table of :class:`Backend` entries keyed by
URL scheme, and every one of them is opened, and refused, the same way:

- the opener is named by its import path (``"module:function"``) and imported only when
  its scheme is used, so a heavy driver (psycopg, redis, boto3) is loaded only by the
  processes that use it (the dlt destinations pattern);
- an unknown scheme, a value that is no URL, or a URL whose remainder has the wrong form
  raises :class:`UnsupportedUrlError` (a ``ValueError``) naming the setting, its
  environment variable, the value with any password masked, and the accepted forms.

To add a backend (Kinesis transport, DynamoDB serving store, a collector transport):

1. implement the layer's contract in a module (or package) of its own
   (``transport/kinesis/`` implementing :class:`~adpulse.transport.base.Transport`),
   importing its driver there;
2. write its opener, ``open_kinesis(settings: Settings) -> Transport`` (warehouse
   openers also take ``read_only``), next to the layer's other openers;
3. add one :class:`Backend` line to the setting's table below: the scheme, the form
   shown in errors (``kinesis://STREAM_PREFIX``), the opener's path, and the pattern
   the part after ``scheme://`` must match;
4. run the layer's shared contract tests over it (``tests/transport/`` and so on).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adpulse.config import redact_url

if TYPE_CHECKING:
    from adpulse.config import Settings


class UnsupportedUrlError(ValueError):
    """A URL setting no registered backend opens (see the module docs)."""


@dataclass(frozen=True)
class Backend:
    """One scheme of one URL setting."""

    scheme: str
    #: How the URL looks, shown in errors: ``redis://HOST:PORT/DB``.
    form: str
    #: ``"module:function"``, imported when the scheme is used; called with the settings.
    opener: str
    #: What the part after ``scheme://`` must match (a regular expression, whole).
    rest: str = ".*"

    def load(self) -> Callable[..., Any]:
        module, _, name = self.opener.partition(":")
        opener: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return opener


@dataclass(frozen=True)
class UrlSetting:
    """A URL setting and its backends; the empty value means ``default``'s."""

    name: str
    default: Backend
    backends: tuple[Backend, ...]

    @property
    def accepted(self) -> str:
        default = f"'' (the default: {self.default.form})"
        return ", ".join([default, *(f"'{b.form}'" for b in self.backends)])

    def backend(self, url: str) -> Backend:
        """The backend ``url`` names; :class:`UnsupportedUrlError` when none does."""
        if url == "":
            return self.default
        scheme, separator, rest = url.partition("://")
        if not separator:
            raise self.refusal(url, "it is not a URL (SCHEME://...)")
        for backend in self.backends:
            if backend.scheme == scheme:
                if re.fullmatch(backend.rest, rest, re.DOTALL) is None:
                    raise self.refusal(url, f"the part after {scheme}:// does not fit")
                return backend
        raise self.refusal(url, f"no backend for the scheme {scheme!r}")

    def refusal(self, url: str, why: str) -> UnsupportedUrlError:
        return UnsupportedUrlError(
            f"unsupported {self.name} {redact_url(url)!r}: {why} (setting {self.name},"
            f" env ADPULSE_{self.name.upper()}); accepted: {self.accepted}"
        )

    def open(self, settings: Settings, **options: Any) -> Any:
        """Open the backend the setting names, passing ``settings`` and ``options``."""
        url: str = getattr(settings, self.name)
        return self.backend(url).load()(settings, **options)


_EMBEDDED_LOG = Backend("embedded", "embedded://DIR", "adpulse.transport:open_embedded")
TRANSPORT = UrlSetting(
    "transport_url",
    default=_EMBEDDED_LOG,
    backends=(
        _EMBEDDED_LOG,
        Backend("memory", "memory://", "adpulse.transport:open_memory"),
        Backend("redis", "redis://HOST:PORT/DB", "adpulse.transport:open_redis", ".+"),
        Backend(
            "kinesis",
            "kinesis://PREFIX?region=REGION&shards=N[&endpoint_url=URL]",
            "adpulse.transport:open_kinesis",
            r"[A-Za-z0-9_.-]+/?(\?.*)?",
        ),
    ),
)

_DUCKDB = Backend("duckdb", "duckdb:///PATH", "adpulse.storage.warehouse:open_duckdb", "/.+")
WAREHOUSE = UrlSetting(
    "warehouse_url",
    default=_DUCKDB,
    backends=(
        _DUCKDB,
        Backend(
            "postgresql",
            "postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE",
            "adpulse.storage.warehouse:open_postgres",
            ".+",
        ),
        Backend("postgres", "postgres://...", "adpulse.storage.warehouse:open_postgres", ".+"),
        Backend(
            "redshift",
            "redshift://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?staging=s3://BUCKET/PREFIX"
            "&iam_role=ARN]",
            "adpulse.storage.warehouse:open_redshift",
            ".+",
        ),
    ),
)

_MEMORY_STORE = Backend("memory", "memory://", "adpulse.serving.store:open_memory_store", "")
SERVING = UrlSetting(
    "serving_url",
    default=_MEMORY_STORE,
    backends=(
        _MEMORY_STORE,
        Backend(
            "redis",
            "redis://HOST:PORT/DB[?prefix=NAME]",
            "adpulse.serving.store:open_redis_serving_store",
            ".+",
        ),
        Backend(
            "dynamodb",
            "dynamodb://TABLE[?region=REGION&endpoint_url=URL]",
            "adpulse.serving.store:open_dynamodb_serving_store",
            r"[A-Za-z0-9_.-]{3,255}(\?.*)?",
        ),
    ),
)

#: Every URL setting, by name.
URL_SETTINGS: dict[str, UrlSetting] = {s.name: s for s in (TRANSPORT, WAREHOUSE, SERVING)}
