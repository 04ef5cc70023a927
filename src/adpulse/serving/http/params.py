"""Query parameters: the filters dependency every data endpoint shares, the ranking
parameters, and the refusal of parameters no endpoint knows. Filters are built by the
query layer (:meth:`Filters.from_text`) and checked against the stored values
(:class:`CheckedFilters`); the app answers every refusal with 422."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, Query, Request
from fastapi.routing import APIRoute

from adpulse.metrics import GROUPED_NAMES
from adpulse.serving import queries
from adpulse.serving.queries import Filters

#: Longest accepted time range (end - start).
MAX_RANGE: Final = timedelta(days=400)

#: The metrics of ``/api/v1/metrics/{metric}``: the catalog's grouped metrics.
METRICS: Final = GROUPED_NAMES
DIMENSIONS: Final = ("platform", "location", "gender", "age_band", "interest")

_TEXT = 200  # same as queries.MAX_FILTER_LENGTH
_TIME = 40


def _text(description: str) -> Any:
    return Query(min_length=1, max_length=_TEXT, description=description)


class CheckedFilters:
    """The stored filter values (:func:`~adpulse.serving.queries.known_values`) for the
    API, loaded on first use and again only when a value is not found and the data may
    have changed since: a newer commit (``version``), or, without a commit signal, more
    than ``max_age`` seconds. Known values cost a dictionary lookup; an unknown one at
    most one reload per commit."""

    def __init__(
        self,
        load: Callable[[], queries.KnownValues],
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        version: Callable[[], int] | None,
        max_age: float,
    ) -> None:
        self._load = load
        self._run = run
        self._version = version
        self._max_age = max_age
        self._known: queries.KnownValues | None = None
        self._loaded_version = -1
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def check(self, filters: Filters) -> Filters:
        """``filters`` with stored spellings, or an
        :class:`~adpulse.serving.queries.UnknownValueError`."""
        if not any(getattr(filters, name) is not None for name in queries.CHECKED_FILTERS):
            return filters
        known = self._known or await self._reload(None)
        try:
            return known.check(filters, API_NAMES)
        except queries.UnknownValueError:
            if not self._stale():
                raise
        return (await self._reload(known)).check(filters, API_NAMES)

    def _stale(self) -> bool:
        if self._version is not None:
            return self._version() != self._loaded_version
        return time.monotonic() - self._loaded_at > self._max_age

    async def _reload(self, seen: queries.KnownValues | None) -> queries.KnownValues:
        async with self._lock:
            if self._known is not None and self._known is not seen:  # another request did
                return self._known
            version = self._version() if self._version is not None else -1
            self._known = await self._run(self._load)
            self._loaded_version, self._loaded_at = version, time.monotonic()
            return self._known


#: The API's names of the checked filters, for messages.
API_NAMES: Final = {"ad_id": "ad"}


async def filters_param(  # async: quick, so it runs on the loop, not in a worker thread
    request: Request,
    campaign: Annotated[str | None, _text("Only this campaign.")] = None,
    ad: Annotated[
        int | None, Query(ge=-(2**63), le=2**63 - 1, description="Only this ad id.")
    ] = None,
    from_: Annotated[
        str | None,
        Query(
            alias="from",
            max_length=_TIME,
            description="Start, inclusive: 'YYYY-MM-DD[ HH:MM[:SS]]' UTC or ISO-8601.",
        ),
    ] = None,
    to: Annotated[
        str | None, Query(max_length=_TIME, description="End, exclusive (same formats).")
    ] = None,
    platform: Annotated[str | None, _text("Web, Mobile, Tablet...")] = None,
    location: Annotated[str | None, _text("e.g. New York.")] = None,
    gender: Annotated[str | None, _text("e.g. Female.")] = None,
    age_band: Annotated[
        str | None,
        Query(max_length=8, description="One of " + ", ".join(queries.AGE_BAND_LABELS)),
    ] = None,
    interest: Annotated[str | None, _text("One interest, e.g. Travel.")] = None,
) -> Filters:
    filters = Filters.from_text(
        campaign=campaign,
        ad_id=ad,
        start=from_,
        end=to,
        platform=platform,
        location=location,
        gender=gender,
        age_band=age_band,
        interest=interest,
        start_name="from",
        end_name="to",
        max_range=MAX_RANGE,
    )
    # whole minutes: what the rollups read anyway, and requests within one minute share answers
    filters = queries.minute_aligned(filters)
    checked: CheckedFilters = request.app.state.checked_filters
    return await checked.check(filters)


async def refuse_unknown_parameters(request: Request) -> None:
    """A :class:`~adpulse.serving.queries.FilterError` (422) for a query parameter the
    endpoint does not take: a misspelt filter would otherwise be ignored silently."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _parameters_of(route))
    if unknown:
        known = ", ".join(sorted(_parameters_of(route))) or "none"
        raise queries.FilterError(
            f"unknown parameter(s) {', '.join(unknown)}; this endpoint takes: {known}"
        )


#: The query parameters of each data route, by its path (every app has the same routes).
_PARAMETERS: dict[str, frozenset[str]] = {}


def _parameters_of(route: APIRoute) -> frozenset[str]:
    names = _PARAMETERS.get(route.path)
    if names is None:
        found: set[str] = set()
        todo = [route.dependant]
        while todo:  # the route's own parameters and its dependencies'
            dependant = todo.pop()
            found.update(p.alias for p in dependant.query_params)
            todo.extend(dependant.dependencies)
        names = _PARAMETERS[route.path] = frozenset(found)
    return names


FiltersDep = Annotated[Filters, Depends(filters_param)]
ByParam = Annotated[Literal["ad", "campaign"] | None, Query(description="Group by ad or campaign.")]
LimitParam = Annotated[int, Query(ge=1, le=1000, description="Rows for rankings.")]
MinClicksParam = Annotated[
    int | None,
    Query(ge=0, le=10**12, description="Minimum clicks for rate rankings (default: settings)."),
]
