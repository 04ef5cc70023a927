"""Query parameters: the filters dependency every data endpoint shares, and the ranking
parameters. Filters are built by the query layer (:meth:`Filters.from_text`), whose
:class:`FilterError` the app answers with 400."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, Query

from adpulse.metrics import GROUPED_NAMES
from adpulse.serving import queries
from adpulse.serving.answers import filters_echo
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


async def filters_param(  # async: quick, so it runs on the loop, not in a worker thread
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
    return queries.minute_aligned(filters)


FiltersDep = Annotated[Filters, Depends(filters_param)]
ByParam = Annotated[Literal["ad", "campaign"] | None, Query(description="Group by ad or campaign.")]
LimitParam = Annotated[int, Query(ge=1, le=1000, description="Rows for rankings.")]
MinClicksParam = Annotated[
    int | None,
    Query(ge=0, le=10**12, description="Minimum clicks for rate rankings (default: settings)."),
]
